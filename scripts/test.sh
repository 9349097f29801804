#!/usr/bin/env bash
# Install lipdub as the README's quick start does, plus the test and scale-out extras and the CPU build of
# torch the torch-only tests run on, then run the test suite. The base install itself (no torch) is
# covered by tests that hide torch from a child process.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
# Pinned, and installed even when some torch already imports, so every run tests the same build: this
# release's CPU build here (a bare `torch` would pull a multi-gigabyte CUDA build).
.venv/bin/python -m pip install -q "torch==2.13.*"
.venv/bin/python -m pip install -q -e ".[test,torch]"
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q "$@"
