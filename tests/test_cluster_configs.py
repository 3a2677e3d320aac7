"""Cluster configs and docs/cluster.md: every YAML parses, and every entry point, packaged file,
`acml` subcommand and config key they name exists (a typo must fail here, not on a GPU bill)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from acml_ray.cli.common import parse_overrides
from acml_ray.cli.main import COMMANDS
from acml_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
DOC = ROOT / "docs" / "cluster.md"
YAMLS = sorted(CLUSTER.glob("*.yaml"))


def _strings(node) -> Iterator[str]:
    """Every string value in a parsed YAML tree (comments are gone, so prose cannot match)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _doc_commands() -> list[str]:
    """Shell commands of the fenced bash blocks of docs/cluster.md, continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    return [
        line.strip()
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def _all_commands() -> list[str]:
    commands = _doc_commands()
    for path in YAMLS:
        for doc in yaml.safe_load_all(path.read_text()):
            commands += [s for s in _strings(doc) if "python " in s or "ray " in s or "acml " in s]
    return commands


def _split(command: str) -> list[list[str]]:
    """One token list per program call: shell-split (quotes honoured, comments dropped), then cut
    at ; && || | ( )."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    calls: list[list[str]] = [[]]
    for token in lexer:
        if set(token) <= set(";&|()"):
            calls.append([])
        else:
            calls[-1].append(token)
    return [c for c in calls if c]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_expected_files_exist():
    for name in ("aws-gpu.yaml", "kuberay.yaml", "runtime_env.yaml", "pipeline.yaml", "Dockerfile"):
        assert (CLUSTER / name).is_file(), name
    assert DOC.is_file() and "# Run on a cloud GPU cluster" in DOC.read_text()


def test_aws_launcher_config():
    cfg = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and cfg["provider"]["type"] == "aws"
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert any(
        t["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5"))
        and t["max_workers"] > 0
        and t["min_workers"] < t["max_workers"]
        for t in gpu
    ), "an autoscaling GPU group"
    for t in types.values():  # S3 through an instance profile on every node, no keys
        assert "instance-profile/" in t["node_config"]["IamInstanceProfile"]["Arn"]
    setup = " ".join(cfg["setup_commands"])
    assert "scripts/bootstrap.sh" in setup and "download.pytorch.org/whl/cu" in setup
    assert (ROOT / "scripts" / "bootstrap.sh").is_file()
    assert set(cfg["file_mounts"].values()) == {"."}
    # Python >= 3.11 on every node (Ray's py311 image) on a driver + container-toolkit host AMI.
    assert "py311" in cfg["docker"]["image"] and "2.60.0" in cfg["docker"]["image"]
    assert all(t["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/") for t in types.values())


def test_docker_build_context_leaves_out_host_environments():
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "runs", ".git"} <= ignored


def test_kuberay_manifest():
    docs = {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text())}
    assert {"RayCluster", "RayJob", "ServiceAccount"} <= set(docs)
    cluster, job = docs["RayCluster"], docs["RayJob"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    workers = cluster["spec"]["workerGroupSpecs"]
    assert cluster["spec"]["enableInTreeAutoscaling"] and any(
        w["maxReplicas"] > w["minReplicas"]
        and "nvidia.com/gpu" in w["template"]["spec"]["containers"][0]["resources"]["limits"]
        for w in workers
    )
    account = docs["ServiceAccount"]["metadata"]["name"]
    assert cluster["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == account
    assert "jobs/pipeline.py" in job["spec"]["entrypoint"]
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])


def test_runtime_env_keys():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {
        "working_dir",
        "excludes",
        "env_vars",
        "py_modules",
        "pip",
        "conda",
        "uv",
        "py_executable",
        "config",
    }
    assert {".venv/", "runs/"} <= set(env["excludes"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray rejects non-strings
    # No credential may be shipped in a runtime env.
    assert not any("AWS_SECRET" in k or "AWS_ACCESS" in k for k in env["env_vars"])


def test_referenced_entrypoints_subcommands_and_config_keys_exist():
    checked = {"jobs": 0, "configs": 0, "sets": 0, "acml": 0}
    for command in _all_commands():
        for tokens in _split(command):
            for token in tokens:
                if re.fullmatch(r"jobs/\w+\.py", token):
                    assert (ROOT / token).is_file(), f"{token} (in {command!r})"
                    checked["jobs"] += 1
                elif token.startswith("cluster/") or token.startswith("scripts/"):
                    assert (ROOT / token).exists(), f"{token} (in {command!r})"
            if "-m" in tokens and tokens[0].endswith("python"):
                module = tokens[tokens.index("-m") + 1]
                assert importlib.util.find_spec(module), module
            if Path(tokens[0]).name == "acml":
                assert tokens[1] in COMMANDS, f"acml {tokens[1]} (in {command!r})"
                checked["acml"] += 1
            config = None
            if "--config" in tokens:
                config = ROOT / tokens[tokens.index("--config") + 1]
                checked["configs"] += 1
            sets = [tokens[i + 1] for i, t in enumerate(tokens) if t == "--set"]
            checked["sets"] += len(sets)
            if config is not None or sets:
                load_config(config, parse_overrides(sets))  # unknown keys / bad values raise
    assert checked["jobs"] >= 5 and checked["configs"] >= 3 and checked["sets"] >= 4, checked


def test_pipeline_config_is_all_object_storage():
    cfg = load_config(CLUSTER / "pipeline.yaml")
    for location in (
        cfg.embed.input,
        cfg.embed.output,
        cfg.cache_dir,
        cfg.train.storage_path,
        cfg.tracking.artifact_location,
    ):
        assert location and location.startswith("s3://"), location
    assert cfg.train.use_gpu and cfg.embed.num_gpus_per_actor > 0
