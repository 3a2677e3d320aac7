"""Throughput of `GraphFeaturizer` against `torch_geometric.utils.from_smiles`.

Both sides get the same list of real SMILES (a seeded sample of the MOSES training set plus all
ChEMBL approved drugs), run in this one process, one molecule after the other, no caching. Ours
does strictly more work than PyG: the reference filter, canonical SMILES, InChIKey, and a PyG
`Data` per molecule (`featurize_batch` then `.to_pyg()`). A third contender, the identity
floor, runs only RDKit's parse, `MolToSmiles` and `MolToInchiKey` on the molecules the filter
keeps: PyG's time over the floor's is the highest ratio any single-threaded featuriser that
emits those identities can reach, measured in the same run.

    python benchmarks/featurize.py [--n 20000] [--seed 0] [--rounds 10]

The last line is `ratio: X.XX` (our molecules/s over PyG's). Rates are per second of this
process's CPU time (`time.process_time`): both sides are single-threaded, and CPU time is what
stays comparable on a shared machine where wall time also counts other jobs' turns. Wall-clock
rates are printed too.
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from acml_ray.chem import GraphFeaturizer, MolGraph  # noqa: E402
from acml_ray.config import FeaturizerConfig  # noqa: E402
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


def run_identity_floor(smiles: list[str], canonical_smiles: bool = True) -> Timing:
    """Timing of only what the identity needs: RDKit parse, MolToSmiles, MolToInchiKey.

    Not a featuriser: no features, no graph; the identity is skipped, as in ours, for molecules
    the default filter drops. It bounds the ratio from above, since any single-threaded
    featuriser that emits RDKit's canonical SMILES and InChIKey pays for these three calls on
    every kept molecule, whatever else it does. `canonical_smiles=False` leaves out MolToSmiles:
    the bound if a canonical SMILES could be had for free.
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    rule = FeaturizerConfig()
    made = 0
    with BlockLogs():
        cpu, wall = time.process_time(), time.perf_counter()
        for s in smiles:
            mol = Chem.MolFromSmiles(s)
            if (
                mol is not None
                and mol.GetNumHeavyAtoms() <= rule.max_heavy_atoms
                and mol.GetNumAtoms() >= rule.min_atoms
            ):
                if canonical_smiles:
                    Chem.MolToSmiles(mol)
                Chem.MolToInchiKey(mol)
                made += 1
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu, wall, made, len(smiles) - made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="number of SMILES (>= 20000)")
    parser.add_argument("--seed", type=int, default=0, help="MOSES sample seed")
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="split the list into this many slices and time both sides on each slice in turn",
    )
    args = parser.parse_args(argv)
    if args.n < 20000:
        parser.error("--n must be at least 20000 for a meaningful figure")

    smiles = load_smiles(args.n, args.seed)
    print(f"molecules: {len(smiles)} (ChEMBL approved drugs + MOSES train, seed {args.seed})")

    # Warm-up outside the timings: first calls pay for imports (torch_geometric) and RDKit setup.
    contenders = {
        "pyg": run_pyg,
        "ours": run_ours,
        "floor": run_identity_floor,
        "inchikey": functools.partial(run_identity_floor, canonical_smiles=False),
    }
    for fn in contenders.values():
        fn(smiles[:50])

    # Interleave: both sides see every molecule once, slice by slice, alternating which goes
    # first, so that load from other jobs on a shared machine hits both alike.
    totals = {name: [0.0, 0.0, 0, 0] for name in contenders}
    size = -(-len(smiles) // args.rounds)
    for k, start in enumerate(range(0, len(smiles), size)):
        chunk = smiles[start : start + size]
        order = list(contenders.items())
        for name, fn in order[k % len(order) :] + order[: k % len(order)]:  # rotate who goes first
            gc.collect()
            for slot, value in enumerate(fn(chunk)):
                totals[name][slot] += value

    rates, wall_rates = {}, {}
    for name, label, what in (
        ("ours", "ours (featurize_batch + to_pyg, with SMILES/InChIKey)", "rejected"),
        ("pyg", "torch_geometric.utils.from_smiles", "failed"),
        ("floor", "identity floor (parse + MolToSmiles + MolToInchiKey)", "dropped"),
        ("inchikey", "parse + MolToInchiKey only", "dropped"),
    ):
        cpu, wall, made, bad = totals[name]
        rates[name], wall_rates[name] = len(smiles) / cpu, len(smiles) / wall
        print(
            f"{label}: {rates[name]:.0f} molecules/s CPU ({cpu:.2f} s), "
            f"{wall_rates[name]:.0f} molecules/s wall ({wall:.2f} s); {made} graphs, {bad} {what}"
        )
    us = {name: 1e6 / rate for name, rate in rates.items()}
    print(
        f"per molecule: ours {us['ours']:.0f} us, PyG {us['pyg']:.0f} us, identity floor "
        f"{us['floor']:.0f} us; upper bound on the ratio of any single-threaded featuriser "
        f"that emits RDKit canonical SMILES + InChIKey: {us['pyg'] / us['floor']:.2f} "
        f"(with a free canonical SMILES, parse + InChIKey {us['inchikey']:.0f} us: "
        f"{us['pyg'] / us['inchikey']:.2f}); ours spends {us['ours'] - us['floor']:.0f} us on "
        f"everything else (filter, features, PyG Data)"
    )
    print(f"wall-clock ratio: {wall_rates['ours'] / wall_rates['pyg']:.2f}")
    print(f"ratio: {rates['ours'] / rates['pyg']:.2f}")


if __name__ == "__main__":
    main()
