"""Time and peak memory of exact, chunked whole-set retrieval (`retrieval_ranks`).

    python benchmarks/retrieval.py [--n 100000] [--dim 512] [--chunk-mib 256]

Random unit vectors, one direction (n queries against n candidates). Peak memory is the
process's max RSS, which includes the two n x dim embedding matrices.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402

from acml_ray.evaluate.retrieval import chunk_rows, rank_metrics, retrieval_ranks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk-mib", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    q = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    c = q + rng.standard_normal((args.n, args.dim), dtype=np.float32)  # noisy matches
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    ranks = retrieval_ranks(q, c, chunk_mib=args.chunk_mib)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"n={args.n} dim={args.dim} chunk={chunk_rows(args.n, args.chunk_mib)} rows: {seconds:.1f} s, "
        f"peak RSS {peak:.0f} MiB (before ranking {before:.0f} MiB); "
        f"top1 {rank_metrics(ranks, [1])['top1']:.3f}"
    )


if __name__ == "__main__":
    main()
