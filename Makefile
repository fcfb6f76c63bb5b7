# The two commands of the README: `make up` (a local 3-broker cluster) and `make test`.
# `make up` takes BROKERS, DATA_DIR, BASE_PORT, RAFT_BASE_PORT, KAFKA_BASE_PORT and METRICS_BASE_PORT.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DATA_DIR ?= .semel-data
BROKERS ?= 3
BASE_PORT ?= 9092
KAFKA_BASE_PORT ?= 9192
# Empty: `semel cluster up`'s defaults (Raft on BASE_PORT+10000, no metrics endpoint).
RAFT_BASE_PORT ?=
METRICS_BASE_PORT ?=
UP_PORT_FLAGS := $(if $(RAFT_BASE_PORT),--raft-base-port $(RAFT_BASE_PORT)) \
	$(if $(METRICS_BASE_PORT),--metrics-base-port $(METRICS_BASE_PORT))

.PHONY: up test typecheck install install-test proto bench-storage soak clean

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
	$(BIN)/semel cluster up --brokers $(BROKERS) --data-dir $(DATA_DIR) --base-port $(BASE_PORT) \
		--kafka-base-port $(KAFKA_BASE_PORT) $(UP_PORT_FLAGS)

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

# Long runs (docs/chaos.md): every workload under every nemesis family, SOAK_DURATION_S each,
# fresh seeds; summary.md / summary.json in SOAK_OUT. After an interruption: make soak SOAK_RESUME=1.
SOAK_DURATION_S ?= 600
SOAK_WORKLOADS ?= all
SOAK_FAMILIES ?= all
SOAK_OUT ?= chaos-campaigns/soak
soak: install
	$(BIN)/semel chaos campaign --workloads $(SOAK_WORKLOADS) --families $(SOAK_FAMILIES) \
		--duration-s $(SOAK_DURATION_S) --out $(SOAK_OUT) $(if $(SOAK_RESUME),--resume)

clean:
	rm -rf $(DATA_DIR) .pytest_cache .mypy_cache
