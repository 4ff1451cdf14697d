# Two commands matter: `make dev` and `make test`. Each creates .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: dev test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(STAMP)

dev: $(STAMP)
	$(BIN)/leadflow dev --demo

# LEADFLOW_TEST_BROKER=kafka|tansu|both (default both: every test on Apache Kafka, plus
# the Tansu smoke set).
test: $(TEST_STAMP)
	@scripts/ensure-chromium
	@scripts/ensure-java $(BIN)/python
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/history.py
	$(BIN)/python bench/stream.py --broker-kind kafka
	$(BIN)/python bench/stream.py --broker-kind tansu

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
