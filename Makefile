# Set-up and checks for a fresh machine: everything installs from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make test: create .venv, install, run the whole test suite
# Three pytest workers (pytest-xdist) on the 2-core machines: much of a test's time is
# single-threaded graph tracing and file I/O, so a third worker fills the gaps (measured on
# the full suite: 10 min 55 s against 11 min 45 s with two). A fixed count, not -n auto: a
# container can show more CPUs than its quota, and every worker holds a TensorFlow runtime.
# `make test TEST_WORKERS=auto` uses one per core. --dist loadfile keeps each file on one
# worker, so its module-scoped fixtures (trained runs) are built once.
TEST_WORKERS ?= 3
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

## make lint: create .venv, install (ruff comes with the test extra), check the code with ruff
# The rules are in pyproject.toml ([tool.ruff]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

## make demo: create .venv, install, run the main job on the built-in data
demo: $(STAMP)
	$(VENV)/bin/robust-iqa demo

## make bench: speed benchmarks (ratios measured side by side in one run)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) benchmarks/layers.py

clean:
	rm -rf $(VENV) build *.egg-info
