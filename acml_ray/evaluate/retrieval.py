"""Cross-modal retrieval: top-k accuracy at a stated candidate-pool size.

Query i's true match is candidate i. Similarity is cosine in the joint space. Ranks are exact
and computed in chunks of queries, so memory is O(chunk x pool), never pool x pool. Ties are
counted against the query (rank = number of *other* candidates scoring at least as high as the
true one), so a collapsed embedding scores at chance, never at 100%.

Measured with `benchmarks/retrieval.py` on the shared 2-core development machine: a
100,000 x 100,000 retrieval of random 512-d vectors (one direction, 256 MiB chunks of 671
queries) took 268 s with a peak RSS of 2.25 GiB (1.0 GiB of it the process and the two input
matrices before ranking).
"""

from __future__ import annotations

import numpy as np
import torch


def _normalise(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    return torch.nn.functional.normalize(t, dim=-1)


def chunk_rows(n_candidates: int, chunk_mib: int = 256) -> int:
    """Queries per chunk so that one float32 [chunk, n_candidates] similarity block fits in
    `chunk_mib` MiB (at least one row)."""
    return max(1, (chunk_mib << 20) // (4 * max(1, n_candidates)))


def retrieval_ranks(
    queries: np.ndarray | torch.Tensor,
    candidates: np.ndarray | torch.Tensor,
    chunk_size: int | None = None,
    chunk_mib: int = 256,
) -> np.ndarray:
    """0-based rank of each query's true candidate (same row index) among all candidates.

    Exact; peak extra memory is one ``[chunk_size, n]`` float32 block, by default sized to
    `chunk_mib` MiB, so a 100k x 100k retrieval needs ~256 MiB beyond the embeddings.
    """
    q, c = _normalise(queries), _normalise(candidates)
    if q.shape != c.shape:
        raise ValueError(f"queries {tuple(q.shape)} and candidates {tuple(c.shape)} must match")
    chunk_size = chunk_size or chunk_rows(c.shape[0], chunk_mib)
    ranks = np.empty(q.shape[0], dtype=np.int64)
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        sims = q[start:stop] @ c.T  # [chunk, n]
        rows = torch.arange(stop - start)
        true = sims[rows, torch.arange(start, stop)].unsqueeze(1)
        ranks[start:stop] = ((sims >= true).sum(dim=1) - 1).numpy()
    return ranks


def topk_from_ranks(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """``{"top{k}": fraction of queries ranked below k}``."""
    return {f"top{k}": float(np.mean(ranks < k)) for k in ks}


def rank_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Top-k accuracies plus mean rank (1-based) and mean reciprocal rank of 0-based `ranks`."""
    ranks = np.asarray(ranks)
    return {
        **topk_from_ranks(ranks, ks),
        "mean_rank": float(ranks.mean() + 1),
        "mrr": float(np.mean(1.0 / (ranks + 1))),
    }


def random_topk(pool_size: int, ks: list[int]) -> dict[str, float]:
    """Expected top-k of random ranking in a pool: min(k, pool) / pool."""
    return {f"top{k}": min(k, pool_size) / pool_size for k in ks}


def _random_ranks(pool_size: int) -> dict[str, float]:
    # Chance mean rank (P + 1) / 2 and chance MRR (mean over r = 1..P of 1/r).
    return {"mean_rank": (pool_size + 1) / 2, "mrr": float(np.mean(1.0 / np.arange(1, pool_size + 1)))}


def pooled_ranks(
    queries: np.ndarray,
    candidates: np.ndarray,
    pool_size: int,
    repeats: int,
    seed: int,
) -> np.ndarray:
    """Ranks within random pools of `pool_size` (the reference protocol), over `repeats`
    random partitions of the set; every query is ranked once per repeat."""
    n = len(queries)
    if n <= pool_size:
        return retrieval_ranks(queries, candidates)
    rng = np.random.default_rng(seed)
    all_ranks = []
    for _ in range(repeats):
        order = rng.permutation(n)
        usable = n - n % pool_size  # full pools only, so every pool has exactly pool_size
        for start in range(0, usable, pool_size):
            idx = order[start : start + pool_size]
            all_ranks.append(retrieval_ranks(queries[idx], candidates[idx]))
    return np.concatenate(all_ranks)


def retrieval_report(
    modality_name: str,
    modality_emb: np.ndarray,
    graph_emb: np.ndarray,
    ks: list[int],
    pool_size: int = 128,
    repeats: int = 20,
    seed: int = 0,
    chunk_mib: int = 256,
) -> dict[str, dict[str, dict]]:
    """Both directions at a fixed pool and at the whole set, each beside chance.

    Returns ``{"<m>->graph": {"pool_<P>": {"top1": .., "mean_rank": .., "mrr": .., "n_pool": P,
    "random": {"top1": .., "mean_rank": .., "mrr": ..}}, "pool_all": {...}}, "graph-><m>": {...}}``.
    """
    modality_emb = np.asarray(modality_emb, dtype=np.float32)
    graph_emb = np.asarray(graph_emb, dtype=np.float32)
    report: dict[str, dict[str, dict]] = {}
    for direction, q, c in (
        (f"{modality_name}->graph", modality_emb, graph_emb),
        (f"graph->{modality_name}", graph_emb, modality_emb),
    ):
        n = len(q)
        pool = min(pool_size, n)
        fixed = pooled_ranks(q, c, pool_size, repeats, seed)
        whole = retrieval_ranks(q, c, chunk_mib=chunk_mib)
        report[direction] = {
            f"pool_{pool_size}": {
                **rank_metrics(fixed, ks),
                "n_pool": pool,
                "random": random_topk(pool, ks) | _random_ranks(pool),
            },
            "pool_all": {**rank_metrics(whole, ks), "n_pool": n, "random": random_topk(n, ks) | _random_ranks(n)},
        }
    return report
