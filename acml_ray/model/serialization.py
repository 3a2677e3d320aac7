"""Save and load a trained ACML model with the configuration that built it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from acml_ray import __version__
from acml_ray.config import ACMLConfig
from acml_ray.model.acml import ACMLModel

MODEL_FILE = "model.pt"


def save_model(model: ACMLModel, cfg: ACMLConfig, directory: str | Path,
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``directory/model.pt``: trainable weights, config and modality dims.

    Frozen encoders are not saved: they are rebuilt from their modality definition, whose
    fingerprint is stored in `extra` by the caller when it matters.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("frozen_encoders.")}
    path = directory / MODEL_FILE
    torch.save({"state_dict": state, "config": cfg.model_dump(mode="json"),
                "modality_dims": model.modality_dims, "extra": extra or {},
                "acml_ray_version": __version__}, path)
    return path


def load_model(directory: str | Path, map_location: str = "cpu") -> tuple[ACMLModel, ACMLConfig, dict]:
    """Rebuild a saved model in eval mode -> (model, config, extra).

    The file is read with ``weights_only=True``: models travel between teams through the
    registry, and a model file must never be able to run code when it is loaded.
    """
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {directory}")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    try:
        cfg = ACMLConfig.model_validate(blob["config"])
    except ValidationError as err:
        saved_by = blob.get("acml_ray_version", "an unknown version")
        raise ValueError(
            f"{path} was saved by acml-ray {saved_by} with a configuration acml-ray {__version__} "
            f"cannot read (a newer release's settings?); load it with that release or later: {err}"
        ) from err
    model = ACMLModel.from_config(cfg, blob["modality_dims"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, cfg, blob.get("extra", {})
