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
test: $(STAMP)
	$(PY) -m pytest

## make demo: create .venv, install, run the main job on the built-in data
demo: $(STAMP)
	$(VENV)/bin/robust-iqa demo

## make bench: speed benchmarks (ratios measured side by side in one run)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) benchmarks/layers.py

clean:
	rm -rf $(VENV) build *.egg-info
