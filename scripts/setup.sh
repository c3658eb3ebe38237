#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine (run as root, or with sudo available):
# the Fashion-MNIST system package, a virtual environment in .venv, and capro with its extras.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends dataset-fashion-mnist
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The tested torch / torchvision pair (constraints.txt) first: 2.13 with an unpinned torchvision
# does not import.
if ! .venv/bin/python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt torch torchvision
fi
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
echo "capro is installed in $(pwd)/.venv (try: .venv/bin/capro --help)"
