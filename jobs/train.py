"""Ray job entry point for ACML training, e.g.

    ray job submit --working-dir . -- python jobs/train.py --config cluster.yaml

Thin on purpose: it builds the config and calls the library, as Ray's examples do.
"""

from __future__ import annotations

import argparse
import sys

from acml_ray.cli.common import parse_overrides
from acml_ray.config import load_config
from acml_ray.train import fit, init_ray


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", help="run name; with --resume the run to continue")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, parse_overrides(args.set))
    init_ray(use_gpu=cfg.train.use_gpu)  # joins the cluster from RAY_ADDRESS under `ray job submit`
    result = fit(cfg, run_name=args.name, resume=args.resume)
    print(f"run: {result.run_uri}\nbest model: {result.best_model_dir}\nmlflow run: {result.mlflow_run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
