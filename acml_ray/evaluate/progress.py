"""Progress lines of an evaluation: ``[evaluate 1:23] message`` on stderr, the time since the
evaluation started in front, so a long section is never silent and every step says how long."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """Callable that prints a progress line (or nothing when `enabled` is False)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def elapsed(self) -> str:
        seconds = int(time.perf_counter() - self.start)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[evaluate {self.elapsed()}] {message}", file=sys.stderr, flush=True)

    @contextmanager
    def section(self, name: str, timings: dict[str, float]) -> Iterator[None]:
        """Announce a section, then say how long it took; its seconds go to ``timings[name_s]``."""
        self(f"{name} ...")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        timings[f"{name.replace('-', '_').replace(' ', '_')}_s"] = seconds
        self(f"{name} done in {seconds:.1f} s")
