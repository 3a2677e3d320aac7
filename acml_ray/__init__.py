"""acml-ray: Asymmetric Contrastive Multimodal Learning of molecular graph encoders on Ray.

The public Python API, one name per stage, each the same library call its `acml` subcommand
makes (the CLI only assembles configuration)::

    import acml_ray as acml

    cfg = acml.load_config("my.yaml", {"train.epochs": 5})  # typed config from YAML + overrides
    data = acml.prepare(cfg)                                 # featurise + frozen embeddings (cached)
    acml.init_ray()
    run = acml.fit(cfg, data.train_path, data.val_path)      # Ray Train + DeepSpeed
    report = acml.evaluate_run(str(run.best_model_dir), cfg.eval, out_dir="evaluation")
    acml.register(str(run.best_model_dir), "my-encoder", alias="champion")
    acml.build_index(str(run.best_model_dir), "library-index", "library.csv", cfg.index)  # needs Ray
    hits = acml.search_index("library-index", "nmr13c", ["spectrum.jdx"], top_k=10, formula="C9H8O4")

Names are imported on first use, so ``import acml_ray`` stays cheap (no Ray, torch or MLflow).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from acml_ray.environment import apply_defaults as _apply_defaults

# Before anything below imports Ray: Ray fixes several settings (auth mode, loopback cluster,
# progress bars) when it is imported, so every entry point (CLI, jobs, benchmarks, a notebook)
# gets the same environment. Values the caller set always win; nothing loopback-only is set
# when RAY_ADDRESS names a cluster.
_apply_defaults()

__version__ = "0.1.0"

# public name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    # configuration and runtime
    "ACMLConfig": ("acml_ray.config", "ACMLConfig"),
    "load_config": ("acml_ray.config", "load_config"),
    "init_ray": ("acml_ray.environment", "init_ray"),
    # stages
    "prepare": ("acml_ray.pipelines.prepare", "prepare"),
    "embed": ("acml_ray.pipelines.embed", "run_embed_pipeline"),
    "fit": ("acml_ray.train.trainer", "fit"),
    # Not "evaluate"/"search": importing acml_ray.evaluate or acml_ray.search (a subpackage)
    # rebinds that attribute of the package to the subpackage.
    "evaluate_run": ("acml_ray.evaluate.suite", "evaluate_run"),
    "register": ("acml_ray.registry.register", "register_run"),
    "run_pipeline": ("acml_ray.pipelines.pipeline", "run_pipeline"),
    "run_demo": ("acml_ray.pipelines.demo", "run_demo"),
    "build_index": ("acml_ray.search.build", "build_index"),
    "search_index": ("acml_ray.search.query", "search"),
    "StructureIndex": ("acml_ray.search.query", "StructureIndex"),
    # building blocks
    "GraphFeaturizer": ("acml_ray.chem", "GraphFeaturizer"),
    "build_modality": ("acml_ray.modalities", "build_modality"),
    "ACMLModel": ("acml_ray.model.acml", "ACMLModel"),
    "GraphEncoder": ("acml_ray.model.gin", "GraphEncoder"),
    "ProjectionHead": ("acml_ray.model.projection", "ProjectionHead"),
    "ContrastiveLoss": ("acml_ray.model.losses", "ContrastiveLoss"),
    "load_model": ("acml_ray.model.serialization", "load_model"),
    "save_model": ("acml_ray.model.serialization", "save_model"),
    "resolve_model": ("acml_ray.model.serialization", "resolve_model"),
}

__all__ = sorted(_API) + ["__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on demand
    from acml_ray.chem import GraphFeaturizer
    from acml_ray.config import ACMLConfig, load_config
    from acml_ray.environment import init_ray
    from acml_ray.evaluate.suite import evaluate_run
    from acml_ray.modalities import build_modality
    from acml_ray.model.acml import ACMLModel
    from acml_ray.model.gin import GraphEncoder
    from acml_ray.model.losses import ContrastiveLoss
    from acml_ray.model.projection import ProjectionHead
    from acml_ray.model.serialization import load_model, resolve_model, save_model
    from acml_ray.pipelines.demo import run_demo
    from acml_ray.pipelines.embed import run_embed_pipeline as embed
    from acml_ray.pipelines.pipeline import run_pipeline
    from acml_ray.pipelines.prepare import prepare
    from acml_ray.registry.register import register_run as register
    from acml_ray.search.build import build_index
    from acml_ray.search.query import StructureIndex
    from acml_ray.search.query import search as search_index
    from acml_ray.train.trainer import fit


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _API[name]
    except KeyError:
        raise AttributeError(f"module 'acml_ray' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
