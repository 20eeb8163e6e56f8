# Two commands do everything on a fresh machine:
#   make dryrun   set up, then run the dry-run gate on the built-in demo dataset
#   make test     set up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dryrun test bench lint up down clean

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

dryrun: $(STAMP)
	$(BIN)/atft dryrun --output-dir runs

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

lint: $(STAMP)
	$(BIN)/ruff check atft_core tasks flows tests bench

up: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash deployments/stack.sh up

down:
	PATH=$(abspath $(BIN)):$$PATH bash deployments/stack.sh down

clean:
	rm -rf $(VENV) .pytest_cache
