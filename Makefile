# One command runs what CI runs: `make test`. `make reproduce` runs the quick experiment suite.
# Both create .venv on first use and install what they need.
#
# TORCH_SPEC picks the torch build: on the project's CPU machines `torch==2.13.0` is a local CPU
# wheel (fast to install). Elsewhere, install torch your usual way first, or run
# `make test TORCH_SPEC=torch`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test reproduce lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,experiments]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

reproduce: $(STAMP)
	$(BIN)/couplings reproduce --quick --out results

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sinkhorn_pot.py

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache
