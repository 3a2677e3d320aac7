"""Ray job entry point for the whole ACML pipeline: embed -> train -> evaluate -> register.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/pipeline.py --config cluster/pipeline.yaml --name acml-encoder --alias champion

The pipeline itself is `acml_ray.pipelines.pipeline.run_pipeline`; this file only parses the
command line. Inputs, cache, checkpoints and MLflow artifacts may all be s3:// (see the config
keys embed.input, embed.output, cache_dir, train.storage_path, tracking.artifact_location); `--out`
(output_dir) stays a local folder: it receives the best model copy, the evaluation report and, by
default, the MLflow store.
"""

from __future__ import annotations

import argparse
import sys

from acml_ray.cli.common import add_config_arguments, config_from_args
from acml_ray.pipelines.pipeline import run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--out", help="local output folder (output_dir)")
    parser.add_argument("--input", help="molecule table, path or s3:// URI (embed.input)")
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--run-name", help="training run name (default pipeline-<timestamp>)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, extra={"embed.input": args.input})
    result = run_pipeline(cfg, args.name, args.alias, args.run_name)
    print(f"model uri: {result['model_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
