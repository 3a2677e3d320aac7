"""Built-in modalities: fingerprints, determinism, frozen encoders, input rejection, binning,
model loading from a directory and from real S3, and real mass spectra from matchms' tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from acml_ray.chem import InvalidInputError
from acml_ray.data.spectra import read_spectra, spectra_frame
from acml_ray.modalities import available_modalities, build_modality
from acml_ray.modalities.spectrum import SpectrumCNN, bin_peaks, parse_peak_input, read_jcamp

MATCHMS_DATA = Path(__file__).parent / "data" / "matchms"
MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@H](N)C(=O)O"]
SPECTRUM_INPUTS = {
    "nmr13c": [[77.0, 128.5, 21.3], [(170.2, 1.0), (55.1, 3.0)]],
    "nmr1h": [[1.2, 3.6, 7.26], "[[2.1, 3], [7.3, 5]]"],
    "ms": [
        (np.array([41.0, 57.1, 91.05]), np.array([10.0, 100.0, 30.0])),
        {"mz": [77.0, 105.0], "intensities": [20.0, 80.0]},
    ],
}


# -- a tiny BERT the test builds itself ------------------------------------------------------
def _save_tiny_bert(directory: Path, seed: int) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    chars = list("CNOSPFIBrclnos()[]=#@+-123456789/\\%.H")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=False)
    assert len(tokenizer) > 50  # the vocabulary was read (not just the special tokens)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model", seed=0)


@pytest.fixture(scope="module")
def tiny_bert_other(tmp_path_factory) -> Path:
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-2") / "model", seed=1)


@pytest.fixture(scope="module")
def minilm():
    return build_modality("smiles")


# -- registry and the shared contract --------------------------------------------------------
def test_every_builtin_is_registered():
    assert {"image", "smiles", "nmr13c", "nmr1h", "ms", "ecfp"} <= set(available_modalities())


@pytest.mark.parametrize("name", ["nmr13c", "nmr1h", "ms", "ecfp", "smiles-tiny"])
def test_fingerprint_stable_encode_deterministic_frozen(name, tiny_bert):
    if name == "smiles-tiny":
        make = lambda: build_modality("smiles", {"model": str(tiny_bert)})  # noqa: E731
        raws = MOLECULES
    else:
        make = lambda: build_modality(name)  # noqa: E731
        raws = SPECTRUM_INPUTS.get(name, MOLECULES)
    torch.manual_seed(123)  # the global RNG must not matter: seeded inits use their own
    first = make()
    torch.manual_seed(456)
    second = make()
    assert first.fingerprint == second.fingerprint
    a, b = first.encode(raws), second.encode(raws)
    assert a.shape == (len(raws), first.dim) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, first.encode(raws))
    assert not np.allclose(a[0], a[1])  # different inputs, different vectors
    encoder = first.encoder
    assert not encoder.training
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()  # a caller flipping the shared module must not turn dropout back on
    batch = torch.stack([first.preprocess_one(r) for r in raws])
    out = first.encode_tensors(batch)
    assert not out.requires_grad and not encoder.training
    np.testing.assert_array_equal(out.numpy(), a)


@pytest.mark.parametrize(
    "name, options",
    [
        ("nmr13c", {"line_width": 0.5}),
        ("nmr13c", {"bin_width": 0.2}),
        ("nmr1h", {"line_width": 0.0}),
        ("nmr1h", {"line_shape": "gaussian"}),
        ("ms", {"intensity_scale": "none"}),
        ("ms", {"bin_width": 0.5}),
        ("ecfp", {"radius": 3}),
        ("ecfp", {"log1p": False}),
    ],
)
def test_fingerprint_changes_with_preprocessing(name, options):
    # NMR on another grid needs an encoder not pretrained on the shipped one (see test_nmr.py)
    base = {"encoder": "random"} if name.startswith("nmr") else {}
    assert build_modality(name, base).fingerprint != build_modality(name, {**base, **options}).fingerprint


@pytest.mark.parametrize("name", ["nmr13c", "nmr1h", "ms"])
def test_fingerprint_changes_with_weights(name, tmp_path):
    default = build_modality(name, {"encoder": "random"})
    assert build_modality(name, {"encoder": "random", "seed": 1}).fingerprint != default.fingerprint
    assert build_modality(name).fingerprint != default.fingerprint or name == "ms"  # NMR: pretrained
    # user-supplied weights: a perturbed copy of the default state dict
    state = {k: v + 0.01 for k, v in default.encoder.state_dict().items()}
    torch.save(state, tmp_path / "weights.pt")
    loaded = build_modality(name, {"weights_path": str(tmp_path / "weights.pt")})
    assert loaded.fingerprint != default.fingerprint
    assert torch.equal(loaded.encoder.readout.weight, state["readout.weight"])
    with pytest.raises(ValueError, match="do not fit"):
        _ = build_modality(name, {"weights_path": str(tmp_path / "weights.pt"), "dim": 64}).encoder


def test_image_encoder_chunks_on_cpu_without_changing_vectors(depiction_modality):
    image = depiction_modality
    smiles = [
        "CC(=O)Oc1ccccc1C(=O)O",
        "C[C@H](N)C(=O)O",
        "c1ccc2ccccc2c1",
        "CCN(CC)CC",
        "O=C(O)CCl",
        "C/C=C/C",
        "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
        "OC1CCCCC1",
        "c1ccncc1",
        "CCOC(=O)C",
    ]
    images = torch.stack([image.preprocess_one(s) for s in smiles])
    encoder = image.encoder
    assert encoder.cpu_chunk == 4
    chunked = image.encode_tensors(images)
    encoder.cpu_chunk = 0
    try:
        whole = image.encode_tensors(images)
    finally:
        encoder.cpu_chunk = 4
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    assert chunked.shape == (10, 1280) and not torch.allclose(chunked[0], chunked[1])


def test_bf16_image_encoder_is_a_close_but_separate_encoder(depiction_modality):
    """bf16 autocast (the study's setting) keeps each depiction's features within cosine 0.99 of
    fp32 and ranks the same molecule first, but never shares fp32's cache entries."""
    from acml_ray.modalities import build_modality

    smiles = ["CC(=O)Oc1ccccc1C(=O)O", "C[C@H](N)C(=O)O", "C[C@@H](N)C(=O)O", "c1ccc2ccccc2c1", "CCN(CC)CC"]
    bf16 = build_modality("image", {"precision": "bf16"})
    fp32_vectors, bf16_vectors = depiction_modality.encode(smiles), bf16.encode(smiles)
    assert bf16_vectors.dtype == np.float32 and bf16_vectors.shape == (5, 1280)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    cosine = unit(fp32_vectors) @ unit(bf16_vectors).T
    assert np.diag(cosine).min() > 0.99
    assert (cosine.argmax(axis=1) == np.arange(5)).all()  # the enantiomers' depictions differ too
    assert bf16.fingerprint != depiction_modality.fingerprint
    assert "precision" not in depiction_modality.preprocess_config()  # fp32 caches keep their key
    with pytest.raises(ValueError, match="precision"):
        build_modality("image", {"precision": "fp16"})


def test_spectrum_cnn_is_seeded_not_global():
    torch.manual_seed(0)
    a = SpectrumCNN(seed=7).state_dict()
    torch.manual_seed(99)
    b = SpectrumCNN(seed=7).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- SMILES text models ----------------------------------------------------------------------
def test_tiny_bert_from_directory(tiny_bert, tiny_bert_other):
    modality = build_modality("smiles", {"model": str(tiny_bert), "max_length": 24})
    assert modality.dim == 32
    packed = modality.preprocess_one("CC(=O)O")
    assert packed.shape == (2, 24) and packed.dtype == torch.long
    assert packed[1].sum() == len(modality.tokenizer("CC(=O)O")["input_ids"])  # mask = real tokens
    # padding never changes a vector: alone, or batched with a longer SMILES, same result
    alone = modality.encode(["CCO"])[0]
    batched = modality.encode(["CCO", "CC(=O)Nc1ccc(O)cc1"])[0]
    np.testing.assert_allclose(alone, batched, rtol=1e-5, atol=1e-6)
    fingerprints = {
        modality.fingerprint,
        build_modality("smiles", {"model": str(tiny_bert), "max_length": 32}).fingerprint,
        build_modality("smiles", {"model": str(tiny_bert), "max_length": 24, "pooling": "cls"}).fingerprint,
        build_modality("smiles", {"model": str(tiny_bert_other), "max_length": 24}).fingerprint,
    }
    assert len(fingerprints) == 4  # max_length, pooling and weights each change it


def test_tokenizer_change_changes_fingerprint(tiny_bert, tmp_path):
    import shutil

    changed = tmp_path / "model"
    shutil.copytree(tiny_bert, changed)
    (changed / "tokenizer.json").unlink(missing_ok=True)
    vocab = (changed / "vocab.txt").read_text().splitlines()
    (changed / "vocab.txt").write_text("\n".join(vocab + ["CC"]) + "\n")  # same weights, new vocab
    a = build_modality("smiles", {"model": str(tiny_bert)})
    b = build_modality("smiles", {"model": str(changed)})
    assert a.preprocess_config()["tokenizer"] != b.preprocess_config()["tokenizer"]
    assert a.fingerprint != b.fingerprint


def test_default_minilm_is_384d_and_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    from acml_ray.modalities.text import default_text_model

    vectors = minilm.encode(MOLECULES)
    assert vectors.shape == (len(MOLECULES), 384)
    np.testing.assert_array_equal(vectors, minilm.encode(MOLECULES))
    sims = vectors @ vectors.T
    assert (sims[~np.eye(len(MOLECULES), dtype=bool)] < 0.999).all()
    reference = SentenceTransformer(str(default_text_model()), device="cpu").encode(MOLECULES)
    np.testing.assert_allclose(vectors, reference, atol=2e-5)


def test_smiles_s3_model_loads_like_the_local_copy(tiny_bert, s3_env, tmp_path):
    s3_server = s3_env
    prefix = "models/tiny-bert"
    for file in tiny_bert.iterdir():
        s3_server["client"].upload_file(str(file), s3_server["bucket"], f"{prefix}/{file.name}")
    uri = f"s3://{s3_server['bucket']}/{prefix}"
    remote = build_modality("smiles", {"model": uri, "cache_dir": str(tmp_path / "cache")})
    local = build_modality("smiles", {"model": str(tiny_bert)})
    assert remote.fingerprint == local.fingerprint
    np.testing.assert_array_equal(remote.encode(MOLECULES), local.encode(MOLECULES))
    copies = list((tmp_path / "cache").iterdir())
    assert len(copies) == 1 and not copies[0].name.startswith(".")  # no staging dir left
    # a second construction reuses the cached copy
    again = build_modality("smiles", {"model": uri, "cache_dir": str(tmp_path / "cache")})
    assert again.fingerprint == local.fingerprint and len(list((tmp_path / "cache").iterdir())) == 1


def test_spectrum_weights_from_s3(s3_env, tmp_path):
    s3_server = s3_env
    state = {k: v * 0.5 for k, v in build_modality("nmr13c").encoder.state_dict().items()}
    torch.save(state, tmp_path / "nmr.pt")
    s3_server["client"].upload_file(str(tmp_path / "nmr.pt"), s3_server["bucket"], "weights/nmr.pt")
    remote = build_modality(
        "nmr13c", {"weights_path": f"s3://{s3_server['bucket']}/weights/nmr.pt", "cache_dir": str(tmp_path / "cache")}
    )
    local = build_modality("nmr13c", {"weights_path": str(tmp_path / "nmr.pt")})
    assert remote.fingerprint == local.fingerprint != build_modality("nmr13c").fingerprint


def test_missing_weights_are_reported():
    with pytest.raises(FileNotFoundError, match="weights not found"):
        _ = build_modality("nmr13c", {"weights_path": "/nonexistent/w.pt"}).encoder
    with pytest.raises(FileNotFoundError):
        _ = build_modality("smiles", {"model": "/nonexistent/model"}).dim


# -- bad inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, raw, reason",
    [
        ("smiles", "C1CC(", "unparsable SMILES"),
        ("smiles", "", "non-empty string"),
        ("ecfp", "not a molecule", "unparsable SMILES"),
        ("ecfp", None, "non-empty string"),
        ("nmr13c", [], "empty spectrum"),
        ("nmr13c", "[]", "empty spectrum"),
        ("nmr13c", [(77.0, 0.0)], "empty spectrum"),
        ("nmr13c", [[1.0, 2.0, 3.0]], "wrong shape"),
        ("nmr13c", np.zeros((3, 3)), "wrong shape"),
        ("nmr13c", [77.0, (128.0, 1.0)], "wrong shape"),
        ("nmr13c", ["a", "b"], "not numeric"),
        ("nmr13c", [400.0, 500.0], "no peaks within -50..350 ppm"),
        ("nmr13c", [float("nan")], "non-finite"),
        ("nmr13c", [(77.0, -1.0)], "negative"),
        ("nmr13c", "/nonexistent/spectrum.jdx", "missing file"),
        ("nmr13c", "[1, 2", "unparsable JSON"),
        ("nmr1h", {"intensities": [1.0]}, "no positions"),
        ("ms", ([], []), "empty spectrum"),
        ("ms", ([100.0, 200.0], [1.0]), "wrong shape"),
        ("ms", [2000.0], "no peaks within 0..1000 m/z"),
        ("ms", 42, "unsupported spectrum input"),
    ],
)
def test_bad_inputs_are_rejected_with_a_reason(name, raw, reason, tiny_bert):
    modality = build_modality(name, {"model": str(tiny_bert)} if name == "smiles" else None)
    with pytest.raises(InvalidInputError, match=reason) as info:
        modality.preprocess_one(raw)
    assert info.value.reason


