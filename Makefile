# The front door: `make install`, `make test`, `make lint`, `make bench`, `make demo`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install test test-unit lint typecheck bench clean migrations

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installs the project editable with its dev extras (Airflow, test and lint tools).
install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

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
