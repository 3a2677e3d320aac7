"""Entry point for `ray job submit -- python jobs/embed.py --config CONFIG.yaml [--set k=v ...]`.

Inside a submitted job ``RAY_ADDRESS`` is set, so `init_ray` joins the cluster instead of
starting a local Ray; everything else is `acml embed`.
"""

from __future__ import annotations

import sys

from acml_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