# -- binning ---------------------------------------------------------------------------------
def test_13c_peak_at_77_ppm_lands_in_its_bin():
    modality = build_modality("nmr13c")
    vector = modality.binned([77.0])
    assert vector.shape == (4000,)
    assert np.flatnonzero(vector).tolist() == [1270]  # (77.0 - -50) / 0.1
    assert vector[1270] == 1.0  # max-normalised
    edges = modality.binned([-50.0, 349.9])
    assert np.flatnonzero(edges).tolist() == [0, 3999]


def test_equivalent_atoms_stack_and_out_of_range_peaks_are_counted():
    modality = build_modality("nmr13c")
    vector = modality.binned([128.0, 128.0, 21.0, 999.0])  # two equivalent carbons + one stray
    assert vector[1780] == 1.0 and vector[710] == pytest.approx(0.5)
    assert modality.peaks_out_of_range == 1


@pytest.mark.parametrize("shape", ["lorentzian", "gaussian"])
def test_broadening_spreads_intensity_around_the_peak(shape):
    sharp = build_modality("nmr13c").binned([77.0])
    broad = build_modality("nmr13c", {"line_width": 1.0, "line_shape": shape}).binned([77.0])
    assert np.argmax(broad) == 1270 and broad[1270] == 1.0
    assert (broad > 0.1).sum() > 5 and (sharp > 0).sum() == 1
    assert broad[1265] == pytest.approx(broad[1275], rel=1e-4)  # symmetric
    raw, _ = bin_peaks(parse_peak_input([77.0]), -50, 350, 0.1, shape, 1.0)
    assert raw.sum() == pytest.approx(1.0, abs=0.02 if shape == "lorentzian" else 1e-6)  # area kept


