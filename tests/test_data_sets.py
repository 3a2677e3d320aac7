"""The demo data sets built by data/build.py: present, small, consistent with PROVENANCE.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SETS = Path(__file__).parents[1] / "acml_ray" / "data" / "sets"


def _provenance() -> dict:
    path = SETS / "PROVENANCE.json"
    if not path.is_file():
        pytest.skip("acml_ray/data/sets not built (python data/build.py)")
    return json.loads(path.read_text())["sets"]


def _files(record: dict) -> list[dict]:
    nested = [v for v in record.values() if isinstance(v, dict) and "file" in v]
    return nested or [record]


def test_every_recorded_set_matches_its_file():
    total = 0
    for name, record in _provenance().items():
        assert record["package"] and record["version"] != "not installed", name
        for entry in _files(record):
            path = SETS / entry["file"]
            frame = pd.read_parquet(path)
            assert len(frame) == entry["rows"] > 0, entry["file"]
            assert {"smiles", "inchikey"} <= set(frame.columns), entry["file"]
            assert frame["inchikey"].str.fullmatch(r"[A-Z]{14}-[A-Z]{10}-[A-Z]").all()
            total += path.stat().st_size
    assert total < 10 * 2**20  # what is committed stays small


def test_qm9_groups_are_isomers():
    if "qm9" not in _provenance():
        pytest.skip("qm9 set not built")
    frame = pd.read_parquet(SETS / "qm9_isomers.parquet")
    sizes = frame.groupby("formula")["inchikey"].agg(lambda k: k.str[:14].nunique())
    assert (sizes >= 2).all()


def test_simulated_spectra_are_plausible_compact_and_outside_the_evaluation_sets():
    record = _provenance().get("nmr")
    if record is None:
        pytest.skip("csp5 spectra not built (python data/build.py --only nmr)")
    from rdkit import Chem

    from acml_ray.data.sources import load_source

    stored = pd.read_parquet(SETS / record["file"])
    assert str(stored["nmr13c_cppm"].iloc[0].dtype) == "int16"  # hundredths of a ppm
    frame = load_source("nmr_spectra")
    assert len(frame) == record["rows"] and frame["inchikey"].is_unique
    assert set(frame["origin"]) <= {"chembl_approved_drugs", "moses_test"}
    c13 = np.concatenate(frame["nmr13c"].to_list())
    h1 = np.concatenate(frame["nmr1h"].to_list())
    assert -50 < c13.min() and c13.max() < 350 and 0 <= np.percentile(h1, 1) and np.percentile(h1, 99) < 14
    np.testing.assert_allclose(frame["nmr13c"].iloc[0], stored["nmr13c_cppm"].iloc[0] / 100, atol=1e-4)
    # one predicted shift per carbon atom, one per hydrogen
    for _, row in frame.head(20).iterrows():
        mol = Chem.AddHs(Chem.MolFromSmiles(row["smiles"]))
        assert len(row["nmr13c"]) == sum(a.GetSymbol() == "C" for a in mol.GetAtoms())
        assert len(row["nmr1h"]) == sum(a.GetSymbol() == "H" for a in mol.GetAtoms())
    # no molecule (not even another stereo or charge form) of a downstream task
    ours = set(frame["inchikey"].str[:14])
    for task in ("b3db_classification", "b3db_regression", "freesolv", "solubility"):
        mols = (Chem.MolFromSmiles(s) for s in load_source(task)["smiles"])
        assert not ours & {Chem.MolToInchiKey(m)[:14] for m in mols if m is not None}, task
    assert not ours & set(load_source("qm9_isomers")["inchikey"].str[:14])


def test_wheel_carries_the_sets_and_configs(tmp_path):
    """A wheel install (not a checkout) still finds every shipped set and the packaged configs."""
    import shutil
    import subprocess
    import sys
    import zipfile

    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    repo, src = Path(__file__).parents[1], tmp_path / "src"
    shutil.copytree(
        repo / "acml_ray", src / "acml_ray", ignore=shutil.ignore_patterns("__pycache__", ".nmr_partial.json")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(repo / name, src / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("acml_ray-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import acml_ray, sys\n"
        "from acml_ray.config import packaged_config\n"
        "from acml_ray.data.sources import load_source\n"
        f"assert acml_ray.__file__.startswith({str(site)!r}), acml_ray.__file__\n"
        "packaged_config('demo')\n"
        "for name in ('qm9_isomers', 'moses_sample', 'nmr_spectra'):\n"
        "    assert len(load_source(name)) > 0, name\n"
        "from acml_ray.modalities import build_modality\n"
        "for name in ('nmr13c', 'nmr1h'):\n"
        "    assert build_modality(name, {'encoder': 'pretrained'}).encode([[7.0, 77.0]]).shape[0] == 1\n"
        "print('ok')\n"
    )
    # Run from an empty folder with only the unpacked wheel on the path, so the checkout's
    # files cannot stand in for missing package data.
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
