# Two commands do everything on a fresh machine:
#   make dryrun   set up, then run the dry-run gate on the built-in demo dataset
#   make test     set up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dryrun test bench lint up down clean postgres gpu-wheels gpu-check

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

dryrun: $(STAMP)
	$(BIN)/atft dryrun

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

# The GPU check (bench/gpu_check.py), for a lent GPU machine: its own python3 and torch, no network.
# `make gpu-wheels` (here, with network) downloads cp312 manylinux wheels of what the check imports
# beyond torch into .whl/ (ignored; the device call carries it); `make gpu-check` (there) installs
# those its python3 lacks into GPU_SITE, offline, and writes one JSON (GPU_CHECK_OUT).
# numpy and pyarrow are in the device image; pyarrow's wheel alone (55 MB) plus polars' (55 MB) would
# pass the 64 MiB a device call carries, so they are left to GPU_WHEELS_EXTRA.
GPU_PY ?= python3
GPU_SITE ?= /tmp/atft-gpu-site
GPU_CHECK_OUT ?= gpu_check.json
GPU_CHECK_ARGS ?=
PIP ?= $(PYTHON) -m pip
GPU_WHEELS ?= polars==2.1.0 polars-runtime-32==2.1.0 pyyaml==6.0.4 nvidia-ml-py==13.615.71 tqdm==4.70.1
GPU_WHEELS_EXTRA ?=

gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PIP) download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS) $(GPU_WHEELS_EXTRA)
	@du -sh .whl

gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PY) -m bench.gpu_check --wheels .whl --site $(GPU_SITE) --out $(GPU_CHECK_OUT) \
	  $(GPU_CHECK_ARGS)
