"""Content-addressed embedding cache: no molecule is encoded twice by the same encoder."""

from acml_ray.cache.embedder import CachedEmbedder, EmbedReport, EmbedResult
from acml_ray.cache.store import CacheStats, EmbeddingCache

__all__ = ["CachedEmbedder", "EmbedReport", "EmbedResult", "CacheStats", "EmbeddingCache"]
