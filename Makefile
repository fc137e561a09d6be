# Two commands do all set-up on a fresh machine:
#   make run    — the main job (creates .venv, installs, runs it on the embedded defaults)
#   make test   — the test suite (also installs and starts a real one-node SLURM for its tests)
# Everything else is `.venv/bin/python -m singer.<command>`; see README.md.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test install slurm-install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m singer.sweep sweeps/spectral_scales.yaml

# The SLURM integration tests need slurmctld/slurmd/slurmdbd; the script is a fast no-op
# when they are installed already, and skips (tests then skip) without root/apt.
slurm-install:
	bash slurm/local/install.sh

test: $(STAMP) slurm-install
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
