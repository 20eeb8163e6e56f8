# Two commands do everything on a fresh machine:
#   make dryrun   set up, then run the dry-run gate on the built-in demo dataset
#   make test     set up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dryrun test bench lint up down clean postgres

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

# The PostgreSQL storage test starts a private server from these binaries (Debian: postgresql-15).
PG_BIN ?= /usr/lib/postgresql/15/bin
postgres:
	@test -x $(PG_BIN)/initdb || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q postgresql-15 >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q postgresql-15 >/dev/null)); } || \
	  echo "note: $(PG_BIN)/initdb not found; the PostgreSQL storage test needs package postgresql-15"

test: $(STAMP) postgres
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
