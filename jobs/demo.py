"""Ray job entry point for the demo pipeline.

    ray job submit --working-dir . -- python jobs/demo.py --out /shared/runs/demo

Under `ray job submit`, RAY_ADDRESS is set and the pipeline joins that cluster; run directly,
it starts a local Ray. Arguments are those of `acml demo`.
"""

from __future__ import annotations

import sys

from acml_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
