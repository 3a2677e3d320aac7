# acml-ray developer entry points. Every target sets up (or reuses) .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export AWS_EC2_METADATA_DISABLED := true
export GLOO_SOCKET_IFNAME := lo
export HF_HUB_OFFLINE := 1

.PHONY: setup setup-test demo lint test test-fast bench

LINTED := acml_ray tests benchmarks jobs data scripts

setup:
	scripts/bootstrap.sh

setup-test:
	scripts/bootstrap.sh --test

demo: setup  ## the whole pipeline on shipped real molecules -> runs/demo/summary.json
	$(VENV)/bin/acml demo --out runs/demo

lint: setup-test  ## ruff (lint + format), mypy on acml_ray/, the import-layer contract
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint  ## lint, then every test, slow ones included (what CI runs)
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

test-fast: setup-test  ## skip tests marked slow (Ray/DeepSpeed end-to-end)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: setup-test  ## speed goals (`ratio: X.XX` lines) and the retrieval time/memory figure
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
