"""Frozen, pretrained encoders of chemical modalities and the registry that builds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from acml_ray.modalities.base import Modality, hash_module_weights

# Constructors by modality name; each takes the `options` mapping of a ModalityConfig.
_FACTORIES: dict[str, Callable[..., Modality]] = {}


def register_modality(name: str, factory: Callable[..., Modality]) -> None:
    """Make a modality constructible by name from configuration."""
    _FACTORIES[name] = factory


def build_modality(name: str, options: dict[str, Any] | None = None) -> Modality:
    """Construct the modality `name` with its configuration options."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown modality {name!r}; known: {sorted(_FACTORIES)}")
    try:
        return _FACTORIES[name](**(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for modality {name!r}: {exc}") from exc


def available_modalities() -> list[str]:
    return sorted(_FACTORIES)


def _register_builtins() -> None:
    # These modules import only torch/numpy/RDKit at top level; transformers, matchms and
    # nmrglue are imported when a modality first needs them, so the registry stays cheap.
    from acml_ray.modalities.ecfp import EcfpModality
    from acml_ray.modalities.image import ImageModality
    from acml_ray.modalities.ms import MassSpecModality
    from acml_ray.modalities.spectrum import Nmr1HModality, Nmr13CModality
    from acml_ray.modalities.text import SmilesModality

    for modality in (ImageModality, SmilesModality, Nmr13CModality, Nmr1HModality, MassSpecModality, EcfpModality):
        register_modality(modality.name, modality)


_register_builtins()

__all__ = [
    "Modality",
    "hash_module_weights",
    "register_modality",
    "build_modality",
    "available_modalities",
]