def test_1h_binning_is_0_to_12_ppm_at_0_01():
    vector = build_modality("nmr1h", {"line_width": 0.0}).binned([7.26, 0.0])
    assert vector.shape == (1200,) and np.flatnonzero(vector).tolist() == [0, 726]


def test_ms_sqrt_scaling():
    vector = build_modality("ms").binned(([100.0, 200.0], [100.0, 25.0]))
    assert vector.shape == (1000,)
    assert vector[100] == 1.0 and vector[200] == pytest.approx(0.5)  # sqrt(25)/sqrt(100)


def test_canonical_input_ignores_peak_order_and_format():
    modality = build_modality("nmr13c")
    keys = {
        modality.content_key(raw)
        for raw in (
            [128.0, 21.0],
            [21.0, 128.0],
            [(21.0, 1.0), (128.0, 1.0)],
            "[21.0, 128.0]",
            np.array([128.0, 21.0]),
            {"shifts": [21.0, 128.0]},
            ([21.0, 128.0], [1.0, 1.0]),
        )
    }
    assert len(keys) == 1
    assert modality.content_key([21.0, 128.1]) not in keys


JCAMP_XY = """##TITLE=toy 13C spectrum
##JCAMP-DX=5.01
##DATA TYPE=NMR SPECTRUM
##.OBSERVE FREQUENCY=100.0
##XUNITS=PPM
##YUNITS=ARBITRARY UNITS
##FIRSTX=80.0
##LASTX=74.0
##XFACTOR=1.0
##YFACTOR=1.0
##NPOINTS=7
##XYDATA=(X++(Y..Y))
80.0 0 1 2 3
76.0 100 2 0
##END=
"""
JCAMP_PEAKS = """##TITLE=toy peak table
##JCAMP-DX=5.01
##DATA TYPE=NMR PEAK TABLE
##XUNITS=PPM
##NPOINTS=3
##PEAK TABLE=(XY..XY)
77.0, 100.0
128.5, 50.0; 20.1, 10
##END=
"""


