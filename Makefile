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
# Installed here when missing (as root, with apt-get); when that is impossible `make test` stops with
# the reason instead of running a suite whose PostgreSQL test cannot run.
PG_BIN ?= /usr/lib/postgresql/15/bin
export ATFT_PG_BIN = $(PG_BIN)  # where tests/test_hpo_postgres.py finds them
postgres:
	@test -x $(PG_BIN)/initdb || { \
	  command -v apt-get >/dev/null || { echo "error: $(PG_BIN)/initdb not found and no apt-get: install PostgreSQL 15 server binaries and set PG_BIN=<their bin dir>" >&2; exit 1; }; \
	  [ "$$(id -u)" = 0 ] || { echo "error: $(PG_BIN)/initdb not found: run 'sudo apt-get install postgresql-15' (or set PG_BIN)" >&2; exit 1; }; \
	  apt-get install -y -q postgresql-15 || { apt-get update -q && apt-get install -y -q postgresql-15; } || \
	    { echo "error: installing postgresql-15 failed (see above): the PostgreSQL storage test needs it" >&2; exit 1; }; \
	  test -x $(PG_BIN)/initdb || { echo "error: postgresql-15 installed but $(PG_BIN)/initdb is missing: set PG_BIN" >&2; exit 1; }; }

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
