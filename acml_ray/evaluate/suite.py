"""Evaluate a trained model on held-out examples (retrieval per modality, both directions)."""

from __future__ import annotations

from acml_ray.config import EvalConfig
from acml_ray.data.paired import PairedExamples
from acml_ray.evaluate.embeddings import project_examples
from acml_ray.evaluate.retrieval import retrieval_report
from acml_ray.model.acml import ACMLModel


def retrieval_summary(model: ACMLModel, examples: PairedExamples, cfg: EvalConfig) -> dict:
    """``{direction: {"pool_<P>": {...}, "pool_all": {...}}}`` for every modality of `model`."""
    summary: dict = {}
    for modality in model.modalities:
        mod, graph = project_examples(model, examples, modality)
        if len(mod) < 2:
            continue
        summary.update(retrieval_report(modality, mod, graph, cfg.top_k, cfg.pool_size,
                                        cfg.pool_repeats, cfg.seed))
    return summary
