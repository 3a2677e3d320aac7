"""Evaluation of trained encoders: cross-modal retrieval (more protocols build on it)."""

from acml_ray.evaluate.embeddings import project_examples
from acml_ray.evaluate.retrieval import (
    pooled_ranks, random_topk, retrieval_ranks, retrieval_report, topk_from_ranks,
)

__all__ = ["project_examples", "pooled_ranks", "random_topk", "retrieval_ranks",
           "retrieval_report", "topk_from_ranks"]
