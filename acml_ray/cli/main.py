"""`acml` entry point. Subcommands only assemble configuration and call the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import yaml

from acml_ray.config import ACMLConfig, load_config, packaged_config

# Loopback-only, no telemetry: the defaults every entry point runs with (caller's env wins).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
    "GLOO_SOCKET_IFNAME": "lo",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects KEY=VALUE (e.g. train.epochs=5), got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key] = yaml.safe_load(value)  # "5" -> 5, "[1,2]" -> [1, 2], "true" -> True
    return overrides


def _config(args: argparse.Namespace, default: str | None) -> ACMLConfig:
    path = args.config or (packaged_config(default) if default else None)
    overrides = _parse_overrides(args.set or [])
    if getattr(args, "out", None):
        overrides["output_dir"] = args.out
    return load_config(path, overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    from acml_ray.pipelines.demo import run_demo

    cfg = _config(args, "demo")
    path = run_demo(cfg, progress=not args.quiet)
    print(f"summary: {path.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML config (defaults: the packaged one for this command)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=5 (repeatable)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = sub.add_parser("demo", help="featurise, embed, train and evaluate on shipped real molecules")
    common(demo)
    demo.add_argument("--out", help="output folder (default: runs/demo)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"acml: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
