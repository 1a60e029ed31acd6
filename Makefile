# The front door: `make install`, `make test`, `make lint`, `make bench`, `make demo`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install test test-unit lint typecheck bench clean migrations demo up down

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installs the project editable with its dev extras (Airflow, test and lint tools), and gitlab-ci-local
# (pinned in gitlab-ci/tools/package-lock.json) to run the CI templates locally; skipped without npm.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@if ! command -v npm >/dev/null 2>&1; then \
	  echo "npm not found: skipping gitlab-ci-local (the CI template tests will be skipped)"; \
	elif [ ! -x gitlab-ci/tools/node_modules/.bin/gitlab-ci-local ] || \
	     [ gitlab-ci/tools/package-lock.json -nt gitlab-ci/tools/node_modules/.package-lock.json ]; then \
	  npm ci --prefix gitlab-ci/tools --no-audit --no-fund --loglevel=error; \
	fi

# The README's test command: every test, unit and integration (real PostgreSQL, MLflow, S3 server).
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

lint: install
	$(BIN)/ruff check provenance controller plugins stages dags tests bench
	$(BIN)/ruff format --check provenance controller plugins stages dags tests bench
	$(BIN)/mypy

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mlprov .pytest_cache .mypy_cache .ruff_cache

# Regenerate the initial Alembic revision from controller/store/models.py (no release yet: one revision).
migrations: install
	$(BIN)/python -m controller.store.migrations.regenerate

# The UIs on 127.0.0.1: controller, Airflow (api-server, scheduler, dag-processor), MLflow; `make down` stops them.
# Ports: MLPROV_UP_CONTROLLER_PORT (8080), MLPROV_UP_AIRFLOW_PORT (8081), MLPROV_UP_MLFLOW_PORT (5000).
up: install
	$(BIN)/python -m controller.stack up

down:
	$(BIN)/python -m controller.stack down

# The main job, one command: keys, controller, demo_lifecycle through Airflow, lineage, verification,
# MLflow run IDs (controller/demo.py). Results stay in .mlprov/; DEMO_CONF overrides DAG params (JSON).
DEMO_CONF ?= {}
demo: install
	$(BIN)/python -m controller.demo --home .mlprov --conf '$(DEMO_CONF)'
