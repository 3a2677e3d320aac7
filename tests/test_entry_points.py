"""Every entry point works from a fresh process with none of our environment variables set: the
README's Python API example, the CLI, each `jobs/` script and each `benchmarks/` script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def clean_env(tmp_path: Path) -> dict[str, str]:
    """What a new shell on a new machine has: no RAY_*, MLFLOW_*, AWS_*, HF_* or GLOO_* settings."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


SCRIPTS = sorted(str(p.relative_to(ROOT)) for folder in ("jobs", "benchmarks") for p in (ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_job_and_benchmark_scripts_start_in_a_clean_environment(script, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout


def test_cli_starts_in_a_clean_environment(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "acml_ray.cli.main", "--help"],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for command in ("embed", "train", "evaluate", "register", "tune", "demo"):
        assert command in proc.stdout


def test_public_api_names_resolve_lazily_and_are_documented(tmp_path):
    code = (
        "import sys, acml_ray as a\n"
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules, 'import acml_ray stays cheap'\n"
        "import acml_ray.evaluate.suite, acml_ray.search.query  # subpackages must not shadow API names\n"
        "missing = [n for n in a.__all__ if n != '__version__' and not (getattr(a, n).__doc__ or '').strip()]\n"
        "modules = [n for n in a.__all__ if type(getattr(a, n)).__name__ == 'module']\n"
        "assert not modules, modules\n"
        "assert not missing, missing\n"
        "print(len(a.__all__))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) >= 15


@pytest.mark.slow
def test_init_ray_in_a_fresh_process(tmp_path):
    # Regression: the environment defaults used to set RAY_AUTH_MODE after Ray was imported, so
    # the driver and the GCS it started disagreed about token auth (AuthenticationError).
    for first in ("", "import ray\n"):  # whether or not the user imported Ray first
        code = first + (
            "import acml_ray as a, ray\na.init_ray(num_cpus=1)\n"
            "assert ray.get(ray.put(41)) + 1 == 42\nray.shutdown()\nprint('ok')\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=clean_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.slow
def test_workers_reach_their_own_ray_state_api_beside_another_local_ray(tmp_path):
    """Two local Rays on one machine (two jobs, or a job beside the tests): Ray Train's
    placement-group cleaner looks the State API up by "auto", which is ambiguous then, so it died
    with "Found multiple active Ray instances" and never freed a dead trial's placement group.
    `init_ray` names its own dashboard to its workers."""
    env = clean_env(tmp_path)
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import acml_ray as a, sys\na.init_ray(num_cpus=1)\nprint('up', flush=True)\nsys.stdin.read()\n",
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "up"
        code = (
            "import acml_ray as a, ray\na.init_ray(num_cpus=1)\n"
            "@ray.remote\ndef probe():\n    from ray.util.state import list_nodes\n"
            "    return [n.node_id for n in list_nodes()]\n"
            "print(ray.get(probe.remote()) == [ray.get_runtime_context().get_node_id()])\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0 and proc.stdout.split()[-1] == "True", proc.stderr[-3000:]
    finally:
        assert other.stdin is not None
        other.stdin.close()  # its driver exits and shuts its Ray down
        other.wait(timeout=120)


@pytest.mark.slow
def test_readme_python_example_runs_in_a_clean_environment(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", readme_python_example()],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "models:/my-encoder@champion"
    top10 = float(lines[-2])
    assert 0.0 <= top10 <= 1.0
    assert (tmp_path / "runs/notebook/evaluation/report.json").is_file()
    assert (tmp_path / "runs/notebook/model/model.pt").is_file()
