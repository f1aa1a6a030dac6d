# Switchboard: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup run demo test unit chaos lint format bench eval-sentiment train-sentiment asyncapi manifests checkov lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-virtualenv -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv with the pinned dependencies

run: $(STAMP) ## Start broker, store, the four services and the sample desk (Ctrl-C stops all)
	$(BIN)/switchboard up

demo: $(STAMP) ## Register a customer, an agent, a subscription and post a few mentions
	$(BIN)/switchboard demo

test: $(STAMP) lint manifests ## Lint, type-check, validate the manifests and run the tests
	$(BIN)/pytest -q -p no:cacheprovider

unit: $(STAMP) ## Unit tests only
	$(BIN)/pytest -q tests/unit

chaos: $(STAMP) ## The fault tests with ten times the interactions, broker loss included
	SWITCHBOARD_FAULT_SCALE=10 $(BIN)/pytest -q -p no:cacheprovider tests/faults

bench: $(STAMP) ## End to end beside a bare-Kafka baseline (bench/results/), then ingest alone
	$(BIN)/python -m tests.bench.e2e_bench
	$(BIN)/python -m tests.bench.ingest_bench

eval-sentiment: $(STAMP) ## Score the sentiment analyzer on held-out tweets (macro recall, speed)
	$(BIN)/python -m services.enrich.eval_sentiment

train-sentiment: $(STAMP) ## Re-train the default sentiment model from ../shared/data
	$(BIN)/python -m services.enrich.train_sentiment

asyncapi: $(STAMP) ## Regenerate docs/asyncapi.json from the event models
	$(BIN)/python -m shared.asyncapi > docs/asyncapi.json

CHECKOV_VENV := build/.venv-checkov

# checkov pins many libraries of its own: it lives in its own virtualenv, at the versions
# in deploy/checkov/requirements.lock.
$(CHECKOV_VENV)/.installed: deploy/checkov/requirements.lock
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet --require-virtualenv -r deploy/checkov/requirements.lock
	@touch $@

checkov: $(CHECKOV_VENV)/.installed ## Install checkov (security linter for the manifests) in build/.venv-checkov

manifests: $(STAMP) $(CHECKOV_VENV)/.installed ## Render every deploy/ overlay; validate it (Kubernetes and CRD schemas) and lint it (checkov)
	@rm -rf build/manifests build/manifests-builtin && mkdir -p build/manifests build/manifests-builtin
	@for overlay in deploy/overlays/*/; do \
		name=$$(basename $$overlay); \
		$(BIN)/kubectl kustomize $$overlay > build/manifests/$$name.yaml || exit 1; \
		$(BIN)/python -m tests.deploy.manifests split build/manifests/$$name.yaml build/manifests-builtin/$$name.yaml || exit 1; \
		$(BIN)/kubernetes-validate --strict --quiet build/manifests-builtin/$$name.yaml || exit 1; \
		echo "deploy/overlays/$$name: rendered to build/manifests/$$name.yaml, valid against the Kubernetes and CRD schemas"; \
	done
	@$(CHECKOV_VENV)/bin/checkov --config-file deploy/checkov/config.yaml -d build/manifests > build/checkov.txt 2>&1 \
		|| { cat build/checkov.txt; exit 1; }
	@grep -h "^Passed checks" build/checkov.txt | sed 's/^/checkov: /'

lint: $(STAMP) ## ruff and mypy (strict)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock: ## Re-resolve the dependencies from pyproject.toml into requirements.lock
	rm -rf /tmp/switchboard-lock && $(PYTHON) -m venv /tmp/switchboard-lock
	/tmp/switchboard-lock/bin/pip install --quiet --upgrade pip
	/tmp/switchboard-lock/bin/pip install --quiet ".[dev]"
	/tmp/switchboard-lock/bin/pip freeze --exclude switchboard > requirements.lock

clean: ## Stop nothing, delete .venv and all local data under .switchboard/
	rm -rf $(VENV) .switchboard .mypy_cache .ruff_cache .pytest_cache *.egg-info
