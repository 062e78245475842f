# evalstack — `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: help install repro test test-fast bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned dependencies (about 2 minutes)

repro: install ## install, then run the whole pipeline on the embedded dataset
	dvc repro
	dvc metrics show

test: install ## install, then run the whole test suite (slow end-to-end tests included)
	$(PY) -m pytest -q

test-fast: install ## unit tests only
	$(PY) -m pytest -q -m "not slow"

bench: install ## benchmarks vs the naive pipeline → bench/RESULTS.md (≤ 30 min; BENCH_SCALE=small for a quick check)
	PYTHONPATH=$(CURDIR)/src $(PY) bench/run.py

clean: ## remove pipeline outputs (the DVC cache stays)
	rm -rf data metrics plots models/*.tflite models/*.pt2
