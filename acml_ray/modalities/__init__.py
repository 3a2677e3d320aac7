"""Frozen, pretrained encoders of chemical modalities and the registry that builds them."""

from __future__ import annotations

from typing import Any, Callable

from acml_ray.modalities.base import Modality, ModalityInputError, hash_module_weights

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
    from acml_ray.modalities.image import ImageModality

    register_modality("image", ImageModality)


_register_builtins()

__all__ = [
    "Modality", "ModalityInputError", "hash_module_weights", "register_modality",
    "build_modality", "available_modalities",
]
