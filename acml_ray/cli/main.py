"""`acml`: command line of acml-ray. Each subcommand lives in `acml_ray/cli/<name>.py` with an
`add_parser(subparsers)` function; commands only assemble configuration and call the library."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from acml_ray.environment import apply_defaults
from acml_ray.storage import StorageError

# Subcommand modules, in the order `acml --help` lists them.
COMMANDS: tuple[str, ...] = (
    "demo",
    "embed",
    "evaluate",
    "index",
    "pretrain_spectrum",
    "register",
    "search",
    "study",
    "train",
    "tune",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acml", description=__doc__.split(".")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"acml_ray.cli.{name}").add_parser(sub)
    return parser


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input or setup, else None.

    Ray re-raises a task's error as a RayTaskError whose text carries the remote traceback; the
    original error (its `cause`) says what went wrong. MLflow's errors (unknown run, registry
    URI, reserved alias) are about what the user asked for.
    """
    ray_exceptions = sys.modules.get("ray.exceptions")  # only set when Ray was used at all
    while ray_exceptions is not None and isinstance(exc, ray_exceptions.RayTaskError):
        if not isinstance(exc.cause, BaseException):
            break
        exc = exc.cause
    if isinstance(exc, (OSError, ValueError, StorageError)):
        return str(exc)
    if type(exc).__module__.startswith("mlflow."):
        return getattr(exc, "message", None) or str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    apply_defaults()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Their INFO lines (credential lookups, sqlite schema set-up) are not ours to show.
    for noisy in ("botocore", "urllib3", "filelock", "mlflow.store.db.utils", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # bad input or location: one line, no traceback
        message = user_error(exc)
        if message is None:
            raise
        print(f"acml: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
