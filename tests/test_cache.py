"""The content-addressed embedding cache: zero recomputation, incremental growth, corruption
detection, concurrent writers, compaction, and the same store on a real S3 server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from acml_ray.cache import CachedEmbedder, EmbeddingCache
from acml_ray.modalities import build_modality
from acml_ray.storage import StorageError, check_access

# A 32-pixel depiction keeps the real EfficientNet encoder fast enough for unit tests.
IMAGE = {"image_size": 32}


@pytest.fixture(scope="module")
def image():
    modality = build_modality("image", IMAGE)
    _ = modality.fingerprint  # load the weights once for the whole module
    return modality


@pytest.fixture(scope="module")
def smiles(chembl_drugs) -> list[str]:
    from acml_ray.chem import canonical_identity

    picked = chembl_drugs["smiles"].sample(40, random_state=3).tolist()
    out: list[str] = []
    for s in picked:
        try:
            out.append(canonical_identity(s)[0])
        except ValueError:
            continue
    return list(dict.fromkeys(out))[:24]


def _shards(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if "corrupt" not in p.parts)


def test_rerun_does_no_forward_pass_and_returns_identical_vectors(tmp_path, image, smiles) -> None:
    first = CachedEmbedder(image, str(tmp_path), batch_size=8).embed(smiles)
    assert first.report.encoded == len(smiles) and first.report.forward_passes == 3
    # A fresh embedder (new process in real life) reads everything back from disk.
    second = CachedEmbedder(image, str(tmp_path), batch_size=8).embed(smiles)
    assert second.report.forward_passes == 0 and second.report.encoded == 0
    assert second.report.cache_hits == len(smiles)
    np.testing.assert_array_equal(second.vectors, first.vectors)


def test_adding_molecules_encodes_only_the_new_ones(tmp_path, image, smiles) -> None:
    old, new = smiles[:16], smiles[16:]
    CachedEmbedder(image, str(tmp_path), batch_size=8).embed(old)
    report = CachedEmbedder(image, str(tmp_path), batch_size=8).embed(smiles).report
    assert report.encoded == len(new) and report.cache_hits == len(old)
    assert report.forward_passes == 1


def test_duplicates_and_bad_inputs_are_encoded_once_or_rejected(tmp_path, image, smiles) -> None:
    result = CachedEmbedder(image, str(tmp_path)).embed([smiles[0], smiles[0], "not a smiles", ""])
    assert result.report.encoded == 1
    assert result.ok.tolist() == [True, True, False, False]
    assert result.reasons[2] == "unparsable SMILES" and result.reasons[3]


def test_corrupt_or_truncated_shards_are_detected_and_recomputed(tmp_path, image, smiles) -> None:
    reference = CachedEmbedder(image, str(tmp_path), batch_size=6, flush_every=6).embed(smiles)
    shards = _shards(tmp_path)
    assert len(shards) == 4
    flipped, truncated = shards[0], shards[1]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle: still parses, wrong values
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:100])

    embedder = CachedEmbedder(image, str(tmp_path), batch_size=6)
    again = embedder.embed(smiles)
    assert embedder.cache.stats.shards_corrupt == 2
    assert again.report.encoded == 12 and again.report.cache_hits == 12  # only the lost rows
    np.testing.assert_allclose(again.vectors, reference.vectors, rtol=1e-5, atol=1e-5)
    assert not flipped.exists() and not truncated.exists()  # moved aside, never read again
    assert len(list(tmp_path.rglob("corrupt/*"))) == 2
    third = CachedEmbedder(image, str(tmp_path)).embed(smiles)
    assert third.report.forward_passes == 0


def test_a_corrupt_shard_read_by_two_instances_at_once_is_counted_once(tmp_path, smiles, monkeypatch) -> None:
    """The embed actors of `embed.concurrency` > 1 each hold a cache on the same directory: when
    two read one corrupt shard at the same moment, only the one that moves it aside counts it."""
    ecfp = build_modality("ecfp", {"n_bits": 64})  # real vectors, cheap to compute
    caches = [EmbeddingCache(str(tmp_path), ecfp.name, ecfp.fingerprint, ecfp.dim) for _ in range(2)]
    caches[0].put([ecfp.content_key(s) for s in smiles], ecfp.encode(smiles))
    [shard] = _shards(tmp_path)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    # Both instances have read the shard (and found it corrupt) before either sets it aside.
    both_read = threading.Barrier(2, timeout=60)
    read = EmbeddingCache._read_verified

    def read_then_wait(self, path):
        table = read(self, path)
        both_read.wait()
        return table

    monkeypatch.setattr(EmbeddingCache, "_read_verified", read_then_wait)
    with ThreadPoolExecutor(2) as pool:
        indexes = list(pool.map(lambda cache: cache.load(), caches))
    assert indexes == [{}, {}]  # neither trusts a vector of the corrupt shard
    assert sorted(c.stats.shards_corrupt for c in caches) == [0, 1]
    assert not shard.exists() and len(list(tmp_path.rglob("corrupt/*"))) == 1


_WRITER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from acml_ray.cache import CachedEmbedder
    from acml_ray.modalities import build_modality
    root, out, smiles = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    result = CachedEmbedder(build_modality("image", {"image_size": 32}), root, batch_size=3,
                            flush_every=3).embed(smiles)
    np.save(out, result.vectors)
""")


