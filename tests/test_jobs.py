"""Ray job entry points: entrypoints exist and parse their arguments, and (slow) a real
`ray start --head` on loopback runs `ray job submit --working-dir . -- python jobs/...`."""

from __future__ import annotations

import ast
import itertools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("embed", "train", "tune", "evaluate", "register", "pipeline", "study")


# What a thin entry point may contain: imports, its docstring, one argument-parsing `main` and
# the `__main__` guard. Anything else is library logic that belongs in acml_ray/.
THIN_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.If, ast.Expr)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_entrypoint_exists_and_is_thin(stage):
    path = ROOT / "jobs" / f"{stage}.py"
    assert path.is_file(), f"jobs/{stage}.py missing"
    tree = ast.parse(path.read_text())
    docstring = ast.get_docstring(tree) or ""
    assert "ray job submit" in docstring, "the docstring shows how to submit it"
    extra = [type(node).__name__ for node in tree.body if not isinstance(node, THIN_NODES)]
    assert not extra, f"jobs/{stage}.py holds more than an entry point: {extra}"
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert [f.name for f in functions] in ([], ["main"]), "only a `main` that parses arguments"
    for function in functions:  # argument parsing and one library call, not a pipeline
        assert len(function.body) <= 15, f"jobs/{stage}.py main() has {len(function.body)} statements"
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert any(name and name.startswith("acml_ray.") for name in imported), "it calls the library"
    guards = [node for node in tree.body if isinstance(node, ast.If)]
    assert len(guards) == 1 and ast.unparse(guards[0].test) == "__name__ == '__main__'"


def test_pipeline_and_register_help():
    # --help parses the arguments without starting Ray (cheap check that the chaining imports work).
    for script, option in (
        ("jobs/pipeline.py", "--name"),
        ("jobs/register.py", "--name"),
        ("jobs/study.py", "--stages"),
    ):
        proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert option in proc.stdout


