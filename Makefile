# Two entry points for a fresh machine (see README.md):
#   make demo  - create .venv, install, run the built-in offline evaluation
#   make test  - create .venv, install with dev extras, run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt

$(BIN)/python:
	$(PY) -m venv $(VENV)

.PHONY: install install-dev demo test test-fast
install: $(BIN)/python
	$(PIP) -e .

install-dev: $(BIN)/python
	$(PIP) -e ".[dev]"

demo: install
	$(BIN)/robust-bench run

test: install-dev
	$(BIN)/python -m pytest -q

test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not slow"
