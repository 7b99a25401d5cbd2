# The two quick-start commands: `make demo` and `make test`. Both create .venv and install
# what they need on a fresh machine; a rerun reuses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# pip's own byte-compiling runs on one core; compileall on both takes a minute less (this host
# sets PYTHONDONTWRITEBYTECODE, so an uncompiled venv would import twice as slowly every time).
# The leading '-': a file some package ships that does not compile must not fail the install.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	-$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null
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
