"""Save and load a trained ACML model with the configuration that built it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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
                "modality_dims": model.modality_dims, "extra": extra or {}}, path)
    return path


def load_model(directory: str | Path, map_location: str = "cpu") -> tuple[ACMLModel, ACMLConfig, dict]:
    """Rebuild a saved model in eval mode -> (model, config, extra)."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {directory}")
    blob = torch.load(path, map_location=map_location, weights_only=False)
    cfg = ACMLConfig.model_validate(blob["config"])
    model = ACMLModel.from_config(cfg, blob["modality_dims"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, cfg, blob.get("extra", {})
