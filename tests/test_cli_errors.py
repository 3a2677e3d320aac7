"""Bad input to `acml` ends in one `acml: error:` line naming what is wrong, before any work."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from acml_ray.cli.main import main, user_error


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # libraries may log INFO lines before it
    assert last.startswith("acml: error: "), err
    return last


def test_config_file_problems_name_the_file(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1\n")
    assert f"{bad}: not valid YAML" in _error(capsys, ["train", "--config", str(bad)])
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert f"{binary}: not UTF-8" in _error(capsys, ["train", "--config", str(binary)])
    assert "is a directory" in _error(capsys, ["train", "--config", str(tmp_path)])
    space = tmp_path / "space.yaml"
    space.write_text("{")
    assert f"{space}: not valid YAML" in _error(capsys, ["tune", "--space", str(space)])


def test_overrides_and_validation_are_one_line(tmp_path, capsys) -> None:
    assert "train is int 5, not a section" in _error(capsys, ["train", "--set", "train=5", "--set", "train.epochs=3"])
    assert "bad config key ''" in _error(capsys, ["train", "--set", "=5"])
    assert "--set 'train.epochs=[1': the value is not valid YAML" in _error(
        capsys, ["train", "--set", "train.epochs=[1"]
    )
    empty = tmp_path / "empty_section.yaml"
    empty.write_text("train:\n")  # an empty section still takes overrides
    from acml_ray.config import load_config

    assert load_config(empty, {"train.epochs": 3}).train.epochs == 3
    err = _error(capsys, ["train", "--set", "train.batch_size=-1", "--set", "train.epochs=x"])
    assert "invalid configuration" in err and "train.batch_size:" in err and "train.epochs:" in err
    assert "\n" not in err


def test_reserved_alias_is_refused_before_anything_is_written(tmp_path, capsys) -> None:
    from acml_ray.config import ACMLConfig
    from acml_ray.model import ACMLModel
    from acml_ray.model.serialization import save_model

    cfg = ACMLConfig.model_validate(
        {
            "graph_encoder": {"num_layers": 1, "hidden_dim": 8},
            "projection": {"dims": [4]},
            "modalities": [{"name": "image"}],
        }
    )
    run = tmp_path / "run"
    save_model(ACMLModel.from_config(cfg, {"image": 6}), cfg, run / "model")
    for alias in ("latest", "v3"):
        assert "reserved" in _error(capsys, ["register", str(run), "--name", "m", "--alias", alias])
    assert "name is empty" in _error(capsys, ["register", str(run), "--name", " "])
    assert sorted(p.name for p in run.iterdir()) == ["model"]  # no mlflow.db, no artifacts


def test_embed_input_is_checked_on_the_driver(tmp_path) -> None:
    from acml_ray.pipelines.embed import check_input_columns

    fs = pafs.LocalFileSystem()
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "names.csv").write_text("name\naspirin\n")
    (tmp_path / "fake.parquet").write_text("not parquet")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "README.txt").write_text("not data")
    (tmp_path / "shards" / "a.csv").write_text("smiles\nCCO\n")
    cases = {
        "empty.csv": ("csv", "cannot read"),
        "names.csv": ("csv", "no column 'smiles'"),
        "fake.parquet": ("parquet", "cannot read"),
    }
    for name, (fmt, message) in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            check_input_columns(fs, str(tmp_path / name), fmt, f"s3://bucket/{name}", ["smiles"])
        assert f"s3://bucket/{name}" in str(info.value)  # the location as the user gave it
    check_input_columns(fs, str(tmp_path / "shards"), "csv", "shards", ["smiles"])  # README ignored


def test_missing_table_is_named() -> None:
    from acml_ray.train import modality_dims_from_table

    with pytest.raises(FileNotFoundError, match="table not found: /no/such/table.parquet"):
        modality_dims_from_table("/no/such/table.parquet", ["image"])


def test_ray_task_errors_report_their_cause() -> None:
    import ray.exceptions

    remote = ray.exceptions.RayTaskError(
        "featurise", "Traceback (most recent call last): ...", ValueError("no column 'smiles'")
    ).as_instanceof_cause()
    assert user_error(remote) == "no column 'smiles'"
    assert user_error(KeyError("a bug")) is None  # bugs keep their traceback


def test_unknown_mlflow_run_is_one_line(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    err = _error(capsys, ["register", "0" * 32, "--name", "m", "--tracking-uri", uri])
    assert "0" * 32 in err


def test_evaluate_rejects_unknown_tasks_and_empty_sections_before_any_work(tmp_path, capsys) -> None:
    out = tmp_path / "evaluation"
    args = ["evaluate", "--model", str(tmp_path / "no-model"), "--out", str(out)]
    assert "unknown task 'tox99'" in _error(capsys, [*args, "--task", "tox99"])
    assert "task file not found" in _error(capsys, [*args, "--task", str(tmp_path / "t.csv")])
    assert "--sections is empty" in _error(capsys, [*args, "--sections", " , "])
    assert "no model.pt" in _error(capsys, args)  # then the model; nothing was written on the way
    assert not out.exists()


def test_refused_endpoint_names_the_endpoint(free_ports, monkeypatch) -> None:
    from acml_ray.storage import StorageError, check_access

    (port,) = free_ports(1)  # nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "refused-endpoint-secret",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(StorageError) as info:
        check_access("s3://some-bucket/mols", write=True)
    message = str(info.value)
    assert f"at endpoint {endpoint}" in message and "bucket 'some-bucket'" in message
    assert "cannot connect to the endpoint" in message and "refused-endpoint-secret" not in message
    assert user_error(info.value) == message  # the CLI prints it as one line, exit code 2


def test_storage_lost_is_one_line_naming_endpoint_bucket_key() -> None:
    from acml_ray.storage import storage_lost

    os_error = OSError(
        "When reading information for key 'mols/in.csv' in bucket 'data': AWS Error "
        "NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Couldn't connect to server"
    )
    try:
        try:
            raise os_error
        except OSError as inner:
            raise RuntimeError("a Ray Data task failed") from inner
    except RuntimeError as outer:
        lost = storage_lost(outer, "reading s3://data/mols", "nothing was written")
    assert lost is not None
    message = str(lost)
    assert message.startswith("storage lost while reading s3://data/mols: endpoint ")
    assert "bucket 'data', key 'mols/in.csv'" in message and message.endswith("nothing was written")
    assert "\n" not in message and user_error(lost) == message
    assert storage_lost(ValueError("no column 'smiles'"), "reading", "") is None


def test_storage_lost_ignores_a_cause_attribute_that_is_no_exception() -> None:
    """Only Ray's exception-valued `cause` is followed; a library's string `cause` must not turn the
    error handler itself into an AttributeError that hides the original error."""
    from acml_ray.storage import storage_lost

    odd = RuntimeError("a client error")
    odd.cause = "throttled"  # a library's own attribute
    assert storage_lost(odd, "reading", "") is None
    lost = RuntimeError("wrapped")
    lost.cause = OSError("AWS Error NETWORK_CONNECTION: curlCode: 7")  # as RayTaskError sets it
    assert storage_lost(lost, "reading", "") is not None
