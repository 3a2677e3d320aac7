"""Process environment defaults for every entry point (CLI, jobs, tests, Ray workers), and Ray
start-up (`init_ray`).

Two groups, because what is right on a laptop or CI box is wrong on a cluster:
- `QUIET_ENV` (always): no telemetry, no hub downloads, no progress-bar spam in logs;
- `LOOPBACK_ENV` (only when no cluster is named in ``RAY_ADDRESS``): keep gloo and Ray on
  127.0.0.1 and stop boto/pyarrow probing the EC2 metadata address. On a cluster these would
  break multi-node rendezvous and IAM-role credentials, so they are never applied there.
Values already in the environment always win.

Ray reads several of these when it is *imported* (`ray_constants`, `ray.data.context`, its
auth config), so setting them later in the same process is too late, and worse for
``RAY_AUTH_MODE``: a driver that imported Ray with the mode unset and then spawns a GCS with
``RAY_AUTH_MODE=token`` cannot authenticate to it. Importing `acml_ray` therefore applies the
defaults at once (`apply_defaults`, setdefault only, cluster-safe), and `apply_defaults` never
sets the auth mode in a process that has already imported Ray: there Ray's own default (token
auth for a new local cluster) stays in force for the driver and the servers it starts alike.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

QUIET_ENV: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # Ray Train V2 routes print() through its logger as well, so every line showed up twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

LOOPBACK_ENV: dict[str, str] = {
    "GLOO_SOCKET_IFNAME": "lo",
    "AWS_EC2_METADATA_DISABLED": "true",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Ray >= 2.60 turns token auth on for a new local cluster and warns so at every start;
    # naming the mode keeps the protection and drops the warning.
    "RAY_AUTH_MODE": "token",
}


def is_local() -> bool:
    """True unless a Ray cluster address is given (as `ray job submit` does)."""
    return not os.environ.get("RAY_ADDRESS")


def default_env(local: bool | None = None) -> dict[str, str]:
    """The defaults that apply here, with values already set in the environment winning."""
    local = is_local() if local is None else local
    defaults = {**QUIET_ENV, **(LOOPBACK_ENV if local else {})}
    return {key: os.environ.get(key, value) for key, value in defaults.items()}


# Read by Ray at import time and fixed for the process from then on (see the module docstring).
AUTH_MODE = "RAY_AUTH_MODE"


def apply_defaults(local: bool | None = None) -> None:
    """Set the defaults in this process (existing values are kept).

    The auth mode is left alone once Ray is imported: the driver's Ray has fixed its mode
    already, and servers it starts must agree with it.
    """
    ray_imported = "ray" in sys.modules
    for key, value in default_env(local).items():
        if key == AUTH_MODE and ray_imported and key not in os.environ:
            continue
        os.environ.setdefault(key, value)


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it; another process could take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_ray(num_cpus: int | None = None, use_gpu: bool = False, object_store_mib: int | None = None) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``), or start a
    local Ray on loopback; workers get the environment defaults (caller's values win).
    `object_store_mib` caps a local Ray's shared-memory object store (default: Ray's, 30% of RAM).

    The one place acml-ray starts or joins Ray (CLI, jobs, pipelines, benchmarks, tests)."""
    import ray  # here, not at module level: the defaults above must be set before Ray is imported

    if ray.is_initialized():
        return
    local = is_local()
    apply_defaults(local)
    env = default_env(local)
    if not use_gpu:
        env["DS_ACCELERATOR"] = os.environ.get("DS_ACCELERATOR", "cpu")
    if not local:
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": env})
        return
    # The dashboard (on loopback) serves Ray's State API, which Ray Train's placement-group
    # cleaner polls: without it the cleaner warns every few seconds and cannot free the
    # placement group of a trial that dies. The cleaner finds the API by "auto", which fails
    # once a second local Ray runs (two jobs on one machine); naming this Ray's dashboard in
    # RAY_API_SERVER_ADDRESS for its workers keeps the cleaner on its own cluster.
    dashboard_port = None
    if "RAY_API_SERVER_ADDRESS" not in os.environ:
        dashboard_port = free_port()
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    ray.init(
        num_cpus=num_cpus,
        object_store_memory=object_store_mib * 2**20 if object_store_mib else None,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env},
        configure_logging=True,
        logging_level=logging.WARNING,
    )
