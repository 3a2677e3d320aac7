"""Ray job entry point for registering a trained run in the MLflow model registry, e.g.

    ray job submit --working-dir . -- python jobs/register.py /shared/runs/r1 --name acml-encoder \
        --alias champion --tracking-uri http://mlflow.internal:5000

Thin on purpose: the same arguments as `acml register`, which does the work. Registration runs
on the driver only (no Ray tasks); it is a job so that it sees the cluster's storage and secrets.
"""

from __future__ import annotations

import sys

from acml_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["register", *sys.argv[1:]]))
