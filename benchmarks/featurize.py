"""Throughput of `GraphFeaturizer` against `torch_geometric.utils.from_smiles`.

Both sides get the same list of real SMILES (a seeded sample of the MOSES training set plus all
ChEMBL approved drugs), run in this one process, one molecule after the other, no caching. Ours
does strictly more work than PyG: the reference filter, canonical SMILES, InChIKey, and a PyG
`Data` per molecule (`featurize_batch` then `.to_pyg()`).

    python benchmarks/featurize.py [--n 20000] [--seed 0] [--repeats 1]

The last line is `ratio: X.XX` (our molecules/s over PyG's). Rates are per second of this
process's CPU time (`time.process_time`): both sides are single-threaded, and CPU time is what
stays comparable on a shared machine where wall time also counts other jobs' turns. Wall-clock
rates are printed too.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from acml_ray.chem import GraphFeaturizer, MolGraph  # noqa: E402
from acml_ray.data.sources import load_source  # noqa: E402


def load_smiles(n: int, seed: int) -> list[str]:
    """`n` real SMILES: all ChEMBL approved drugs, topped up with a seeded MOSES sample."""
    drugs = load_source("chembl_approved_drugs")["smiles"].dropna().astype(str).tolist()
    moses = load_source("moses", limit=max(n - len(drugs), 0), seed=seed)["smiles"].astype(str)
    return (drugs + moses.tolist())[:n]


Timing = tuple[float, float, int, int]  # CPU seconds, wall seconds, graphs made, rejected/failed


def run_ours(smiles: list[str]) -> Timing:
    """Timing of featurize_batch + to_pyg on every graph."""
    featurizer = GraphFeaturizer()
    cpu, wall = time.process_time(), time.perf_counter()
    results = featurizer.featurize_batch(smiles)
    data = [r.to_pyg() for r in results if isinstance(r, MolGraph)]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu, wall, len(data), len(results) - len(data)


def run_pyg(smiles: list[str]) -> Timing:
    """Timing of from_smiles, guarded per molecule so that one failure does not end the run."""
    from torch_geometric.utils import from_smiles

    data, failures = [], 0
    cpu, wall = time.process_time(), time.perf_counter()
    for s in smiles:
        try:
            data.append(from_smiles(s))
        except Exception:  # e.g. a value outside PyG's vocabularies raises ValueError
            failures += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu, wall, len(data), failures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="number of SMILES (>= 20000)")
    parser.add_argument("--seed", type=int, default=0, help="MOSES sample seed")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many timings each")
    args = parser.parse_args(argv)
    if args.n < 20000:
        parser.error("--n must be at least 20000 for a meaningful figure")

    smiles = load_smiles(args.n, args.seed)
    print(f"molecules: {len(smiles)} (ChEMBL approved drugs + MOSES train, seed {args.seed})")

    # Warm-up outside the timings: first calls pay for imports (torch_geometric) and RDKit setup.
    run_ours(smiles[:50])
    run_pyg(smiles[:50])

    best: dict[str, Timing] = {}
    for _ in range(args.repeats):
        # Alternate the two so that neither always runs on a warmer (or hotter) machine.
        for name, fn in (("pyg", run_pyg), ("ours", run_ours)):
            gc.collect()
            result = fn(smiles)
            if name not in best or result[0] < best[name][0]:
                best[name] = result

    rates, wall_rates = {}, {}
    for name, label, what in (
        ("ours", "ours (featurize_batch + to_pyg, with SMILES/InChIKey)", "rejected"),
        ("pyg", "torch_geometric.utils.from_smiles", "failed"),
    ):
        cpu, wall, made, bad = best[name]
        rates[name], wall_rates[name] = len(smiles) / cpu, len(smiles) / wall
        print(
            f"{label}: {rates[name]:.0f} molecules/s CPU ({cpu:.2f} s), "
            f"{wall_rates[name]:.0f} molecules/s wall ({wall:.2f} s); {made} graphs, {bad} {what}"
        )
    print(f"wall-clock ratio: {wall_rates['ours'] / wall_rates['pyg']:.2f}")
    print(f"ratio: {rates['ours'] / rates['pyg']:.2f}")


if __name__ == "__main__":
    main()
