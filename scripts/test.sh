#!/usr/bin/env bash
# Install lipdub with its test dependencies into .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned to the release whose CPU build this project is tested with, so that the
# editable install below does not pull a newer multi-gigabyte CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.*"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q "$@"
