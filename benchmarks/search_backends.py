"""Which vector index backs `acml index`: FAISS (faiss-cpu) or Lance (pylance), side by side.

One run, same vectors, same queries, same machine: build time, query latency p50/p99, recall@10
against exact search, search restricted to one "formula" group (filter applied inside the index)
and size on disk. Vectors are L2-normalised 256-d points drawn around 2,000 Gaussian centres
(molecule embeddings cluster by scaffold); queries are noisy copies of library rows, as a
cross-modal query lands near, not on, its structure.

    python benchmarks/search_backends.py [--n 200000] [--queries 200]

Ends with ``ratio: X.XX`` = Lance p50 / FAISS p50 at matched recall settings.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _data(n: int, d: int, q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, d)).astype(np.float32)
    xb = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    rows = rng.choice(n, q, replace=False)
    xq = xb[rows] + 0.05 * rng.standard_normal((q, d)).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    groups = rng.integers(0, 5000, n)  # ~n/5000 rows per "formula"
    return xb, xq, groups


def _exact(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    scores = xq @ xb.T
    return np.argsort(-scores, axis=1)[:, :k]


def _recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def _latency(fn, queries: np.ndarray) -> tuple[list, float, float]:
    out, times = [], []
    for v in queries:
        t = time.perf_counter()
        out.append(fn(v))
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return out, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _size(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def bench_faiss(xb, xq, groups, truth, group_truth, workdir: Path, k: int) -> dict:
    import faiss

    n, d = xb.shape
    nlist = int(4 * np.sqrt(n))
    t = time.perf_counter()
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(xb[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
    index.add(xb)
    faiss.write_index(index, str(workdir / "faiss.index"))
    build = time.perf_counter() - t
    result = {"build_s": build, "size_mib": _size(workdir)}
    for nprobe in (16, 32, 64):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        found, p50, p99 = _latency(lambda v, params=params: index.search(v[None], k, params=params)[1][0], xq)
        result[f"nprobe={nprobe}"] = {"p50_ms": p50, "p99_ms": p99, "recall@10": _recall(found, truth)}
    # Filter inside the index: an IDSelector restricts the scan to one group's ids.
    target = groups[0]
    ids = np.flatnonzero(groups == target).astype(np.int64)
    selector = faiss.IDSelectorBatch(ids)
    params = faiss.SearchParametersIVF(nprobe=nlist, sel=selector)  # every list: exact within the group
    found, p50, _ = _latency(lambda v: index.search(v[None], k, params=params)[1][0], xq[:50])
    result["filtered"] = {"p50_ms": p50, "recall@10": _recall(found, group_truth[:50]), "group_rows": int(len(ids))}
    return result


def bench_lance(xb, xq, groups, truth, group_truth, workdir: Path, k: int) -> dict:
    import lance
    import pyarrow as pa

    n, d = xb.shape
    table = pa.table(
        {
            "id": pa.array(np.arange(n)),
            "group": pa.array(groups),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(xb.reshape(-1)), d),
        }
    )
    uri = str(workdir / "lance")
    t = time.perf_counter()
    ds = lance.write_dataset(table, uri)
    ds.create_index(
        "vector", index_type="IVF_PQ", metric="dot", num_partitions=int(4 * np.sqrt(n)), num_sub_vectors=d // 8
    )
    build = time.perf_counter() - t
    result = {"build_s": build, "size_mib": _size(workdir / "lance")}
    for nprobes, refine in ((16, 10), (32, 20), (64, 40)):

        def query(v, nprobes=nprobes, refine=refine):
            return (
                ds.to_table(
                    columns=["id"],
                    nearest={"column": "vector", "q": v, "k": k, "nprobes": nprobes, "refine_factor": refine},
                    disable_scoring_autoprojection=True,
                )
                .column("id")
                .to_numpy()
            )

        found, p50, p99 = _latency(query, xq)
        result[f"nprobes={nprobes},refine={refine}"] = {
            "p50_ms": p50,
            "p99_ms": p99,
            "recall@10": _recall(found, truth),
        }
    target = int(groups[0])

    def filtered(v):
        return (
            ds.to_table(
                columns=["id"],
                filter=f"group = {target}",
                prefilter=True,
                nearest={"column": "vector", "q": v, "k": k, "use_index": False},
                disable_scoring_autoprojection=True,
            )
            .column("id")
            .to_numpy()
        )

    found, p50, _ = _latency(filtered, xq[:50])
    result["filtered"] = {"p50_ms": p50, "recall@10": _recall(found, group_truth[:50])}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    k = 10
    xb, xq, groups = _data(args.n, args.dim, args.queries)
    truth = _exact(xb, xq, k)
    members = np.flatnonzero(groups == groups[0])
    group_truth = members[_exact(xb[members], xq, k)]
    results = {}
    for name, bench in (("faiss", bench_faiss), ("lance", bench_lance)):
        workdir = Path(tempfile.mkdtemp(prefix=f"acml-bench-{name}-"))
        try:
            results[name] = bench(xb, xq, groups, truth, group_truth, workdir, k)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"{name}: {results[name]}", flush=True)
    print(f"n={args.n} dim={args.dim} queries={args.queries}")
    for name, r in results.items():
        print(f"{name}: build {r['build_s']:.1f} s, {r['size_mib']:.0f} MiB on disk")
        for key, v in r.items():
            if isinstance(v, dict):
                print(f"  {key}: " + ", ".join(f"{a} {b:.3f}" for a, b in v.items()))
    fast = results["faiss"]["nprobe=32"]["p50_ms"]
    slow = results["lance"]["nprobes=32,refine=20"]["p50_ms"]
    print(f"ratio: {slow / fast:.2f}")


if __name__ == "__main__":
    main()
