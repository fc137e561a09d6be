# Two commands do all set-up on a fresh machine:
#   make run    — the main job (creates .venv from uv.lock, runs it on the embedded defaults)
#   make test   — the test suite (also installs and starts a real one-node SLURM for its tests)
# Everything else is `.venv/bin/python -m singer.<command>`; see README.md.
#
# Every installed package comes from uv.lock (exact versions and hashes, direct and transitive).
# pyproject.toml keeps the human-readable ranges; `make lock` turns them into the lock.

PYTHON     ?= python3
VENV       ?= .venv
TOOLS      ?= .tools
UV_VERSION := 0.13.9
UV         := $(TOOLS)/bin/uv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
PYTEST_ARGS ?=
LOCK_ARGS  ?=

# uv installs into $(VENV), uses the machine's Python, and never downloads an interpreter.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# Compile every installed module to bytecode at install time: where PYTHONDONTWRITEBYTECODE is
# set (as on CI machines), Python would otherwise recompile torch, mlflow & co. in every process,
# about 20 s per process start on 2 cores.
export UV_COMPILE_BYTECODE := 1

.PHONY: run test install lock lint format slurm-install clean

# uv itself is pinned and lives in its own small venv, so `uv sync` (which removes whatever the
# lock does not list) never uninstalls it.
$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# --locked: install exactly uv.lock, and fail if pyproject.toml changed without `make lock`.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra dev --python $(PYTHON)
	$(PY) -m singer.install_check
	touch $(STAMP)

install: $(STAMP)

# Regenerate uv.lock from pyproject.toml (keeps current versions where the ranges allow;
# `make lock LOCK_ARGS=--upgrade` moves everything to the newest allowed). Then rerun `make test`.
lock: | $(UV)
	$(UV) lock --python $(PYTHON) $(LOCK_ARGS)

run: $(STAMP)
	$(PY) -m singer.sweep sweeps/spectral_scales.yaml

lint: $(STAMP)
	$(UV) lock --check --python $(PYTHON)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The SLURM integration tests need slurmctld/slurmd/slurmdbd; the script is a fast no-op
# when they are installed already, and skips (tests then skip) without root/apt.
slurm-install:
	bash slurm/local/install.sh

test: $(STAMP) slurm-install
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache
