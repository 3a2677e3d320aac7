"""Annotated spectrum libraries (MGF, MSP, mzML, ... via matchms) read into training tables: the
structure-annotated spectra kept, the others counted by the reason they were dropped. The `ms`
modality (`acml_ray.modalities.ms`) turns the table's ``ms`` column into vectors."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from acml_ray.chem import InvalidInputError, canonical_identity

log = logging.getLogger(__name__)


@dataclass
class SpectraRead:
    """What `read_spectra` kept and what it dropped (reason -> count)."""

    records: list[tuple[str, Any]]  # (canonical SMILES, matchms Spectrum)
    total: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def load_spectrum_file(path: str | Path) -> list[Any]:
    """Every spectrum in a file, read by matchms by its suffix (None for an unreadable record)."""
    path = Path(path)
    from matchms.importing import load_from_mgf, load_from_msp, load_from_mzml, load_spectra

    suffix = path.suffix.lower()
    if suffix == ".mgf":
        return list(load_from_mgf(str(path)))
    if suffix == ".msp":
        return list(load_from_msp(str(path)))
    if suffix == ".mzml":
        return list(load_from_mzml(str(path)))
    return list(load_spectra(str(path)))  # json, mzxml, pickle, ... by extension


def read_spectra(path: str | Path) -> SpectraRead:
    """Read a spectrum library and keep the spectra annotated with a structure.

    matchms' default metadata filters are applied, then SMILES/InChI fields are repaired
    (moved from wrong fields, "N/A" cleared) and a SMILES is derived from the InChI when only
    that is given. Spectra without a parsable structure or without peaks are dropped and
    counted by reason. Returns (canonical isomeric SMILES, spectrum) records.
    """
    from matchms.filtering import (
        default_filters,
        derive_smiles_from_inchi,
        harmonize_undefined_inchi,
        harmonize_undefined_smiles,
        repair_inchi_inchikey_smiles,
    )

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such spectrum file: {path}")
    spectra = load_spectrum_file(path)
    result = SpectraRead(records=[], total=len(spectra))
    dropped: Counter[str] = Counter()
    for spectrum in spectra:
        if spectrum is None:
            dropped["unreadable spectrum"] += 1
            continue
        for step in (
            default_filters,
            repair_inchi_inchikey_smiles,
            harmonize_undefined_smiles,
            harmonize_undefined_inchi,
            derive_smiles_from_inchi,
        ):
            spectrum = step(spectrum)
        smiles = spectrum.get("smiles")
        if not smiles:
            dropped["no SMILES or InChI"] += 1
            continue
        try:
            smiles, _ = canonical_identity(smiles)
        except InvalidInputError as exc:
            dropped[f"structure: {exc.reason}"] += 1
            continue
        if len(spectrum.peaks.mz) == 0:
            dropped["no peaks"] += 1
            continue
        result.records.append((smiles, spectrum))
    result.dropped = dict(dropped)
    log.info(
        "%s: kept %d of %d spectra; dropped %s", path.name, len(result.records), result.total, result.dropped or "none"
    )
    return result


def spectra_frame(records: list[tuple[str, Any]] | SpectraRead) -> pd.DataFrame:
    """Records -> a table with `smiles`, `inchikey` and an `ms` column of
    ``{"mz": [...], "intensities": [...]}`` (a Parquet struct the modality reads back)."""
    rows = []
    for smiles, spectrum in records:
        _, inchikey = canonical_identity(smiles)
        rows.append(
            {
                "smiles": smiles,
                "inchikey": inchikey,
                "ms": {"mz": spectrum.peaks.mz.tolist(), "intensities": spectrum.peaks.intensities.tolist()},
            }
        )
    return pd.DataFrame(rows, columns=["smiles", "inchikey", "ms"])


__all__ = ["SpectraRead", "load_spectrum_file", "read_spectra", "spectra_frame"]
