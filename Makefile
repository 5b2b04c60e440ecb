# Set-up and checks for a fresh machine: everything installs from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make test: create .venv, install, run the whole test suite
# One pytest worker per core (pytest-xdist): much of a test's time is single-threaded graph
# tracing. --dist loadfile keeps each file on one worker, so its module-scoped fixtures
# (trained runs) are built once.
test: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile

## make demo: create .venv, install, run the main job on the built-in data
demo: $(STAMP)
	$(VENV)/bin/robust-iqa demo

## make bench: speed benchmarks (ratios measured side by side in one run)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) benchmarks/layers.py

clean:
	rm -rf $(VENV) build *.egg-info
