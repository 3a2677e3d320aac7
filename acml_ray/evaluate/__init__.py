"""Evaluation of trained encoders: cross-modal retrieval at stated pool sizes, isomer
discrimination, interpretability (descriptor correlations) and downstream property prediction,
rendered into a report by `acml_ray.evaluate.suite.evaluate_run` (not imported here, so that
training workers importing retrieval metrics do not pull in sklearn/matplotlib)."""

from acml_ray.evaluate.embeddings import graph_embeddings, paired_from_smiles, project_examples, project_vectors
from acml_ray.evaluate.retrieval import (
    chunk_rows,
    pooled_ranks,
    random_topk,
    rank_metrics,
    retrieval_ranks,
    retrieval_report,
    topk_from_ranks,
)

__all__ = [
    "chunk_rows",
    "graph_embeddings",
    "paired_from_smiles",
    "pooled_ranks",
    "project_examples",
    "project_vectors",
    "random_topk",
    "rank_metrics",
    "retrieval_ranks",
    "retrieval_report",
    "topk_from_ranks",
]
