"""Throughput of `GraphFeaturizer` against `torch_geometric.utils.from_smiles`.

Both sides get the same list of real SMILES (a seeded sample of the MOSES training set plus all
ChEMBL approved drugs), run in this one process, one molecule after the other, no caching. Ours
does strictly more work than PyG: the reference filter, canonical SMILES, InChIKey, and a PyG
`Data` per molecule (`featurize_batch` then `.to_pyg()`).

    python benchmarks/featurize.py [--n 20000] [--seed 0] [--rounds 10]

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


def identity_cost(smiles: list[str]) -> tuple[float, float]:
    """CPU seconds of the parse alone and of MolToInchiKey alone on the parsed molecules.

    For the report only: InChI generation is a fixed cost PyG does not pay, and it bounds the
    ratio whatever the featuriser does.
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    with BlockLogs():
        start = time.process_time()
        mols = [m for m in map(Chem.MolFromSmiles, smiles) if m is not None]
        parse = time.process_time() - start
        start = time.process_time()
        for mol in mols:
            Chem.MolToInchiKey(mol)
        inchikey = time.process_time() - start
    return parse, inchikey


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="number of SMILES (>= 20000)")
    parser.add_argument("--seed", type=int, default=0, help="MOSES sample seed")
    parser.add_argument(
        "--rounds", type=int, default=10,
        help="split the list into this many slices and time both sides on each slice in turn",
    )
    args = parser.parse_args(argv)
    if args.n < 20000:
        parser.error("--n must be at least 20000 for a meaningful figure")

    smiles = load_smiles(args.n, args.seed)
    print(f"molecules: {len(smiles)} (ChEMBL approved drugs + MOSES train, seed {args.seed})")

    # Warm-up outside the timings: first calls pay for imports (torch_geometric) and RDKit setup.
    run_ours(smiles[:50])
    run_pyg(smiles[:50])

    # Interleave: both sides see every molecule once, slice by slice, alternating which goes
    # first, so that load from other jobs on a shared machine hits both alike.
    totals = {"ours": [0.0, 0.0, 0, 0], "pyg": [0.0, 0.0, 0, 0]}
    size = -(-len(smiles) // args.rounds)
    for k, start in enumerate(range(0, len(smiles), size)):
        chunk = smiles[start : start + size]
        order = (("pyg", run_pyg), ("ours", run_ours))
        for name, fn in order if k % 2 == 0 else order[::-1]:
            gc.collect()
            for slot, value in enumerate(fn(chunk)):
                totals[name][slot] += value

    rates, wall_rates = {}, {}
    for name, label, what in (
        ("ours", "ours (featurize_batch + to_pyg, with SMILES/InChIKey)", "rejected"),
        ("pyg", "torch_geometric.utils.from_smiles", "failed"),
    ):
        cpu, wall, made, bad = totals[name]
        rates[name], wall_rates[name] = len(smiles) / cpu, len(smiles) / wall
        print(
            f"{label}: {rates[name]:.0f} molecules/s CPU ({cpu:.2f} s), "
            f"{wall_rates[name]:.0f} molecules/s wall ({wall:.2f} s); {made} graphs, {bad} {what}"
        )
    parse, inchikey = identity_cost(smiles)
    ours_us = 1e6 / rates["ours"]
    print(
        f"for reference: RDKit parse {parse / len(smiles) * 1e6:.0f} us/mol, "
        f"MolToInchiKey {inchikey / len(smiles) * 1e6:.0f} us/mol "
        f"(ours {ours_us:.0f} us/mol, PyG {1e6 / rates['pyg']:.0f} us/mol); "
        f"ours without InChIKey would be ratio "
        f"{(1e6 / rates['pyg']) / (ours_us - inchikey / len(smiles) * 1e6):.2f}"
    )
    print(f"wall-clock ratio: {wall_rates['ours'] / wall_rates['pyg']:.2f}")
    print(f"ratio: {rates['ours'] / rates['pyg']:.2f}")


if __name__ == "__main__":
    main()
