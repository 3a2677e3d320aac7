"""NMR as a modality: Bruker / Varian data read with nmrglue, real-world clean-up (solvent lines,
referencing, missing intensities), the three encoders (pretrained, random, binned) and
`acml pretrain-spectrum` on csp5-simulated spectra shipped with the package."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from acml_ray.chem import InvalidInputError
from acml_ray.modalities import build_modality
from acml_ray.modalities.spectrum import PRETRAINED_DIR, SpectrumCNN, read_nmr_folder

ng = pytest.importorskip("nmrglue")

PPMS = (20.0, 77.0, 128.5, 170.2)  # a 13C spectrum: methyl, CDCl3-like, aromatic, carbonyl
BF, SW, N = 100.6, 25_000.0, 4096  # 13C at 400 MHz: base frequency (MHz), sweep (Hz), points
CARRIER_PPM = 100.0


def _fid() -> np.ndarray:
    """A decaying FID with one line per ppm in PPMS, in the sign convention nmrglue processes
    (its FFT + `unit_conversion` put a line of offset f Hz at (carrier + f) / BF ppm)."""
    t = np.arange(N) / SW
    return sum(np.exp(-2j * np.pi * (p - CARRIER_PPM) * BF * t) * np.exp(-10 * t) for p in PPMS)


def _udic():
    udic = ng.fileiobase.create_blank_udic(1)
    udic[0].update(size=N, complex=True, sw=SW, obs=BF, car=CARRIER_PPM * BF, label="13C", time=True, freq=False)
    return udic


def _write_bruker_fid(folder: Path) -> Path:
    dic = ng.bruker.create_dic(_udic())
    dic["acqus"].update(
        {
            "SW_h": SW,
            "BF1": BF,
            "SFO1": BF + CARRIER_PPM * BF / 1e6,
            "O1": CARRIER_PPM * BF,
            "DECIM": 1,
            "DSPFVS": 20,
            "GRPDLY": 0,
            "TD": 2 * N,
            "BYTORDA": 0,
            "DTYPA": 2,
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ng.bruker.write(str(folder), dic, _fid(), overwrite=True)
    return folder


def _write_varian_fid(folder: Path, reffrq: bool = True) -> Path:
    dic = ng.varian.create_dic(_udic())
    par = dic["procpar"]
    par["sw"] = ng.varian.create_pdic_param("sw", [str(SW)])
    par["sfrq"] = ng.varian.create_pdic_param("sfrq", [str(BF + CARRIER_PPM * BF / 1e6)])
    if reffrq:
        par["reffrq"] = ng.varian.create_pdic_param("reffrq", [str(BF)])
    ng.varian.write(str(folder), dic, _fid().astype(np.complex64), overwrite=True)
    return folder


def _write_bruker_pdata(experiment: Path, size: int = 8192) -> Path:
    axis = 230.0 - np.arange(size) * 250.0 / size  # OFFSET 230 ppm, 250 ppm wide
    spectrum = sum(1000.0 * np.exp(-(((axis - p) / 0.2) ** 2)) for p in PPMS)
    (experiment / "pdata").mkdir(parents=True)
    (experiment / "acqus").write_text("##TITLE= toy\n##$SW_h= 25000\n##END=\n")
    procs = {
        "OFFSET": 230.0,
        "SW_p": 250.0 * BF,
        "SF": BF,
        "SI": size,
        "BYTORDP": 0,
        "DTYPP": 0,
        "NC_proc": 0,
        "FTSIZE": size,
        "_comments": [],
        "_coreheader": ["##TITLE= procs"],
    }
    ng.bruker.write_pdata(str(experiment), {"procs": procs}, spectrum, write_procs=True, pdata_folder=1, overwrite=True)
    return experiment


def _line_positions(vector: np.ndarray, lo: float, width: float) -> list[float]:
    from scipy.signal import find_peaks

    index, _ = find_peaks(vector, height=0.3 * vector.max())
    return [round(lo + i * width, 1) for i in index]


# -- Bruker / Varian through nmrglue -----------------------------------------------------------
@pytest.mark.parametrize("write", [_write_bruker_fid, _write_varian_fid, _write_bruker_pdata])
def test_bruker_and_varian_folders_give_the_lines_at_their_ppm(write, tmp_path):
    folder = write(tmp_path / "exp")
    modality = build_modality("nmr13c", {"encoder": "binned"})
    vector = modality.binned(str(folder))  # a folder path in a table column is read like a file
    lines = _line_positions(vector, modality.lo, modality.bin_width)
    assert len(lines) == len(PPMS)
    np.testing.assert_allclose(lines, PPMS, atol=0.15)
    profile = read_nmr_folder(folder)
    assert profile.continuous and (profile.intensities >= 0).all()
    assert modality.encode([str(folder)]).shape == (1, 4000)


def test_unreadable_nmr_folders_are_rejected_with_a_reason(tmp_path):
    modality = build_modality("nmr13c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no Bruker .* or Varian"):
        modality.binned(str(tmp_path / "empty"))
    with pytest.raises(InvalidInputError, match="no reffrq"):
        modality.binned(str(_write_varian_fid(tmp_path / "varian", reffrq=False)))
    broken = _write_bruker_fid(tmp_path / "bruker")
    (broken / "acqus").write_text("##TITLE= no parameters\n##END=\n")
    with pytest.raises(InvalidInputError, match="unreadable NMR data"):
        modality.binned(str(broken))


# -- noisy real-world input ------------------------------------------------------------------
def test_solvent_lines_are_removed_and_counted():
    # Ethyl acetate in CDCl3 as a measured 13C peak list: the solvent triplet at 77.16 ppm is no
    # atom of the sample.
    measured = [14.2, 21.0, 60.4, 76.8, 77.2, 77.5, 171.1]
    plain = build_modality("nmr13c", {"encoder": "binned"})
    cleaned = build_modality("nmr13c", {"encoder": "binned", "solvent": "CDCl3"})
    vector = cleaned.binned(measured)
    assert cleaned.solvent_peaks_removed == 3
    assert _line_positions(vector, -50, 0.1) == [14.2, 21.0, 60.4, 171.1]
    assert plain.binned(measured)[1272] > 0 and vector[1268:1276].sum() == 0
    assert cleaned.fingerprint != plain.fingerprint  # a different preprocessing, a different cache
    proton = build_modality("nmr1h", {"solvent": "dmso-d6"})
    proton.binned([1.1, 2.50, 3.33, 7.9])  # DMSO-d6 residual line and its water line
    assert proton.solvent_peaks_removed == 2
    with pytest.raises(InvalidInputError, match="only cdcl3 solvent lines"):
        cleaned.binned([77.16])
    with pytest.raises(ValueError, match="unknown solvent"):
        build_modality("nmr13c", {"solvent": "chloroform-dx"})
    with pytest.raises(ValueError, match="NMR only"):
        build_modality("ms", {"solvent": "cdcl3"})


def test_reference_offset_moves_every_line():
    # A spectrum referenced 0.4 ppm too high (e.g. to the wrong solvent line) is corrected.
    shifted = build_modality("nmr13c", {"encoder": "binned", "reference_offset": -0.4})
    assert _line_positions(shifted.binned([20.4, 128.9]), -50, 0.1) == [20.0, 128.5]
    assert shifted.fingerprint != build_modality("nmr13c", {"encoder": "binned"}).fingerprint


def test_missing_intensities():
    modality = build_modality("nmr13c", {"encoder": "binned"})
    with pytest.raises(InvalidInputError, match="1 of 3 peak intensities missing"):
        modality.binned({"shifts": [20.0, 77.0, 128.0], "intensities": [1.0, None, 2.0]})
    # all missing = none given: one count per peak, like a bare shift list
    all_missing = modality.binned({"shifts": [20.0, 128.0], "intensities": [None, None]})
    np.testing.assert_array_equal(all_missing, modality.binned([20.0, 128.0]))


# -- the three encoders ----------------------------------------------------------------------
def test_binned_encoder_is_the_spectrum_itself():
    binned = build_modality("nmr13c", {"encoder": "binned"})
    assert binned.dim == 4000
    vectors = binned.encode([[77.0, 128.5], [20.0]])
    np.testing.assert_array_equal(vectors[0], binned.binned([77.0, 128.5]))
    with pytest.raises(ValueError, match="no weights"):
        build_modality("nmr13c", {"encoder": "binned", "weights_path": "w.pt"})
    with pytest.raises(ValueError, match="encoder must be"):
        build_modality("nmr13c", {"encoder": "cress"})


def test_random_encoder_is_the_seeded_cnn():
    random_cnn = build_modality("nmr13c", {"encoder": "random"})
    assert random_cnn.dim == 256
    expected = SpectrumCNN(seed=0).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in random_cnn.encoder.state_dict().items())


@pytest.mark.parametrize("name", ["nmr13c", "nmr1h"])
def test_shipped_pretrained_weights_load_with_their_card(name):
    card = json.loads((PRETRAINED_DIR / f"{name}.json").read_text())
    assert (PRETRAINED_DIR / f"{name}.pt").stat().st_size <= 5 * 2**20
    modality = build_modality(name, {"encoder": "pretrained"})
    assert modality.shipped == card and modality.dim == card["encoder"]["dim"]
    random_cnn = build_modality(name, {"encoder": "random"})
    assert modality.fingerprint != random_cnn.fingerprint
    # trained only on the training side of the split retrieval is measured on
    held = card["provenance"]["held_out"]
    assert held["fraction"] == 0.2 and held["split_seed"] == 4 and held["rows"] > 0
    assert card["training"]["epochs_run"] >= 1 and card["training"]["spectra_used"] > 500
    with pytest.raises(ValueError, match="other preprocessing"):
        build_modality(name, {"encoder": "pretrained", "bin_width": 0.2 if name == "nmr13c" else 0.02})
    with pytest.raises(ValueError, match="shipped weights are SpectrumCNN"):
        build_modality(name, {"encoder": "pretrained", "dim": 64})


# -- pretraining -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    from acml_ray.data.sources import load_source

    return load_source("nmr_spectra")


def test_pretraining_learns_to_pair_views_and_writes_loadable_weights(simulated, tmp_path):
    from acml_ray.modalities.spectrum_pretrain import PretrainConfig, pretrain_spectrum_encoder, save_encoder

    modality = build_modality("nmr1h", {"encoder": "random"})
    spectra = simulated["nmr1h"].head(96).tolist() + [[], [99.0]]  # two a user table might hold
    result = pretrain_spectrum_encoder(
        spectra, modality, PretrainConfig(epochs=3, batch_size=32, seed=0), log=lambda _: None
    )
    assert result.spectra_used == 96
    assert result.rejected == {"empty spectrum": 1, "no peaks within 0..12 ppm": 1}
    first, last = result.history[0], result.history[-1]
    assert last["loss"] < first["loss"] and last["view_top1"] > first["view_top1"]
    card = save_encoder(tmp_path / "w.pt", result, modality, {"spectra": "test"})
    loaded = build_modality("nmr1h", {"weights_path": str(tmp_path / "w.pt")})
    assert loaded.encoder_kind == "pretrained"
    assert loaded.encode(spectra[:2]).shape == (2, 256)
    assert json.loads((tmp_path / "w.json").read_text())["weights_sha256"] == card["weights_sha256"]
    # weights carry their architecture and binning: a mismatch is an error, not garbage vectors
    with pytest.raises(ValueError, match="saved for"):
        _ = build_modality("nmr1h", {"weights_path": str(tmp_path / "w.pt"), "dim": 128}).encoder
    with pytest.raises(ValueError, match="other preprocessing"):
        _ = build_modality("nmr1h", {"weights_path": str(tmp_path / "w.pt"), "hi": 14.0}).encoder


def test_pretrain_spectrum_cli_leaves_out_the_held_out_molecules(simulated, tmp_path, capsys):
    from acml_ray.cli.main import main
    from acml_ray.data.paired import validation_mask

    table = simulated.head(80)[["smiles", "inchikey", "nmr13c"]]
    table.to_parquet(tmp_path / "spectra.parquet")
    out = tmp_path / "user13c.pt"
    code = main(
        [
            "pretrain-spectrum",
            "--nucleus",
            "13c",
            "--spectra",
            str(tmp_path / "spectra.parquet"),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "32",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    held = int(validation_mask(table["inchikey"], 0.2, 4).sum())
    assert 0 < held < 80 and summary["spectra_used"] == 80 - held
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["provenance"]["held_out"]["rows"] == held and card["modality"] == "nmr13c"
    assert build_modality("nmr13c", {"weights_path": str(out)}).encode([[77.0]]).shape == (1, 256)
    assert (
        main(
            [
                "pretrain-spectrum",
                "--nucleus",
                "13c",
                "--spectra",
                str(tmp_path / "spectra.parquet"),
                "--out",
                str(out),
                "--column",
                "nmr19f",
            ]
        )
        == 2
    )
    assert "no column 'nmr19f'" in capsys.readouterr().err


def test_pretrain_spectrum_cli_refuses_a_registered_modality_that_is_no_spectrum(tmp_path, capsys, monkeypatch):
    """`register_modality` may map nmr13c to a user's class; pretraining needs a SpectrumModality
    and says so (exit code 2) instead of failing deep inside the training loop."""
    from acml_ray import modalities
    from acml_ray.cli.main import main
    from acml_ray.modalities.ecfp import EcfpModality

    monkeypatch.setitem(modalities._FACTORIES, "nmr13c", lambda **options: EcfpModality())
    pd.DataFrame({"smiles": ["CCO"], "nmr13c": ["[[58.0, 1.0]]"]}).to_parquet(tmp_path / "spectra.parquet")
    args = ["pretrain-spectrum", "--nucleus", "13c", "--spectra", str(tmp_path / "spectra.parquet")]
    assert main([*args, "--out", str(tmp_path / "w.pt")]) == 2
    assert "not a SpectrumModality" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()
