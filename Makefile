# The two commands of the README's quickstart. Each creates the virtual environment if needed,
# installs cnnlab into it (again only when pyproject.toml changed), then runs its job.
#
#   make train            the main job: the tutorial's CNN on MNIST (ARGS="--epochs 1" to pass flags)
#   make test             the default test suite (ARGS="-m slow" for the slow tests)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test install install-dev

train: $(VENV)/.installed
	$(BIN)/cnnlab train $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(ARGS)

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed
