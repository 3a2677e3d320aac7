"""Ray job entry point for ACML training, e.g.

    ray job submit --working-dir . -- python jobs/train.py --config train.yaml --name run1

Takes the arguments of `acml train` (--config, --set, --out, --train, --val, --name, --resume RUN).
Under `ray job submit`, RAY_ADDRESS is set and training joins that cluster.
"""

from __future__ import annotations

import sys

from acml_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
