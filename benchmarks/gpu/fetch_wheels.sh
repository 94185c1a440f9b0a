#!/usr/bin/env bash
# Download the wheels benchmarks/gpu/run.sh installs on the GPU machine (CPython 3.12, manylinux
# x86-64; the list and why: benchmarks/gpu/wheels.py, the versions: constraints.txt) into .whl/ at the
# repository root, ignored through .git/info/exclude, and check that the working tree plus the wheels
# stay within the 64 MiB one device call carries. Run it once, here, where pip reaches a registry:
#
#   bash benchmarks/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}

mkdir -p .git/info .whl
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mapfile -t pins < <("$python" benchmarks/gpu/wheels.py pins)
"$python" benchmarks/gpu/wheels.py prune .whl
# The device README's recipe (--no-deps: wheels.py names every missing dependency itself).
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
"$python" benchmarks/gpu/wheels.py check .whl
