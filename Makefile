# The two quick-start commands: `make demo` and `make test`. Both create .venv and install
# what they need on a fresh machine; a rerun reuses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

.PHONY: venv demo test lint bench
venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/forecast demo --out demo-output

test: $(STAMP)
	$(BIN)/ruff check forecast flows tests benchmarks
	$(BIN)/python -m pytest --durations=15

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_world.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_crps.py
	$(BIN)/python benchmarks/bench_extremes.py
