# The two commands of the README: `make up` (a local 3-broker cluster) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DATA_DIR ?= .semel-data
BASE_PORT ?= 9092
KAFKA_BASE_PORT ?= 9192

.PHONY: up test typecheck install install-test proto bench-storage clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

up: install
	$(BIN)/semel cluster up --brokers 3 --data-dir $(DATA_DIR) --base-port $(BASE_PORT) --kafka-base-port $(KAFKA_BASE_PORT)

test: install-test
	$(BIN)/python -m pytest

# mypy under the real `semel.*` names (also run by `make test`, tests/test_types.py).
typecheck: install-test
	$(BIN)/python tests/typecheck.py

# Regenerate the committed protobuf/gRPC code from proto/*.proto (tests fail when it is stale).
proto: install-test
	$(BIN)/python proto/generate.py

bench-storage: install
	$(BIN)/semel bench storage

clean:
	rm -rf $(DATA_DIR) .pytest_cache .mypy_cache