def test_jcamp_dx_profile_and_peak_table(tmp_path):
    (tmp_path / "xy.jdx").write_text(JCAMP_XY)
    (tmp_path / "peaks.jdx").write_text(JCAMP_PEAKS)
    profile = read_jcamp(tmp_path / "xy.jdx")
    assert profile.continuous and profile.positions.tolist() == [80, 79, 78, 77, 76, 75, 74]
    modality = build_modality("nmr13c")
    vector = modality.binned(str(tmp_path / "xy.jdx"))
    assert np.argmax(vector) == 1260  # the 100-high point at 76 ppm
    peaks = modality.binned(tmp_path / "peaks.jdx")
    assert np.flatnonzero(peaks).tolist() == [701, 1270, 1785]
    assert peaks[1270] == 1.0 and peaks[1785] == pytest.approx(0.5)
    assert modality.encode([str(tmp_path / "peaks.jdx")]).shape == (1, 256)
    # the key is the content, not the path
    (tmp_path / "copy.jdx").write_text(JCAMP_PEAKS)
    assert modality.content_key(str(tmp_path / "copy.jdx")) == modality.content_key(tmp_path / "peaks.jdx")


# -- real mass spectra (matchms source-package test data) ---------------------------------------
@pytest.fixture(scope="module")
def pesticides():
    """76 GNPS MS/MS spectra with SMILES (read once: matchms' filters are slowish)."""
    return read_spectra(MATCHMS_DATA / "pesticides.mgf")


