"""Ray job entry point for a hyperparameter study, e.g.

    ray job submit --working-dir . -- python jobs/tune.py --config train.yaml \
        --space tune_spaces/acml.yaml --name study1

Under `ray job submit`, RAY_ADDRESS is set and the study joins that cluster. Arguments are those
of `acml tune`; submitting again with the same study name and storage resumes an interrupted
study (exit status 3 means it was interrupted).
"""

from __future__ import annotations

import sys

from acml_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