@pytest.mark.slow  # two fresh Python processes importing torch: ~10 s idle, ~35 s on a busy box
def test_concurrent_writers_leave_a_consistent_cache(tmp_path, image, smiles) -> None:
    root = tmp_path / "cache"
    halves = [smiles[:16], smiles[8:]]  # 8 molecules written by both processes at once
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(tmp_path / f"v{i}.npy"), json.dumps(part)])
        for i, part in enumerate(halves)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    written = [np.load(tmp_path / f"v{i}.npy") for i in range(2)]
    cache = EmbeddingCache(str(root), image.name, image.fingerprint, image.dim)
    keys = [image.content_key(s) for s in smiles]
    vectors, found = cache.lookup(keys)
    assert found.all() and cache.stats.shards_corrupt == 0
    expected = {image.content_key(s): v for part, vecs in zip(halves, written) for s, v in zip(part, vecs)}
    np.testing.assert_allclose(vectors, np.stack([expected[k] for k in keys]), rtol=1e-5, atol=1e-5)
    # Both writers' copies of the shared keys agree (deterministic encoder).
    np.testing.assert_allclose(written[0][8:], written[1][:8], rtol=1e-5, atol=1e-5)


def test_compaction_merges_shards_and_a_stale_reader_recovers(tmp_path, image, smiles) -> None:
    reference = CachedEmbedder(image, str(tmp_path), batch_size=6, flush_every=6).embed(smiles)
    stale = EmbeddingCache(str(tmp_path), image.name, image.fingerprint, image.dim)
    old_listing = stale._shard_paths()
    compactor = EmbeddingCache(str(tmp_path), image.name, image.fingerprint, image.dim)
    assert compactor.compact() == 4
    assert len(_shards(tmp_path)) == 1
    # A reader that listed the shards before compaction finds them gone and lists again.
    listings = iter([old_listing])
    real = stale._shard_paths
    stale._shard_paths = lambda: next(listings, None) or real()
    vectors, found = stale.lookup([image.content_key(s) for s in smiles])
    assert found.all()
    np.testing.assert_array_equal(vectors, reference.vectors)
    assert compactor.compact() == 0  # nothing left to merge


def _s3_env(monkeypatch, server: dict, **overrides: str) -> None:
    for key, value in {**server["env"], **overrides}.items():
        monkeypatch.setenv(key, value)


def test_cache_on_s3_detects_a_corrupt_object(s3_server, monkeypatch, image, smiles) -> None:
    _s3_env(monkeypatch, s3_server)
    root = f"s3://{s3_server['bucket']}/cache-unit"
    reference = CachedEmbedder(image, root, batch_size=6, flush_every=12).embed(smiles)
    client, bucket = s3_server["client"], s3_server["bucket"]
    keys = sorted(
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket, Prefix="cache-unit/")["Contents"]
        if o["Key"].endswith(".parquet")
    )
    assert len(keys) == 2
    client.put_object(Bucket=bucket, Key=keys[0], Body=b"PAR1 not really a parquet file")
    embedder = CachedEmbedder(image, root, batch_size=6)
    again = embedder.embed(smiles)
    assert embedder.cache.stats.shards_corrupt == 1 and again.report.encoded == 12
    np.testing.assert_allclose(again.vectors, reference.vectors, rtol=1e-5, atol=1e-5)
    assert CachedEmbedder(image, root).embed(smiles).report.forward_passes == 0


def test_wrong_credentials_fail_fast_naming_the_bucket(s3_server, monkeypatch) -> None:
    wrong = "definitely-not-the-secret-42"
    _s3_env(monkeypatch, s3_server, AWS_SECRET_ACCESS_KEY=wrong)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        check_access(f"s3://{s3_server['bucket']}/cache", write=True)
    assert time.monotonic() - started < 60  # bounded timeouts and retries, never a hang (generous for a loaded CI box)
    message = str(info.value)
    assert repr(s3_server["bucket"]) in message and "access denied" in message
    assert wrong not in message and s3_server["secret_key"] not in message
    # Nothing listening at the endpoint: the same kind of error, just as fast.
    _s3_env(monkeypatch, s3_server, AWS_ENDPOINT_URL_S3="http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(StorageError, match="bucket 'acml-test'.*cannot connect"):
        check_access(f"s3://{s3_server['bucket']}/cache")
    assert time.monotonic() - started < 60


def test_expiring_credentials_are_not_frozen_into_the_filesystem(s3_server, monkeypatch, tmp_path) -> None:
    """Credentials with an expiry (here a real `credential_process`, as IAM roles and SSO give)
    are resolved and refreshed by pyarrow's own AWS chain, so they never travel in the pickled
    filesystem and never go stale mid-job; static keys keep working as before."""
    import datetime as dt

    from acml_ray.storage import resolve_filesystem

    calls = tmp_path / "calls"
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    script = tmp_path / "creds.py"
    script.write_text(
        f"import json, pathlib\n"
        f"with open({str(calls)!r}, 'a') as f: f.write('x')\n"
        f"print(json.dumps({{'Version': 1, 'AccessKeyId': {s3_server['access_key']!r}, "
        f"'SecretAccessKey': {s3_server['secret_key']!r}, 'Expiration': {expires!r}}}))\n"
    )
    config = tmp_path / "aws_config"
    config.write_text(f"[default]\ncredential_process = {sys.executable} {script}\n")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no_credentials_file"))
    monkeypatch.setenv("AWS_REGION", s3_server["region"])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server["endpoint"])

    location = f"s3://{s3_server['bucket']}/expiring"
    fs, _ = resolve_filesystem(location)
    assert not fs.__reduce__()[1][0]["secret_key"]  # nothing frozen, nothing pickled
    before = calls.read_text() if calls.exists() else ""
    check_access(location, write=True)  # pyarrow ran the credential process itself
    assert len(calls.read_text()) > len(before)

    # Static keys from the environment are still handed over as they are.
    _s3_env(monkeypatch, s3_server)
    fs, _ = resolve_filesystem(location)
    assert fs.__reduce__()[1][0]["access_key"] == s3_server["access_key"]
    check_access(location, write=True)
