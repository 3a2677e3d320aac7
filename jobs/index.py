"""Ray job entry point for building a structure index, e.g.

    ray job submit --working-dir . -- python jobs/index.py --model models:/acml-encoder@champion \
        --library s3://bucket/zinc/ --out s3://bucket/indexes/zinc

Thin on purpose: the same arguments as `acml index`, which does the work (inside a submitted job
``RAY_ADDRESS`` is set, so the build joins the cluster and its GPU actors).
"""

from __future__ import annotations

import sys

from acml_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
