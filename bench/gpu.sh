#!/usr/bin/env bash
# fnet on a CUDA device, in one go -> bench/results_gpu.md (see bench/bench_gpu.py for what is measured).
#   bash bench/gpu.sh                          # on a bare GPU machine with the repo: install, then measure (~5-8 min)
#   bash bench/gpu.sh --device cpu --quick     # a one-minute smoke run of the same code on a CPU
# Installation is scripts/setup.sh: .venv from PyPI with the versions in requirements.lock (torch's CUDA build
# when nvidia-smi is present). FNET_PYTHON=<python> uses an existing environment instead. When $OUT is set
# (a remote runner's result folder), the results file is copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${FNET_PYTHON:-.venv/bin/python}
if [ -z "${FNET_PYTHON:-}" ] && ! { [ -x "$PY" ] && "$PY" -c "import fnet, torch" >/dev/null 2>&1; }; then
  started=$(date +%s)
  if ! bash scripts/setup.sh; then
    echo "gpu.sh: scripts/setup.sh failed (no PyPI here?). On a machine that already has torch and fnet's" \
         "dependencies: FNET_PYTHON=python3 bash bench/gpu.sh" >&2
    exit 1
  fi
  echo "setup took $(( $(date +%s) - started )) s"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" bench/bench_gpu.py "$@"
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then cp bench/results_gpu.md "$OUT"/; fi
