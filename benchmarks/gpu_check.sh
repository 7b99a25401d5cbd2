#!/usr/bin/env bash
# The GPU check (issue #12): the short GPU test suite, then the block throughput on the device.
#
#   benchmarks/gpu_check.sh [python]    (default: .venv/bin/python if present, else python3)
#
# `pytest -m gpu` runs tests/test_gpu.py; its archive-based tests need the project's
# environment (zarr, xarray, netCDF4) and are skipped with the reason where it is not
# installed. The throughput figure (benchmarks/gpu_throughput.py) needs only torch,
# torch-harmonics and this package's model code, so it runs on a bare GPU box as well.
# Extra arguments for it: GPU_THROUGHPUT_ARGS="--grids 33x64 --members 16".
set -u
cd "$(dirname "$0")/.."
PY="${1:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

echo "== pytest -m gpu"
if "$PY" -c "import pytest" 2>/dev/null; then
    "$PY" -m pytest -m gpu tests/test_gpu.py -v -rs || status=$?
else
    echo "pytest is not installed for $PY: suite not run"
    status=1
fi

echo "== throughput (members x steps per second of one block)"
# shellcheck disable=SC2086
"$PY" benchmarks/gpu_throughput.py ${GPU_THROUGHPUT_ARGS:-} || status=$?
exit $status
