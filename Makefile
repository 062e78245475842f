# evalstack — `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: differential help install install-detection system-deps repro repro-detection report plots test test-fast bench bench-scale bench-detection bench-detection-tv clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	# frost's photographs (Apache-2.0), without the package's dependencies: its opencv-python would clash with headless
	$(PY) -m pip install --quiet --no-deps imagecorruptions==1.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	# the reference the PAD feature tests compare with; --no-deps: its declared deps pull full tensorflow and IPython
	$(PY) -m pip install --quiet --no-deps pad-analytics==0.2.2
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned dependencies (about 2 minutes)

# torchvision needs the torch it was built against: the detection extra swaps the 2.13.0 CPU wheel for the
# torch 2.14.1 + torchvision 0.29.1 pair (a CUDA build that runs on the CPU; +3.9 GB, about 45 s more).
$(VENV)/.installed-detection: $(VENV)/.installed requirements-detection.lock
	$(PY) -m pip install --quiet --no-deps -r requirements-detection.lock
	$(PY) -m pip uninstall --quiet --yes triton 2>/dev/null || true
	touch $@

install-detection: $(VENV)/.installed-detection ## add torchvision (bring-your-own detectors) to .venv

# Debian programs the end-to-end tests drive: sshd serves the SSH remote, chromium renders the plots page.
SYSTEM_PROGRAMS := /usr/sbin/sshd /usr/bin/ssh-keygen /usr/bin/chromium
SYSTEM_PACKAGES := openssh-server openssh-client chromium

system-deps: ## install the Debian packages the e2e tests use (apt-get, only if a program is missing)
	@missing=; for program in $(SYSTEM_PROGRAMS); do [ -x $$program ] || missing="$$missing $$program"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing:$$missing; as root: apt-get install $(SYSTEM_PACKAGES)"; exit 0; fi; \
	echo "installing $(SYSTEM_PACKAGES) (missing:$$missing)"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES)

repro: install ## install, then run the classification pipeline (detection's in a detection-only project), write the report, print the summary
	@if [ -f dvc.yaml ]; then dvc repro; else echo "no classification profile here: detection/"; cd detection && dvc repro; fi \
		|| { echo; echo "dvc repro failed; evalstack doctor:"; evalstack doctor; exit 1; }
	@evalstack report >/dev/null
	@echo; evalstack summary

repro-detection: install-detection ## install, then run the detection profile (its own DVC project in detection/)
	cd detection && dvc repro || { echo; echo "dvc repro failed; evalstack doctor:"; evalstack doctor; exit 1; }
	@evalstack report >/dev/null
	@echo; evalstack summary

report: install ## write reports/index.html + reports/index.md from what the last runs produced, print the summary
	@evalstack report
	@echo; evalstack summary

plots: install ## render `dvc plots show` offline (vega inlined) into dvc_plots/index.html
	evalstack plots-template
	dvc plots show

# Two workers, one test file each at a time (module fixtures build a project once per file): the suite
# waits on subprocesses, fsync and servers as much as on the CPU. Files go out in collection order
# (tests/conftest.py puts the longest first); xdist's own order, most tests first, left the 10-minute
# one-test differential file for last, alone.
TEST_WORKERS ?= auto
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: install-detection system-deps ## install, then run the whole test suite (slow end-to-end tests included)
	$(PY) -m pytest -q $(XDIST)

test-fast: install-detection ## unit tests only
	$(PY) -m pytest -q -m "not slow" $(XDIST)

differential: install-detection ## warm rebuild == build from nothing after every kind of edit, larger scale → bench/out/differential.json
	EVALSTACK_DIFFERENTIAL=large $(PY) -m pytest -q -s -p no:cacheprovider tests/test_e2e_differential.py

bench: install ## benchmarks vs the naive pipeline → bench/RESULTS.md (P1–P10; BENCH_SCALE=small for a quick check)
	PYTHONPATH=$(CURDIR)/src $(PY) bench/run.py --suite main

bench-scale: install ## P12: 200,000 small images on Dask, the curve to 200k, dvc add and a plain script → bench/RESULTS.md (≤ 45 min)
	PYTHONPATH=$(CURDIR)/src $(PY) bench/run.py --suite scale

bench-detection: install-detection ## the detection corruption grid at 5,000 images × 5 × 5 vs a naive loop (~21 min) → bench/RESULTS.md
	PYTHONPATH=$(CURDIR)/src $(PY) bench/detection_grid.py

bench-detection-tv: install-detection ## a real torchvision detector in the grid, 500 images × 5 × 3, vs the sensible naive script → bench/RESULTS.md
	PYTHONPATH=$(CURDIR)/src $(PY) bench/detection_torchvision.py

clean: ## remove pipeline outputs (the DVC cache stays)
	rm -rf data metrics plots reports dvc_plots comparison robustness/metrics.json models/*.tflite models/*.pt2 models/*.keras models/*.onnx models/pls.csv
	rm -rf detection/data detection/metrics detection/plots detection/reports detection/models/*.pt2
