#!/usr/bin/env bash
# Create .venv and install rtg-anomaly with its test dependencies (idempotent).
# Torch and torchvision come from the package registry as on any user's machine (several GB, ~1-2 min).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -c "import rtg_anomaly, timm, torch; print(f'rtg-anomaly {rtg_anomaly.__version__} ready (torch {torch.__version__}, timm {timm.__version__})')"
