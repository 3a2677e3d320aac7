"""Crash isolation: run a function over a batch in a child process; survive the child's death.

Native code (RDKit, InChI) can kill the process it runs in: a segfault, an abort, the kernel's
OOM killer. In a Ray task that death is a system failure that Ray retries, with the same batch,
forever by default: one bad row stalls a whole job. `Sandbox` moves the risky call into a child
process of its own, so a death becomes an ordinary, caught event here:

1. the whole batch is tried, and retried `retries` times (a death can be transient: memory
   pressure from a neighbour);
2. a batch that still kills its child is split in two and each half is tried once, recursively
   (bisection), so the good rows of a batch survive and the offending rows are isolated in
   about log2(batch) extra calls;
3. a single row that kills its child gets `on_crash(row, reason)` as its result, with reason
   ``worker crashed: <signal>`` (``worker timed out: ...`` when it ran past `timeout_s`).

The function maps a list of items to a list of results of the same length; it and the items
are pickled to the child (a module-level function, or a method of a picklable object). The
child is started once through multiprocessing's *forkserver* (a clean process: never a fork of
a multi-threaded Ray worker) and then reused,
batch after batch, so the happy path costs one pickle round trip per batch. Modules named in
`preload` are imported once in the fork server, so a fresh child after a crash starts in
milliseconds. The child gets an address-space limit (`memory_mb`), no core dumps, and dies with
its parent (Linux `PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Sandbox", "crash_reason"]

_START_TIMEOUT_S = 300.0

# What travels on the pipe: the parent sends (fn, items); the child answers (status, value), where
# status is "ready", "ok" (value: fn's results) or "error" (value: the exception to re-raise).
_Request = tuple[Callable[[list[Any]], list[Any]], list[Any]]
_Reply = tuple[str, Any]


def crash_reason(exitcode: int | None) -> str:
    """``worker crashed: SIGSEGV`` (a signal) or ``worker crashed: exit code 3``."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker crashed: {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker crashed: signal {-exitcode}"
    return f"worker crashed: exit code {exitcode}"


def _limit_child(memory_mb: int | None) -> None:
    """Resource limits of a sandbox child (applied in the child, before any work)."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not write a core file
    if memory_mb:
        limit = int(memory_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if sys.platform.startswith("linux"):  # die with the parent (e.g. a Ray worker SIGKILLed)
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_main(conn: Connection[_Reply, _Request], memory_mb: int | None) -> None:
    """Serve (fn, items) requests on `conn` until it closes; exceptions travel back as values."""
    _limit_child(memory_mb)
    conn.send(("ready", None))  # the parent's batch timeout starts only now
    while True:
        try:
            fn, items = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: _Reply = ("ok", fn(items))
        except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
            reply = ("error", exc)
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result or exception
            conn.send(("error", RuntimeError(f"sandbox result could not be sent back: {exc!r}")))


class _Died(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sandbox:
    """A child process that runs functions on batches and whose death costs only the guilty rows.

    Exceptions raised by the function are re-raised here unchanged (a bug is not a crash). Calls
    are serialised by a lock; each Ray worker process keeps its own sandbox.
    """

    def __init__(
        self,
        *,
        retries: int = 1,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.retries, self.timeout_s, self.memory_mb = retries, timeout_s, memory_mb
        self.preload = list(preload)
        self.crashes = 0  # child deaths seen by this sandbox (each costs a fresh child)
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection[_Request, _Reply] | None = None
        self._lock = threading.Lock()

    # -- the child ------------------------------------------------------------------------
    def _start(self) -> None:
        context = multiprocessing.get_context("forkserver")
        if self.preload:
            context.set_forkserver_preload(self.preload)  # takes effect when the server starts
        parent, child = context.Pipe()
        process = context.Process(target=_child_main, args=(child, self.memory_mb), daemon=True, name="acml-sandbox")
        process.start()
        child.close()
        self._process, self._conn = process, parent
        # Starting takes seconds on a busy node (the fork server imports `preload` first): wait
        # for the child's "ready" apart from, and longer than, any batch timeout.
        try:
            if not parent.poll(_START_TIMEOUT_S):
                raise EOFError
            parent.recv()
        except (EOFError, OSError):
            process.join(timeout=10)
            reason = f"could not start: {crash_reason(process.exitcode)}"
            self._stop()
            raise _Died(reason) from None

    def _stop(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def close(self) -> None:
        """Stop the child (a later call starts a new one)."""
        with self._lock:
            self._stop()

    def __del__(self) -> None:  # best effort; the child also dies with this process
        try:
            self._stop()
        except Exception:  # noqa: BLE001
            pass

    def _call(self, fn: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
        """One round trip; raises _Died when the child dies or runs past the timeout."""
        if self._process is None or not self._process.is_alive():
            self._stop()
            self._start()
        assert self._conn is not None and self._process is not None
        try:
            self._conn.send((fn, items))
            if not self._conn.poll(self.timeout_s):
                self._stop()  # kill it: a hung native call never returns
                raise _Died(f"worker timed out: no result after {self.timeout_s:g} s")
            status, value = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._process.join(timeout=10)
            reason = crash_reason(self._process.exitcode)
            self._stop()
            raise _Died(reason) from None
        if status == "error":
            raise value
        if len(value) != len(items):
            raise RuntimeError(f"sandboxed function returned {len(value)} results for {len(items)} items")
        return value

    # -- the public call --------------------------------------------------------------------
    def map(
        self, fn: Callable[[list[Any]], list[Any]], items: Sequence[Any], on_crash: Callable[[Any, str], Any]
    ) -> list[Any]:
        """`fn(items)` run in the child: a list as long as `items`, where each item that kills the
        child on its own is replaced by `on_crash(item, reason)` (see the module doc)."""
        items = list(items)
        if not items:
            return []
        with self._lock:
            last = ""
            for attempt in range(self.retries + 1):
                try:
                    return self._call(fn, items)
                except _Died as died:
                    self.crashes += 1
                    last = died.reason
                    log.warning(
                        "sandbox: %s on a batch of %d (attempt %d of %d)",
                        died.reason,
                        len(items),
                        attempt + 1,
                        self.retries + 1,
                    )
            return self._bisect(fn, items, on_crash, last)

    def _bisect(
        self, fn: Callable[[list[Any]], list[Any]], items: list[Any], on_crash: Callable[[Any, str], Any], reason: str
    ) -> list[Any]:
        if len(items) == 1:
            log.warning("sandbox: quarantining one input (%s)", reason)
            return [on_crash(items[0], reason)]
        middle = len(items) // 2
        out: list[Any] = []
        for part in (items[:middle], items[middle:]):
            try:
                out.extend(self._call(fn, part))
            except _Died as died:
                self.crashes += 1
                out.extend(self._bisect(fn, part, on_crash, died.reason))
        return out
