"""Ray job entry point for the paper-scale study (`acml study`).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/study.py --out /mnt/study

Without --config it runs the packaged `acml_ray/configs/study.yaml`. Rerunning the same command
continues an interrupted study: each stage's result is recorded under OUTPUT/study/stages/.
"""

from __future__ import annotations

import sys

from acml_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
