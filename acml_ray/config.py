"""Typed configuration for every acml-ray stage, loaded from YAML.

Defaults reproduce the reference ACML setup (Xu et al., JCIM 2025): 5-layer GIN, hidden 64,
dropout 0.2, sum pooling, projection cells [512, 512], soft-target CLIP loss at tau = 1.0,
AdamW lr 1e-3 wd 1e-3, batch 128 (drop_last), 100 epochs, random 80/20 split with seed 4.
YAML files only need to name what differs from these defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class FeaturizerConfig(_Strict):
    """Which molecules become graphs (the reference filter) and how."""

    max_heavy_atoms: int = Field(50, ge=1, description="drop molecules with more heavy atoms")
    min_atoms: int = Field(3, ge=1, description="drop molecules with fewer atoms (reference: <= 2)")


class GraphEncoderConfig(_Strict):
    """Hu et al. style GIN with bond embeddings."""

    num_layers: int = Field(5, ge=1)
    hidden_dim: int = Field(64, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    pooling: Literal["sum", "mean", "max"] = "sum"
    jk: Literal["last", "sum", "concat"] = "last"
    out_dim: int | None = Field(None, description="readout MLP output; default hidden_dim")


class ProjectionConfig(_Strict):
    """CLIP-style projection cells shared in shape by the graph and modality sides."""

    dims: list[int] = Field(default_factory=lambda: [512, 512])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @field_validator("dims")
    @classmethod
    def _non_empty(cls, v: list[int]) -> list[int]:
        if not v or any(d <= 0 for d in v):
            raise ValueError("projection dims must be a non-empty list of positive ints")
        return v


class LossConfig(_Strict):
    """Contrastive objective: the reference soft-target CLIP loss or standard InfoNCE."""

    kind: Literal["clip_soft", "infonce"] = "clip_soft"
    temperature: float = Field(1.0, gt=0.0)
    learnable_temperature: bool = False


class OptimizerConfig(_Strict):
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-3, ge=0.0)


class ModalityConfig(_Strict):
    """One frozen modality encoder; `options` are passed to the modality's constructor."""

    name: str = "image"
    weight: float = Field(1.0, gt=0.0, description="loss weight when training on several")
    options: dict[str, Any] = Field(default_factory=dict)


class DataSourceConfig(_Strict):
    """A molecule source: a shipped data set by name, or a CSV/Parquet path or URI."""

    name: str
    path: str | None = None
    smiles_column: str = "smiles"
    limit: int | None = Field(None, ge=1, description="random sample of this many rows")
    seed: int = 0


class DataConfig(_Strict):
    sources: list[DataSourceConfig] = Field(
        default_factory=lambda: [DataSourceConfig(name="chembl_approved_drugs")]
    )
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 4


class TrainConfig(_Strict):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=2)
    drop_last: bool = True
    seed: int = 0
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    log_every_steps: int = Field(10, ge=1)


class EvalConfig(_Strict):
    pool_size: int = Field(128, ge=2)
    pool_repeats: int = Field(20, ge=1, description="random pools averaged at pool_size")
    top_k: list[int] = Field(default_factory=lambda: [1, 5, 10])
    seed: int = 0


class ACMLConfig(_Strict):
    """Everything a run needs; sections mirror the sub-packages that consume them."""

    featurizer: FeaturizerConfig = Field(default_factory=FeaturizerConfig)
    graph_encoder: GraphEncoderConfig = Field(default_factory=GraphEncoderConfig)
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    modalities: list[ModalityConfig] = Field(default_factory=lambda: [ModalityConfig()])
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str = "runs/acml"
    cache_dir: str | None = Field(None, description="embedding cache root; default OUTPUT/cache")

    @model_validator(mode="after")
    def _unique_modalities(self) -> ACMLConfig:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modalities listed twice: {names}")
        if not names:
            raise ValueError("at least one modality is required")
        return self

    def resolved_cache_dir(self) -> str:
        """The embedding cache root (point several runs at one root to share it)."""
        return self.cache_dir or str(Path(self.output_dir) / "cache")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ACMLConfig:
    """Load an `ACMLConfig` from YAML (or defaults when `path` is None), then apply overrides.

    `overrides` uses dotted keys, e.g. ``{"train.epochs": 5}``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return ACMLConfig.model_validate(data)


def packaged_config(name: str) -> Path:
    """Path of a YAML config shipped inside the package (e.g. ``demo``)."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no packaged config named {name!r} ({path})")
    return path
