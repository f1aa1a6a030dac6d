# Switchboard: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup run demo test unit lint format bench eval-sentiment train-sentiment asyncapi manifests lock clean

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

test: $(STAMP) lint manifests ## Lint, type-check, validate the manifests and run every test
	$(BIN)/pytest -q -p no:cacheprovider

unit: $(STAMP) ## Unit tests only
	$(BIN)/pytest -q tests/unit

bench: $(STAMP) ## Benchmarks on the embedded stack, each beside its baseline
	$(BIN)/python -m tests.bench.ingest_bench

eval-sentiment: $(STAMP) ## Score the sentiment analyzer on held-out tweets (macro recall, speed)
	$(BIN)/python -m services.enrich.eval_sentiment

train-sentiment: $(STAMP) ## Re-train the default sentiment model from ../shared/data
	$(BIN)/python -m services.enrich.train_sentiment

asyncapi: $(STAMP) ## Regenerate docs/asyncapi.json from the event models
	$(BIN)/python -m shared.asyncapi > docs/asyncapi.json

manifests: $(STAMP) ## Render every deploy/ overlay and validate it against the Kubernetes schemas
	@mkdir -p build/manifests
	@for overlay in deploy/overlays/*/; do \
		name=$$(basename $$overlay); \
		$(BIN)/kubectl kustomize $$overlay > build/manifests/$$name.yaml || exit 1; \
		$(BIN)/kubernetes-validate --strict --quiet build/manifests/$$name.yaml || exit 1; \
		echo "deploy/overlays/$$name: rendered to build/manifests/$$name.yaml and valid"; \
	done

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
