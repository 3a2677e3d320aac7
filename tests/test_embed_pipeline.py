"""The embedding pipeline: its building blocks, `prepare` (in the driver) and `acml embed`
(Ray Data actor pools) on a local path and on a real S3 server."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from acml_ray.cache import CachedEmbedder
from acml_ray.chem import GraphFeaturizer
from acml_ray.cli.main import main
from acml_ray.config import FeaturizerConfig, load_config
from acml_ray.data.paired import PairedExamples
from acml_ray.modalities import build_modality
from acml_ray.pipelines.embed_batches import (
    InchikeyDeduper,
    embed_table,
    featurise_table,
    stats_columns,
    training_rows,
)
from acml_ray.pipelines.embed_report import summarise
from acml_ray.storage import resolve_filesystem

IMAGE = [{"name": "image", "options": {"image_size": 32}}]  # small depictions: fast, still real


@pytest.fixture(scope="module")
def molecules(chembl_drugs) -> pd.DataFrame:
    """20 real drugs (some over the 50 heavy-atom limit), two repeats and two bad inputs."""
    drugs = chembl_drugs[["smiles"]].sample(20, random_state=7)
    frame = pd.concat([drugs, drugs.iloc[:2], pd.DataFrame({"smiles": ["not a smiles", "C"]})], ignore_index=True)
    frame["id"] = [f"mol-{i}" for i in range(len(frame))]
    return frame


def test_blocks_featurise_dedupe_embed_and_summarise(tmp_path, molecules) -> None:
    table = pa.Table.from_pandas(molecules, preserve_index=False)
    feats = featurise_table(table, GraphFeaturizer(), id_column="id", passthrough=["id"])
    deduper = InchikeyDeduper()
    # Two batches through one deduper: repeats are caught across batch boundaries.
    marked = pa.concat_tables([deduper(feats.slice(0, 21)), deduper(feats.slice(21))])
    stages = marked.column("stage").to_pylist()
    assert stages[20:22] == ["deduplicate", "deduplicate"] and stages[22:] == ["featurise", "featurise"]
    assert marked.column("mol_id").to_pylist()[0] == "mol-0"

    embedder = CachedEmbedder(build_modality("image", IMAGE[0]["options"]), str(tmp_path))
    out = embed_table(marked, embedder)
    summary = summarise(out.select(stats_columns(["image"])), ["image"])
    assert summary.counts["input"] == 24 and summary.counts["duplicates"] == 2
    assert summary.counts["quarantined"] == summary.counts["input"] - summary.counts["usable"]
    assert summary.reports["image"]["encoded"] == summary.counts["usable"]
    assert summary.quarantined_by_reason["duplicate InChIKey"] == 2
    assert set(summary.quarantine.column_names) >= {"input", "stage", "reason"}

    rows = training_rows(out, ["image"])
    assert rows.num_rows == summary.counts["usable"]
    examples = PairedExamples.from_table(rows, ["image"])  # the training-side contract
    assert examples.vectors["image"].shape == (rows.num_rows, 1280) and bool(examples.masks["image"].all())
    # The hash split is a partition and does not depend on the batch a molecule arrives in.
    train = training_rows(out, ["image"], split="train")
    val = training_rows(out, ["image"], split="val")
    assert train.num_rows + val.num_rows == rows.num_rows and val.num_rows > 0
    val_alone = training_rows(out.slice(10), ["image"], split="val")
    assert set(val_alone.column("inchikey").to_pylist()) <= set(val.column("inchikey").to_pylist())


def test_prepare_uses_the_blocks_and_the_cache(tmp_path) -> None:
    from acml_ray.pipelines.prepare import prepare

    cfg = load_config(
        None,
        {
            "output_dir": str(tmp_path),
            "modalities": IMAGE,
            "data.sources": [{"name": "chembl_approved_drugs", "limit": 30, "seed": 2}],
        },
    )
    first = prepare(cfg, progress=False)
    assert first.counts["quarantined"] == first.counts["input"] - first.counts["usable"]
    assert first.reports["image"]["encoded"] == first.counts["usable"]
    second = prepare(cfg, progress=False)
    assert second.reports["image"]["forward_passes"] == 0
    a, b = pq.read_table(first.train_path), pq.read_table(second.train_path)
    assert a.equals(b)
    assert len(PairedExamples.from_table(b, ["image"])) == first.counts["train"]
    # One split rule: `prepare` puts every molecule on the side `acml embed` would.
    from acml_ray.data.paired import validation_mask

    train_keys = a.column("inchikey").to_pylist()
    val_keys = pq.read_table(first.val_path).column("inchikey").to_pylist()
    assert validation_mask(val_keys, 0.2, 4).all() and not validation_mask(train_keys, 0.2, 4).any()


def test_prepare_counts_a_corrupt_cache_shard_once_and_reports_what_it_returns(tmp_path) -> None:
    """A truncated cache shard is set aside, its rows recomputed and counted once, in the result
    `prepare` returns and in prepare.json, whose keys are the result's fields (as report.json's)."""
    from dataclasses import fields

    from acml_ray.pipelines.prepare import prepare

    cfg = load_config(
        None,
        {
            "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"),
            "modalities": [{"name": "ecfp"}],
            "data.sources": [{"name": "chembl_approved_drugs", "limit": 30, "seed": 2}],
        },
    )
    first = prepare(cfg, progress=False)
    assert first.reports["ecfp"]["cache_shards_corrupt"] == 0
    shards = sorted(p for p in (tmp_path / "cache").rglob("*.parquet") if "corrupt" not in p.parts)
    assert len(shards) == 1
    shards[0].write_bytes(shards[0].read_bytes()[:-20])  # truncated, as by a lost connection
    second = prepare(cfg, progress=False)
    report = second.reports["ecfp"]
    assert report["cache_shards_corrupt"] == 1 and report["cache_hits"] == 0
    assert report["encoded"] == first.reports["ecfp"]["encoded"] == second.counts["usable"]
    written = json.loads((tmp_path / "out" / "data" / "prepare.json").read_text())
    assert list(written) == [f.name for f in fields(second)] and second.report_path.endswith("prepare.json")
    assert written["reports"]["ecfp"]["cache_shards_corrupt"] == 1
    assert written["quarantined_by_reason"] == second.quarantined_by_reason
    assert second.quarantined == second.counts["quarantined"] == sum(second.quarantined_by_reason.values())


def test_validation_mask_is_a_stable_seeded_partition(chembl_drugs) -> None:
    from acml_ray.data.paired import validation_mask

    keys = chembl_drugs["molecule_chembl_id"].tolist()  # any stable per-molecule key
    mask = validation_mask(keys, 0.2, 4)
    assert abs(mask.mean() - 0.2) < 0.03  # ~20% of ~3,000 molecules
    # A molecule's side depends on its key alone: not on order, neighbours or data growth.
    assert (validation_mask(keys[::-1], 0.2, 4) == mask[::-1]).all()
    assert (validation_mask(keys[:100], 0.2, 4) == mask[:100]).all()
    assert (validation_mask(keys, 0.3, 4) >= mask).all()  # a larger fraction only adds molecules
    assert (validation_mask(keys, 0.2, 5) != mask).any()  # the seed picks another split


def _embed_args(input_uri: str, output_uri: str, cache_uri: str, out_dir: str) -> list[str]:
    return [
        "embed",
        "--input",
        input_uri,
        "--output",
        output_uri,
        "--out",
        out_dir,
        "--quiet",
        "--set",
        f"cache_dir={cache_uri}",
        "--set",
        f"modalities={json.dumps(IMAGE)}",
        "--set",
        "embed.id_column=id",
        "--set",
        "embed.num_cpus_per_actor=0.5",
        "--set",
        "embed.actor_batch_size=8",
    ]


def _read(location: str) -> pa.Table:
    fs, path = resolve_filesystem(location)
    return pq.read_table(path, filesystem=fs)


@pytest.mark.slow
def test_embed_pipeline_local_rerun_and_growth(tmp_path, molecules, ray_local, capsys) -> None:
    data = tmp_path / "in"
    data.mkdir()
    held = molecules.iloc[2:6]  # 4 drugs kept back to add later (rows 0-1 are repeated at 20-21)
    base = molecules.drop(index=held.index)
    base.iloc[:10].to_parquet(data / "part-0.parquet")
    base.iloc[10:].to_parquet(data / "part-1.parquet")
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = _embed_args(str(data), str(out), str(cache), str(tmp_path))

    from ray.data import DataContext

    preserve_order = DataContext.get_current().execution_options.preserve_order
    assert main(args) == 0
    # The pipeline reads in order without changing the caller's Ray Data settings.
    assert DataContext.get_current().execution_options.preserve_order == preserve_order
    report = json.loads((out / "report.json").read_text())
    counts, image = report["counts"], report["reports"]["image"]
    assert counts["input"] == len(base) and counts["duplicates"] == 2
    assert counts["quarantined"] == counts["input"] - counts["usable"]
    assert image["encoded"] == counts["usable"] and image["forward_passes"] > 0
    printed = capsys.readouterr().out
    assert "forward passes" in printed and "quarantined by reason" in printed
    first = pa.concat_tables([_read(str(out / "train")), _read(str(out / "val"))]).sort_by("mol_id")
    assert first.num_rows == counts["usable"]
    assert len(PairedExamples.from_table(first, ["image"])) == counts["usable"]
    quarantine = pq.read_table(out / "quarantine.parquet")
    assert quarantine.num_rows == counts["quarantined"]
    assert {"featurise", "deduplicate"} <= set(quarantine.column("stage").to_pylist())

    # Same data again: every vector from the cache, not one forward pass, identical output.
    assert main(args) == 0
    again = json.loads((out / "report.json").read_text())["reports"]["image"]
    assert again["forward_passes"] == 0 and again["encoded"] == 0
    assert again["cache_hits"] == counts["usable"]
    assert pa.concat_tables([_read(str(out / "train")), _read(str(out / "val"))]).sort_by("mol_id").equals(first)

    # Four new molecules: only they reach the encoder.
    held.to_parquet(data / "part-2.parquet")
    assert main(args) == 0
    grown = json.loads((out / "report.json").read_text())
    assert grown["reports"]["image"]["cache_hits"] == counts["usable"]
    assert grown["reports"]["image"]["encoded"] == grown["counts"]["usable"] - counts["usable"] > 0


@pytest.mark.slow
def test_one_input_file_is_embedded_in_blocks_of_featurize_batch_size(tmp_path, molecules, ray_local) -> None:
    # Ray Data reads a small file as one block; without a split the whole table would be one
    # featurise task and one encoder call (the study's 113k molecules stalled 30 min in one).
    data = tmp_path / "in"
    data.mkdir()
    molecules.to_parquet(data / "part-0.parquet")
    out = tmp_path / "out"
    args = _embed_args(str(data), str(out), str(tmp_path / "cache"), str(tmp_path))
    assert main([*args, "--set", "embed.featurize_batch_size=4"]) == 0
    shards = sorted((out / "train").glob("*.parquet")) + sorted((out / "val").glob("*.parquet"))
    assert len(shards) >= len(molecules) // 4 - 2  # about one written block per 4 input rows
    report = json.loads((out / "report.json").read_text())
    train, val = _read(str(out / "train")), _read(str(out / "val"))
    table = pa.concat_tables([train, val])
    assert (
        table.num_rows == report["counts"]["usable"] and len(set(table.column("mol_id").to_pylist())) == table.num_rows
    )
    # The report says how the usable rows were split, as the tables written hold them.
    counts = report["counts"]
    assert (counts["train"], counts["val"]) == (train.num_rows, val.num_rows) and counts["val"] > 0


def test_encoder_actors_never_reserve_the_cpus_their_input_needs() -> None:
    from acml_ray.pipelines.embed import fit_actor_cpus

    assert fit_actor_cpus(0.5, 2, 2.0) == 0.5  # 1 CPU for the actors, 1 for read and featurise
    assert fit_actor_cpus(0.5, 4, 2.0) == 0.25  # four modalities on two CPUs
    assert fit_actor_cpus(1.0, 3, 16.0) == 1.0
    assert fit_actor_cpus(1.0, 2, 1.0) == 0.0  # one CPU: the actors reserve nothing
    assert fit_actor_cpus(0.0, 8, 2.0) == 0.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_embed_finishes_when_its_actors_ask_for_every_cpu(tmp_path, molecules, ray_local, capsys) -> None:
    # Three encoder actors at 0.7 CPU would hold 2.1 of ray_local's 2 CPUs: Ray Data would start
    # them and never schedule the read and featurise tasks that feed them.
    data = tmp_path / "in"
    data.mkdir()
    molecules.iloc[:8].to_parquet(data / "part-0.parquet")
    args = _embed_args(str(data), str(tmp_path / "out"), str(tmp_path / "cache"), str(tmp_path))
    three = [*IMAGE, {"name": "ecfp", "options": {"n_bits": 64}}, {"name": "smiles"}]
    args += ["--set", f"modalities={json.dumps(three)}", "--set", "embed.num_cpus_per_actor=0.7"]
    assert main(args) == 0
    assert "starve featurisation: each reserves 0.333 instead" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {m: r["encoded"] for m, r in report["reports"].items()} == dict.fromkeys(
        ["image", "ecfp", "smiles"], report["counts"]["usable"]
    )


@pytest.mark.slow
def test_embed_pipeline_on_s3(tmp_path, molecules, ray_local, s3_env, monkeypatch, capsys) -> None:
    s3_server = s3_env
    bucket, client = s3_server["bucket"], s3_server["client"]
    client.put_object(Bucket=bucket, Key="pipeline/in/molecules.csv", Body=molecules.to_csv(index=False).encode())
    root = f"s3://{bucket}/pipeline"
    args = _embed_args(f"{root}/in", f"{root}/out", f"{root}/cache", str(tmp_path))
    assert main(args) == 0
    fs, path = resolve_filesystem(f"{root}/out/report.json")
    with fs.open_input_stream(path) as stream:
        report = json.loads(stream.read())
    assert report["counts"]["input"] == len(molecules)
    assert report["reports"]["image"]["encoded"] == report["counts"]["usable"]
    table = pa.concat_tables([_read(f"{root}/out/train"), _read(f"{root}/out/val")])
    assert table.num_rows == report["counts"]["usable"]
    assert _read(f"{root}/out/quarantine.parquet").num_rows == report["counts"]["quarantined"]
    cached = client.list_objects_v2(Bucket=bucket, Prefix="pipeline/cache/")["Contents"]
    assert [o for o in cached if o["Key"].endswith(".parquet")]  # compacted shard(s) on S3

    # Wrong secret: a clear error naming the bucket, exit code 2, the secret never printed.
    wrong = "wrong-secret-for-acml-test"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"bucket '{bucket}'" in err and "access denied" in err
    assert wrong not in err and s3_server["secret_key"] not in err


# -- hostile input (issue 12) ---------------------------------------------------------------
RING = "C1" + "C" * 99996 + "C1"  # sanitising it segfaults RDKit under a memory limit
# Loosened guard, so that the ring reaches RDKit: the sandbox, not the guard, must save the job.
LOOSE = {
    "featurizer": {"max_smiles_chars": 10**6, "max_heavy_atoms": 10**6},
    "embed": {"isolation": {"memory_mb": 1024, "retries": 1}},
}


def test_csv_rows_in_other_encodings_cost_only_themselves(tmp_path, chembl_drugs) -> None:
    """4,999 good rows + 3 latin-1 rows + NUL bytes + a quoted newline: read with the reader's
    own options, only the bad rows are quarantined (`invalid text encoding`), row by row."""
    import pyarrow.csv as pacsv

    from acml_ray.data.csv_source import csv_read_options
    from acml_ray.pipelines.embed import check_input_columns

    good = chembl_drugs["smiles"].dropna().head(40).tolist()
    lines = [b"id,smiles,note"] + [f"g{i},{s},ok".encode() for i, s in enumerate(good)]
    lines += [
        b"l1,C\xe9C,latin-1",
        b"l2,CC\xf6N,latin-1",
        b"l3,\xc9CO,latin-1",
        b'n1,"C\x00CO",nul',
        b'q1,CCO,"a note\nover two lines"',
    ]
    path = tmp_path / "odd.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    fs = pafs.LocalFileSystem()
    check_input_columns(fs, str(path), "csv", str(path), ["smiles", "id"])  # the check agrees...
    table = pacsv.read_csv(path, **csv_read_options(["smiles", "id"], ["id", "smiles", "note"]))  # ...with the reader
    assert table.num_rows == len(good) + 5 and table.schema.field("smiles").type == pa.binary()
    out = featurise_table(table, GraphFeaturizer(), id_column="id", passthrough=["note"], text_columns=["note"])
    reasons = dict(zip(out.column("mol_id").to_pylist(), out.column("reason").to_pylist()))
    for bad in ("l1", "l2", "l3"):
        assert reasons[bad].startswith("invalid text encoding: column 'smiles' is not UTF-8"), reasons[bad]
    assert reasons["n1"] == "invalid text encoding: control character U+0000 at position 1"
    assert reasons["q1"] is None  # RFC 4180: a newline inside quotes is part of the value
    assert out.column("note").type == pa.string()
    drugs = [reasons[f"g{i}"] for i in range(len(good))]
    assert sum(r is None for r in drugs) >= len(good) - 5  # only the filter's own rejects
    inputs = dict(zip(out.column("mol_id").to_pylist(), out.column("input").to_pylist()))
    assert inputs["l1"] == "C\\xe9C"  # shown as it was, safely


def test_sandboxed_featurisation_quarantines_a_segfault(chembl_drugs) -> None:
    """A real crash (RDKit segfaults sanitising a 100k-atom ring under the child's memory limit)
    costs its row only; the same table unsandboxed is identical apart from that row."""
    from acml_ray.config import IsolationConfig

    good = chembl_drugs["smiles"].dropna().head(7).tolist()
    table = pa.table({"smiles": good[:3] + [RING] + good[3:], "id": [f"m{i}" for i in range(8)]})
    featurizer = GraphFeaturizer(FeaturizerConfig(**LOOSE["featurizer"]))
    out = featurise_table(table, featurizer, id_column="id", isolation=IsolationConfig(memory_mb=1024, retries=0))
    reasons = out.column("reason").to_pylist()
    assert reasons[3].startswith("worker crashed: SIG"), reasons[3]
    plain = featurise_table(table.filter(pa.array([i != 3 for i in range(8)])), GraphFeaturizer(), id_column="id")
    assert out.filter(pa.array([i != 3 for i in range(8)])).equals(plain)


@pytest.mark.slow
def test_embed_survives_a_crashing_row_and_hostile_csv(tmp_path, chembl_drugs, ray_local) -> None:
    """`acml embed` on a CSV with a row that segfaults RDKit, rows in latin-1 and with NUL bytes:
    the job ends, that row is quarantined as `worker crashed`, every other row is accounted for
    by id (input = accepted + quarantined), and retries are bounded."""
    good = chembl_drugs["smiles"].dropna().sample(20, random_state=3).tolist()
    lines = [b"id,smiles"] + [f"g{i},{s}".encode() for i, s in enumerate(good)]
    lines += [f"crash,{RING}".encode(), b"latin,C\xe9C", b'nul,"C\x00CO"']
    data = tmp_path / "in.csv"
    data.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    args = [
        "embed",
        "--input",
        str(data),
        "--output",
        str(out),
        "--out",
        str(tmp_path),
        "--quiet",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--set",
        'modalities=[{"name": "ecfp"}]',
        "--set",
        "embed.id_column=id",
        "--set",
        "embed.featurize_batch_size=8",
        "--set",
        "embed.num_cpus_per_actor=0.5",
        "--set",
        f"featurizer={json.dumps(LOOSE['featurizer'])}",
        "--set",
        "embed.isolation.memory_mb=1024",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    reasons = {row["mol_id"]: row["reason"] for row in quarantine}
    assert reasons["crash"].startswith("worker crashed: SIG")
    assert reasons["latin"].startswith("invalid text encoding")
    assert reasons["nul"].startswith("invalid text encoding")
    accepted = set(_read(str(out / "train")).column("mol_id").to_pylist()) | set(
        _read(str(out / "val")).column("mol_id").to_pylist()
    )
    assert accepted.isdisjoint(reasons) and accepted | set(reasons) == {f"g{i}" for i in range(20)} | {
        "crash",
        "latin",
        "nul",
    }
    assert report["counts"]["input"] == 23 and report["quarantined_by_reason"]["worker crashed"] == 1
    assert report["reports"]["ecfp"]["cache_shards_corrupt"] == 0


class _CuttableProxy:
    """A loopback TCP forwarder to `port`; `cut()` refuses new connections and drops open ones,
    as a storage server that goes away mid-run does (the shared test server stays up)."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.target, self.connections = port, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        self.server.close()
        for s in self.connections:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.mark.slow
def test_storage_lost_mid_run_is_one_line(tmp_path, molecules, ray_local, s3_env, monkeypatch, capsys) -> None:
    import acml_ray.pipelines.embed as embed_module

    bucket, client = s3_env["bucket"], s3_env["client"]
    client.put_object(Bucket=bucket, Key="lost/in/molecules.csv", Body=molecules.to_csv(index=False).encode())
    proxy = _CuttableProxy(int(s3_env["endpoint"].rsplit(":", 1)[1]))
    endpoint = f"http://127.0.0.1:{proxy.port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    say = embed_module._say

    def say_then_cut(message: str) -> None:  # the first progress line comes after every check passed
        say(message)
        proxy.cut()

    monkeypatch.setattr(embed_module, "_say", say_then_cut)
    root = f"s3://{bucket}/lost"
    args = [
        "embed",
        "--input",
        f"{root}/in",
        "--output",
        f"{root}/out",
        "--out",
        str(tmp_path),
        "--quiet",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--set",
        'modalities=[{"name": "ecfp"}]',
        "--set",
        "embed.num_cpus_per_actor=0.5",
    ]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err[-3000:]
    last = err.splitlines()[-1]
    # Ray Data has read the small input by then; the first write to the output meets the dead
    # endpoint, and the line says so, with what may be partial and what is complete.
    assert last.startswith(f"acml: error: storage lost while writing {root}/out/train: "), last
    assert f"endpoint {endpoint} stopped answering (bucket '{bucket}', key 'lost/out/train'" in last
    assert f"{root}/out/train may be partly written; nothing else was written" in last


def test_corrupt_cache_shards_are_counted_in_the_report(tmp_path, molecules) -> None:
    """A shard that fails its checksum is set aside, its rows recomputed, and the count reaches
    the per-modality report that `acml embed` writes to report.json."""
    table = pa.Table.from_pandas(molecules, preserve_index=False)
    feats = featurise_table(table, GraphFeaturizer(), id_column="id")
    modality = build_modality("ecfp")
    first = embed_table(feats, CachedEmbedder(modality, str(tmp_path)))
    shards = sorted(p for p in tmp_path.rglob("*.parquet") if "corrupt" not in p.parts)
    assert len(shards) == 1
    shards[0].write_bytes(shards[0].read_bytes()[:-20])  # truncated, as by a lost connection
    again = embed_table(feats, CachedEmbedder(modality, str(tmp_path)))
    summary = summarise(again.select(stats_columns(["ecfp"])), ["ecfp"])
    report = summary.reports["ecfp"]
    assert report["cache_shards_corrupt"] == 1 and report["cache_hits"] == 0
    assert report["encoded"] == summarise(first.select(stats_columns(["ecfp"])), ["ecfp"]).reports["ecfp"]["encoded"]
    assert summarise(first.select(stats_columns(["ecfp"])), ["ecfp"]).reports["ecfp"]["cache_shards_corrupt"] == 0


def test_three_latin1_rows_after_4999_good_ones_cost_three_rows(tmp_path) -> None:
    """The issue's case: 3 latin-1 rows appended to 4,999 good SMILES once turned the column into
    bytes and quarantined all 5,002 rows; read with the reader's options, 3 rows fail to decode."""
    import pyarrow.csv as pacsv

    from acml_ray.data.csv_source import csv_read_options
    from acml_ray.pipelines.embed_batches import decode_text
    from acml_ray.storage import package_dir

    nci = (package_dir("rdkit") / "Data" / "NCI" / "first_5K.smi").read_text().splitlines()
    good = [line.split("\t")[0] for line in nci]  # NCI's first 4,999 compounds, in the RDKit wheel
    assert len(good) == 4999
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"smiles\n" + b"".join(s.encode() + b"\n" for s in good) + b"C\xe9C\nCC\xf6N\n\xc9CO\n")
    table = pacsv.read_csv(path, **csv_read_options(["smiles"], ["smiles"]))
    bad: dict[int, str] = {}
    decoded = decode_text(table.column("smiles").to_pylist(), "smiles", bad)
    assert sorted(bad) == [4999, 5000, 5001]
    assert decoded[:4999] == good and all(isinstance(s, str) for s in decoded)
    assert bad[4999] == "invalid text encoding: column 'smiles' is not UTF-8 (byte 0xe9 at position 1)"
