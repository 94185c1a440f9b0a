#!/usr/bin/env bash
# The GPU benchmark in one command: install what the machine lacks from the wheels carried in .whl/
# (benchmarks/gpu/fetch_wheels.sh fetches them), then run benchmarks/gpu/measure.py, which writes
# gpu_results.json, gpu_results.md and this run's log (measure.log) to OUT_DIR. The project itself
# runs from its source tree (src/ on PYTHONPATH), nothing is fetched, and the whole command ends
# within 10 minutes: measure.py budgets 8 (--budget-s), and a hard limit stops it at 8:40.
#
#   bash benchmarks/gpu/run.sh OUT_DIR            # on a CUDA machine (docs/performance.md, "GPU")
#   bash benchmarks/gpu/run.sh OUT_DIR --smoke    # tiny models on the CPU, about a minute
#
# Further arguments go to measure.py (--budget-s, --models).
set -uo pipefail
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    sed -n '2,11p' "$0" >&2
    exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    TRANSFORMERS_VERBOSITY=error PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

if [ -d .whl ]; then
    site=/tmp/unime-gpu-site
    mapfile -t wheels < <("$python" benchmarks/gpu/wheels.py needed .whl)
    if [ ${#wheels[@]} -gt 0 ]; then
        echo "installing ${#wheels[@]} carried wheel(s) into $site: ${wheels[*]##*/}"
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "${wheels[@]}" || exit 1
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

# 480 s of budget plus room for one step that overruns its prediction; SIGINT first, so that
# measure.py writes what it has measured so far, then SIGKILL 20 s later.
timeout -s INT -k 20 520 "$python" benchmarks/gpu/measure.py --out "$out" "$@" 2>&1 | tee "$out/measure.log"
