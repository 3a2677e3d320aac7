"""MLflow registry model: SMILES -> embeddings pyfunc, `acml register`, loading by alias in a
fresh process, and `mlflow models serve` answering HTTP on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from acml_ray.config import load_config
from acml_ray.model import ACMLModel
from acml_ray.model.serialization import save_model
from acml_ray.registry import embed_smiles, model_signature, output_columns
from acml_ray.registry.pyfunc import ERROR_COLUMN, GRAPH_COLUMN, modality_column

MODALITIES = {"image": 24, "smiles": 12}
INVALID = ["not a smiles", "C1CC", ""]  # unparsable, unclosed ring, empty


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, chembl_drugs) -> Path:
    """A real (untrained: plumbing only) run folder: model/model.pt + summary.json."""
    import torch

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(
        None,
        {
            "graph_encoder.hidden_dim": 16,
            "projection.dims": [32],
            "output_dir": str(out),
            "modalities": [{"name": m} for m in MODALITIES],
            "data.sources": [{"name": "chembl_approved_drugs", "limit": 150}],
        },
    )
    torch.manual_seed(0)
    save_model(ACMLModel.from_config(cfg, MODALITIES), cfg, out / "model", extra={"epoch": 2})
    summary = {
        "held_out_molecules": 30,
        "retrieval": {
            "image->graph": {
                "pool_128": {"top1": 0.25, "top10": 0.75, "mrr": 0.4},
                "pool_all": {"top1": 0.125, "top10": 0.5},
            }
        },
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


@pytest.fixture(scope="module")
def molecules(chembl_drugs) -> list[str]:
    return chembl_drugs["smiles"].head(6).tolist() + INVALID


def _loaded(run_dir: Path):
    from acml_ray.model.serialization import load_model

    return load_model(run_dir / "model")


def test_embed_smiles_shapes_and_errors(run_dir, molecules):
    model, cfg, _ = _loaded(run_dir)
    df = embed_smiles(model, cfg, molecules, batch_size=4)  # several batches
    assert list(df.columns) == output_columns(list(MODALITIES))
    assert len(df) == len(molecules)
    ok = df[ERROR_COLUMN].isna()
    assert ok.tolist() == [True] * 6 + [False] * len(INVALID)
    assert all(isinstance(e, str) and e for e in df.loc[~ok, ERROR_COLUMN])
    assert df.loc[~ok, GRAPH_COLUMN].isna().all()
    assert np.stack(df.loc[ok, GRAPH_COLUMN]).shape == (6, 16)
    for m in MODALITIES:
        assert np.stack(df.loc[ok, modality_column(m)]).shape == (6, 32)
    # Row-independent: one molecule alone embeds as in the batch (eval mode, no batch effects).
    alone = embed_smiles(model, cfg, molecules[2:3])
    np.testing.assert_allclose(alone.loc[0, GRAPH_COLUMN], df.loc[2, GRAPH_COLUMN], rtol=1e-5, atol=1e-6)
    # All-invalid input is still a frame, not an exception.
    bad = embed_smiles(model, cfg, INVALID)
    assert bad[GRAPH_COLUMN].isna().all() and bad[ERROR_COLUMN].notna().all()


def test_signature_names_every_output(run_dir):
    sig = model_signature(list(MODALITIES))
    assert sig.inputs.input_names() == ["smiles"]
    assert sig.outputs.input_names() == output_columns(list(MODALITIES))


@pytest.fixture(scope="module")
def registered(run_dir):
    """`acml register RUN --name acml-test --alias champion` (sqlite store under RUN)."""
    from acml_ray.cli.main import main

    assert main(["register", str(run_dir), "--name", "acml-test", "--alias", "champion"]) == 0
    return {"name": "acml-test", "uri": f"sqlite:///{run_dir / 'mlflow.db'}"}


# Loads the registered model by alias in a new interpreter and writes its predictions as JSON.
_FRESH_LOAD = """
import json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model("models:/acml-test@champion")
out = model.predict(pd.DataFrame({"smiles": json.loads(sys.argv[1])}))
print("RESULT" + out.to_json(orient="records"))
"""


@pytest.mark.slow
def test_register_then_load_in_fresh_process(registered, run_dir, molecules):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=registered["uri"])
    version = client.get_model_version_by_alias("acml-test", "champion")
    tags = version.tags
    assert tags["acml.modalities"] == "image,smiles"
    assert tags["acml.data_sources"] == "chembl_approved_drugs(limit=150)"
    assert tags["metric.image_to_graph/pool_128/top10"] == "0.7500"
    assert tags["metric.image_to_graph/pool_all/top1"] == "0.1250"
    assert "mrr" not in " ".join(tags)

    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"]}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_LOAD, json.dumps(molecules)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=run_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.split("RESULT", 1)[1])
    model, cfg, _ = _loaded(run_dir)
    expected = embed_smiles(model, cfg, molecules)
    assert len(rows) == len(molecules)
    # to_dict, not iterrows: pandas would turn a row's None into NaN when its other cells are str.
    for row, exp in zip(rows, expected.to_dict("records")):
        assert (row[ERROR_COLUMN] is None) == (exp[ERROR_COLUMN] is None)
        for column in (GRAPH_COLUMN, *(modality_column(m) for m in MODALITIES)):
            if exp[column] is None:
                assert row[column] is None
            else:
                np.testing.assert_allclose(row[column], exp[column], rtol=1e-5, atol=1e-6)


HOSTILE_ROWS = ["C1" + "C" * 99996 + "C1", "c" * 100000, "*" * 100000, "C\x00CO"]  # crashed or hung serving


def test_pyfunc_guards_hostile_rows(run_dir):
    """The served model parses through the featuriser's guard: hostile rows get their error in
    milliseconds, the good rows of the same request their embeddings."""
    from acml_ray.registry.pyfunc import ACMLEmbedder

    model = ACMLEmbedder()
    model.model, model.cfg, model.extra = _loaded(run_dir)
    rows = ["CCO", *HOSTILE_ROWS, "c1ccccc1O"]
    start = time.thread_time()  # CPU time: wall time on a shared machine counts other jobs too
    out = model.predict(None, __import__("pandas").DataFrame({"smiles": rows}))
    assert time.thread_time() - start < 2.0
    errors = out[ERROR_COLUMN].tolist()
    assert errors[0] is None and errors[-1] is None
    assert [e.split(":")[0] for e in errors[1:-1]] == ["too long"] * 3 + ["invalid text encoding"]
    assert len(out.loc[0, GRAPH_COLUMN]) == 16 and out.loc[1, GRAPH_COLUMN] is None


def _post(base: str, smiles: list[str], timeout: float = 60) -> list[dict]:
    body = json.dumps({"dataframe_split": {"columns": ["smiles"], "data": [[s] for s in smiles]}}).encode()
    request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["predictions"]


def uvicorn_workers(pid: int) -> list:
    """The live worker processes under a `mlflow models serve` (spawned by uvicorn; not
    multiprocessing's resource tracker)."""
    import psutil

    workers = []
    for process in psutil.Process(pid).children(recursive=True):
        try:  # a process may exit between the listing and the look
            if "spawn_main" in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                workers.append(process)
        except psutil.Error:
            pass
    return workers


def _wait_until_up(base: str, server, log_path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert server.poll() is None, log_path.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "server not up: " + log_path.read_text()[-3000:]
        time.sleep(1)


def _all_workers_started(log_path: Path, pid: int, n: int) -> bool:
    """`n` live workers and every worker uvicorn started has finished its start-up."""
    text = log_path.read_text(errors="replace")
    started = text.count("Started server process")
    return len(uvicorn_workers(pid)) == n and started >= n and text.count("Application startup complete") >= started


@pytest.mark.slow
def test_mlflow_models_serve_answers_http(registered, run_dir, tmp_path, stop_process_group, free_ports):
    """`mlflow models serve` as docs/cluster.md runs it (2 workers, a request timeout): hostile
    rows come back as errors beside the others' embeddings, and a worker killed by a signal (as a
    native crash would) is replaced while the other keeps answering."""
    (port,) = free_ports(1)
    bin_dir = str(Path(sys.executable).parent)
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH (as when activated).
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered["uri"],
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        # As docs/cluster.md advises for busy nodes: a worker importing torch under load misses
        # uvicorn's 5 s health check and is killed and restarted, again and again.
        "UVICORN_TIMEOUT_WORKER_HEALTHCHECK": "60",
    }
    mlflow_bin = str(Path(bin_dir) / "mlflow")
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")
    # Own process group: the server forks workers, and the whole group must go at the end.
    server = subprocess.Popen(
        [
            mlflow_bin,
            "models",
            "serve",
            "-m",
            "models:/acml-test@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--workers",
            "2",
            "--timeout",
            "30",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, server, log_path, 240)
        good, bad = _post(base, ["CCO", "not a smiles"])
        assert len(good[GRAPH_COLUMN]) == 16 and len(good[modality_column("image")]) == 32
        assert good[ERROR_COLUMN] is None and good["canonical_smiles"] == "CCO"
        assert bad[GRAPH_COLUMN] is None and bad[ERROR_COLUMN]

        start = time.monotonic()
        answer = _post(base, ["CCO", *HOSTILE_ROWS, "c1ccccc1O"], timeout=30)
        assert time.monotonic() - start < 20  # the 100k ring alone held the only worker for 31 s
        assert [row[ERROR_COLUMN] is None for row in answer] == [True] + [False] * len(HOSTILE_ROWS) + [True]
        assert answer[1][ERROR_COLUMN] == "too long: 100000 characters > 2000"
        assert len(answer[-1][GRAPH_COLUMN]) == 16

        # A worker dies as a segfault would kill it: the server stays up, uvicorn replaces it.
        # First both workers must be serving (on a loaded machine one may still be starting).
        deadline = time.monotonic() + 240
        while not _all_workers_started(log_path, server.pid, 2):
            assert time.monotonic() < deadline, "workers not up: " + log_path.read_text()[-3000:]
            time.sleep(1)
        workers = uvicorn_workers(server.pid)
        assert len(workers) == 2, [p.cmdline() for p in workers]
        workers[0].send_signal(11)  # SIGSEGV
        workers[0].wait(timeout=30)
        assert _post(base, ["CCO"])[0]["canonical_smiles"] == "CCO"  # answered meanwhile
        deadline = time.monotonic() + 120
        while True:
            alive = {p.pid for p in uvicorn_workers(server.pid)}
            if len(alive) == 2 and workers[0].pid not in alive:
                break
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        for _ in range(4):  # both workers answer (requests spread over them)
            assert _post(base, ["c1ccccc1O"])[0][ERROR_COLUMN] is None
        assert server.poll() is None
    finally:
        stop_process_group(server, grace=20)
        log.close()
