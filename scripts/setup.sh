#!/usr/bin/env bash
# Create .venv with the pinned stack. CPU torch goes in first, so pip never pulls a multi-GB CUDA
# build; everything else comes from requirements/lock.txt without resolving again (--no-deps).
# GPU users: install the torch build for their CUDA first, then run this script.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install --no-deps -r requirements/lock.txt
"${pip[@]}" install --no-deps -e .
echo "environment ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
