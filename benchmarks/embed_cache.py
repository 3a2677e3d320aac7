"""One epoch's modality embeddings: computed on the fly vs read from the embedding cache.

The same N real molecules (ChEMBL approved drugs that pass the reference filter), in one run:

1. on the fly: preprocess (RDKit depiction for `image`) and run the frozen encoder, in
   batches, as a training loop without a cache would do every epoch;
2. cached: those vectors are stored once (not timed), then a fresh `CachedEmbedder` (a new
   process in practice: nothing in memory) computes the content keys, reads and verifies the
   shards from disk or S3 and returns the vectors; it must do zero forward passes and return
   exactly the vectors of step 1.

    python benchmarks/embed_cache.py [--n 256] [--modality image] [--cache DIR_OR_S3_URI]

The last line is `ratio: X.XX` (on-the-fly wall time over cached wall time; goal >= 20).
CPU times (this process, all threads) are printed too: on a shared machine they vary less.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402

from acml_ray.cache import CachedEmbedder  # noqa: E402
from acml_ray.chem import GraphFeaturizer, MolGraph  # noqa: E402
from acml_ray.data.sources import load_source  # noqa: E402
from acml_ray.modalities import build_modality  # noqa: E402


def load_smiles(n: int, seed: int) -> list[str]:
    """`n` distinct canonical SMILES of ChEMBL approved drugs that become graphs."""
    drugs = load_source("chembl_approved_drugs")["smiles"].sample(frac=1.0, random_state=seed).tolist()
    graphs = [g for g in GraphFeaturizer().featurize_batch(drugs) if isinstance(g, MolGraph)]
    return list(dict.fromkeys(g.smiles for g in graphs))[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="molecules in the epoch")
    parser.add_argument("--modality", default="image")
    parser.add_argument("--batch-size", type=int, default=32, help="encoder batch size")
    parser.add_argument("--cache", help="cache root (path or s3:// URI); default a temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    smiles = load_smiles(args.n, args.seed)
    modality = build_modality(args.modality)
    _ = modality.fingerprint  # load the weights before timing
    modality.encode(smiles[:2])  # warm up the kernels
    print(
        f"{len(smiles)} molecules, modality {args.modality} (dim {modality.dim}), batch {args.batch_size}", flush=True
    )

    cpu, wall = time.process_time(), time.perf_counter()
    fly = np.concatenate(
        [modality.encode(smiles[i : i + args.batch_size]) for i in range(0, len(smiles), args.batch_size)]
    )
    fly_cpu, fly_wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"on the fly: {fly_wall:.2f} s wall, {fly_cpu:.2f} s CPU ({len(smiles) / fly_wall:.1f} molecules/s)", flush=True
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = args.cache or tmp
        writer = CachedEmbedder(modality, root)
        writer.cache.put([modality.content_key(s) for s in smiles], fly)  # fill once, untimed

        cpu, wall = time.process_time(), time.perf_counter()
        reader = CachedEmbedder(modality, root, batch_size=args.batch_size)  # nothing in memory
        result = reader.embed(smiles)
        cached_cpu, cached_wall = time.process_time() - cpu, time.perf_counter() - wall
    report = result.report
    assert report.forward_passes == 0 and report.cache_hits == len(smiles), report
    assert np.array_equal(result.vectors, fly), "cached vectors differ from the computed ones"
    print(
        f"cached:     {cached_wall:.4f} s wall, {cached_cpu:.4f} s CPU "
        f"({reader.cache.stats.shards_read} shard(s), 0 forward passes, identical vectors)"
    )
    print(f"cpu ratio: {fly_cpu / max(cached_cpu, 1e-9):.2f}")
    print(f"ratio: {fly_wall / cached_wall:.2f}")


if __name__ == "__main__":
    main()
