#!/usr/bin/env bash
# Create .venv and install mambabook with everything the book and the tests need.
# A torch that python3 can already import (a GPU user's CUDA build, with its triton) is
# kept: the venv then sees the system site-packages. Otherwise the CPU build is pinned
# first, so that nothing below can pull a multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "setup: using the torch already installed for $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing the CPU build of torch 2.13.0"
  $PIP install -q "torch==2.13.0"
fi
$PIP install -q -e ".[kernels,book,test]"
"$VENV/bin/python" -c "import mambabook, torch, triton; print('setup: mambabook', mambabook.__version__, '| torch', torch.__version__, '| triton', triton.__version__)"
touch "$VENV/.installed"