@pytest.fixture
def ray_head(tmp_path, stop_process_group, free_ports):
    """A private single-node Ray cluster on loopback with token auth and its own temp dir.

    Started with ``--block`` in a new session and stopped by killing that process group:
    `ray stop` would stop every Ray process of this user, other tests' clusters included.
    """
    ray_bin = str(Path(sys.executable).parent / "ray")
    gcs, dash, client, agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = free_ports(9)
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # Job drivers find `uvicorn`/`ray` of the venv, as with an activated venv.
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths are length-limited
    log = open(tmp_path / "ray_start.log", "wb")
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={rt_env}",
            f"--node-manager-port={node_mgr}",
            f"--object-manager-port={obj_mgr}",
            "--num-cpus=2",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None, (tmp_path / "ray_start.log").read_text()[-3000:]
            request = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=5):
                    break
            except urllib.error.HTTPError:
                break  # the server answers: up (auth is checked by the real client below)
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "ray_start.log").read_text()[-3000:]
            time.sleep(1)
        # The dashboard answers before the node's agent has registered, and a submission then
        # waits only 10 s for it: ready means a trivial job ran.
        for attempt in itertools.count():
            try:
                probe = subprocess.run(
                    [
                        ray_bin,
                        "job",
                        "submit",
                        "--address",
                        address,
                        "--submission-id",
                        f"ready-{attempt}",
                        "--",
                        "true",
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                if probe.returncode == 0:
                    break
                why = probe.stdout[-2000:] + probe.stderr[-2000:]
            except subprocess.TimeoutExpired:
                why = "a trivial job did not finish in 120 s"
            assert time.monotonic() < deadline, why
            time.sleep(2)
        yield {"address": address, "env": env, "ray": ray_bin}
    finally:
        stop_process_group(head, grace=10)  # `ray start --block` outwaits 30 s on SIGTERM; the group is killed after
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job(ray_head: dict, submission_id: str, *entrypoint: str, timeout: float = 480) -> str:
    """Submit with the working dir uploaded, wait, assert the job SUCCEEDED, return its logs.

    `ray job submit` (without --no-wait) tails the job's whole log until the job has ended, then
    asks the job API for its status: its own output holds both, so no `ray job status`/`ray job
    logs` processes (each a Ray import on a busy machine) are needed after it.
    """
    submit = subprocess.run(
        [
            ray_head["ray"],
            "job",
            "submit",
            "--address",
            ray_head["address"],
            "--submission-id",
            submission_id,
            "--working-dir",
            ".",
            "--",
            *entrypoint,
        ],
        cwd=ROOT,
        env=ray_head["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    # Ray 2.60 prints "Job 'ID' succeeded" when the job API reports SUCCEEDED for the finished job
    # (exit status 0 alone would also pass a STOPPED job).
    assert f"Job '{submission_id}' succeeded" in submit.stdout, (submit.stdout[-4000:], submit.stderr[-3000:])
    assert submit.returncode == 0
    return submit.stdout


@pytest.mark.slow
def test_ray_job_submit_demo_then_register(ray_head, tmp_path):
    out = tmp_path / "demo"
    logs = _job(
        ray_head,
        f"acml-demo-{secrets.token_hex(3)}",
        "python",
        "jobs/demo.py",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=32",
        "--set",
        "modalities=[{name: ecfp}]",  # cheap frozen "encoder": no image/text model
        "--set",
        "data.sources=[{name: chembl_approved_drugs, limit: 150}]",
    )
    summary = out / "summary.json"
    assert f"summary: {summary.resolve()}" in logs and summary.is_file()
    # The job ran the venv's interpreter from the uploaded working dir (not the repo in place).
    assert (out / "model" / "model.pt").is_file()

    logs = _job(
        ray_head,
        f"acml-register-{secrets.token_hex(3)}",
        "python",
        "jobs/register.py",
        str(out),
        "--name",
        "acml-job-test",
        "--alias",
        "champion",
    )
    assert "model uri: models:/acml-job-test@champion" in logs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    version = client.get_model_version_by_alias("acml-job-test", "champion")
    assert version.tags["acml.modalities"] == "ecfp"
    assert any(k.startswith("metric.ecfp_to_graph/") for k in version.tags)


@pytest.mark.slow
def test_pipeline_on_object_storage_keeps_secrets_out(s3_server, chembl_drugs, tmp_path):
    """embed -> train -> evaluate -> register with input, cache, tables, checkpoints and MLflow
    artifacts on s3:// (loopback SeaweedFS); the secret key appears in no output, config or store."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket, secret, client = s3_server["bucket"], s3_server["secret_key"], s3_server["client"]
    prefix = f"e2e-{secrets.token_hex(3)}"
    s3 = f"s3://{bucket}/{prefix}"
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"smiles": chembl_drugs["smiles"].head(160).tolist()}), sink)
    client.put_object(Bucket=bucket, Key=f"{prefix}/molecules/part-0.parquet", Body=sink.getvalue().to_pybytes())

    out = tmp_path / "out"
    env = {
        **os.environ,
        **s3_server["env"],
        "MLFLOW_S3_ENDPOINT_URL": s3_server["endpoint"],  # MLflow's boto3 artifact client
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    sets = [
        f"embed.input={s3}/molecules",
        f"embed.output={s3}/embedded",
        f"cache_dir={s3}/cache",
        f"train.storage_path={s3}/ray_results",
        f"tracking.artifact_location={s3}/mlartifacts",
        "modalities=[{name: ecfp}]",
        "train.epochs=1",
        "train.batch_size=32",
        "eval.sections=[retrieval]",
        "embed.concurrency=1",
        "embed.num_cpus_per_actor=0.5",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "jobs/pipeline.py",
            "--out",
            str(out),
            "--quiet",
            "--name",
            "acml-s3",
            "--alias",
            "champion",
            *[arg for s in sets for arg in ("--set", s)],
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )  # < pytest-timeout 900
    output = proc.stdout + proc.stderr
    assert secret not in output
    assert proc.returncode == 0, output[-5000:]
    assert "model uri: models:/acml-s3@champion" in proc.stdout

    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    for part in ("embedded/train/", "embedded/val/", "cache/", "ray_results/", "mlartifacts/"):
        assert any(k.startswith(f"{prefix}/{part}") for k in keys), (part, keys[:20])
    assert any("/registry/" in k and k.endswith("model.pt") for k in keys)  # registered weights in S3
    # No credential in the MLflow store (params, tags, config.yaml artifact) or in anything written.
    assert secret.encode() not in (out / "mlflow.db").read_bytes()
    for key in keys:
        if key.endswith((".yaml", ".json", ".txt", ".md", "MLmodel")):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert secret.encode() not in body, key
    for path in out.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert secret.encode() not in path.read_bytes(), path

    from mlflow.tracking import MlflowClient

    version = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}").get_model_version_by_alias(
        "acml-s3", "champion"
    )
    assert version.source.startswith(("s3://", "models:/"))
    assert version.tags["acml.embed_input"] == f"{s3}/molecules"
