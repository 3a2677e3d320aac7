"""Argument and config handling shared by every `acml` subcommand."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from acml_ray.config import ACMLConfig, load_config, packaged_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config / --set / --quiet, the options every config-driven command takes."""
    parser.add_argument(
        "--config",
        help="YAML config file, or a packaged config by name (demo, nmr, study); default: "
        "`acml demo` and `acml study` use their packaged config, every other command the built-in defaults",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=5"]`` -> ``{"train.epochs": 5}`` (values parsed as YAML scalars)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE (e.g. train.epochs=5), got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {pair!r}: the value is not valid YAML ({' '.join(str(exc).split())})") from None
    return overrides


def config_from_args(
    args: argparse.Namespace, default: str | None = None, extra: dict[str, Any] | None = None
) -> ACMLConfig:
    """The config a command runs with: YAML file (or packaged default), then --set, then the
    command's own flags in `extra` (taken verbatim: a path named `yes` stays a string), then --out."""
    path = args.config or (packaged_config(default) if default else None)
    overrides = {**parse_overrides(args.set or []), **{k: v for k, v in (extra or {}).items() if v is not None}}
    if getattr(args, "out", None):
        overrides["output_dir"] = args.out
    return load_config(path, overrides)
