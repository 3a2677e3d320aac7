"""Ray job entry point for evaluating a trained ACML run, e.g.

    ray job submit --working-dir . -- python jobs/evaluate.py --model s3://bucket/runs/r1 --out /tmp/eval

Thin on purpose: the same arguments as `acml evaluate`, which does the work.
"""

from __future__ import annotations

import sys

from acml_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
