# The two set-up-and-run commands. Both create .venv when missing and reuse it after.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build in the set-up path: a looser spec pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: quickstart test test-all clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

quickstart: $(VENV)/.installed
	$(BIN)/rlxf quickstart

# make test: unit and smoke tests and the quickstart's claims (under 15 min on 2 cores).
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow"

# make test-all: everything, including the tests marked slow (each paper's claim, real-model learning).
test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
