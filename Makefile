# One set of commands for humans and CI. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test pytest chaos lint format typecheck migrate bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "tgflow needs Python >= 3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install tgflow with its dev tools

run: $(STAMP) ## Start the whole system (embedded Postgres and Valkey unless URLs are set)
	$(BIN)/tgflow up

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP) ## mypy --strict on shared/ and services/
	$(BIN)/mypy

pytest: $(STAMP) ## The test suite alone (real Postgres and Redis at the TGFLOW_TEST_* URLs)
	$(BIN)/pytest -q

test: lint typecheck pytest ## Lint, typecheck and the whole test suite

chaos: $(STAMP) ## The long chaos run: 3 workers, 50 accounts, 3,000 sends, kills and a Redis restart
	TGFLOW_CHAOS_JOBS=3000 $(BIN)/pytest -q tests/e2e/test_chaos.py

migrate: $(STAMP) ## Apply database migrations to TGFLOW_DATABASE_URL
	$(BIN)/tgflow migrate

bench: $(STAMP) ## Pipeline benchmark against bare ARQ (see docs/benchmarks.md)
	$(BIN)/python bench/pipeline.py

clean: ## Remove the virtualenv, caches and the embedded data directory
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .tgflow
