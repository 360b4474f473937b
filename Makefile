# Quick start: `make run` (train on the bundled digits, offline) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run lint format test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,sweep,mlflow]"
	touch $(STAMP)

venv: $(STAMP)

# The quick-start experiment: the 500-300 MLP on scikit-learn's bundled digits.
run: $(STAMP)
	$(VENV)/bin/mlprun dataset=digits model=mlp_500_300 optim=adam trainer.epochs=20

# ruff: lint and formatting (configured in pyproject.toml); `make format` rewrites the files.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests scripts
	$(VENV)/bin/ruff check --fix src tests scripts

# Lint, then the whole suite, slow tests included (what CI runs): one pytest-xdist worker per
# core, then the SLURM tests alone (a time-limit requeue on a loaded machine sometimes ended its
# job FAILED instead of running it again; alone they pass, as before xdist).
test: lint
	$(PY) -m pytest -q -n auto -m "not slurm"
	$(PY) -m pytest -q -m slurm

test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto -m "not slow and not slurm"
	$(PY) -m pytest -q -m "slurm and not slow"

bench: $(STAMP)
	$(PY) scripts/bench.py --epochs 5

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