@pytest.mark.parametrize(
    "file, expected_kept",
    [
        ("pesticides.mgf", 76),
        ("MoNA-export-GC-MS-first10.msp", 10),
        ("massbank_five_spectra.msp", 5),
        ("riken_style_five_spectra.msp", 5),
    ],
)
def test_read_real_spectra_with_structures(file, expected_kept, pesticides):
    result = pesticides if file == "pesticides.mgf" else read_spectra(MATCHMS_DATA / file)
    assert result.total == expected_kept + sum(result.dropped.values())
    assert len(result) == expected_kept
    smiles, spectrum = result.records[0]
    assert smiles and len(spectrum.peaks.mz) > 0


def test_spectra_without_structures_are_dropped_with_reasons():
    mzml = read_spectra(MATCHMS_DATA / "testdata.mzml")
    assert len(mzml) == 0 and mzml.dropped == {"no SMILES or InChI": mzml.total} and mzml.total > 0
    mgf = read_spectra(MATCHMS_DATA / "testdata.mgf")
    assert len(mgf) + sum(mgf.dropped.values()) == mgf.total == 30
    with pytest.raises(FileNotFoundError):
        read_spectra(MATCHMS_DATA / "nope.mgf")


def test_encode_real_spectra_and_round_trip_through_a_table(tmp_path, pesticides):
    records = pesticides.records[:8]
    modality = build_modality("ms")
    direct = modality.encode([spectrum for _, spectrum in records])
    assert direct.shape == (8, 256) and np.isfinite(direct).all()
    frame = spectra_frame(records)
    frame.to_parquet(tmp_path / "ms.parquet")
    import pandas as pd

    back = pd.read_parquet(tmp_path / "ms.parquet")
    assert list(back.columns) == ["smiles", "inchikey", "ms"]
    np.testing.assert_array_equal(modality.encode(list(back["ms"])), direct)
    assert modality.content_key(back["ms"][0]) == modality.content_key(records[0][1])
    as_json = json.dumps({"mz": back["ms"][0]["mz"].tolist(), "intensities": back["ms"][0]["intensities"].tolist()})
    # batch of 1 vs batch of 8: same input tensor, float sums may differ in the last bits
    np.testing.assert_allclose(modality.encode([as_json])[0], direct[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(modality.preprocess_one(as_json), modality.preprocess_one(records[0][1]))


def test_shipped_simulated_nmr_spectra_encode(tmp_path):
    from acml_ray.data.sources import load_source

    frame = load_source("nmr_spectra").head(16)
    for name in ("nmr13c", "nmr1h"):
        vectors = build_modality(name).encode(list(frame[name]))
        assert vectors.shape == (16, build_modality(name).dim) and np.isfinite(vectors).all()
