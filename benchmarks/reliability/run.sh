#!/usr/bin/env bash
# The reliability suite in one command: fault injection with resume, fuzzed readers, the server under
# schema fuzzing, load, overload and shutdown. Writes faults.json, fuzz.json, server.json and
# reliability.md (the tables of docs/RELIABILITY.md) into OUT; exits non-zero if any part failed.
#
#   bash benchmarks/reliability/run.sh runs/reliability            # the published sizes (<= 10 min, 2 cores)
#   bash benchmarks/reliability/run.sh runs/reliability --short    # the CI sizes
set -uo pipefail
out=${1:?usage: run.sh OUT [--short|--full]}
size=${2:---full}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
status=0
for part in faults fuzz server; do
  start=$(date +%s)
  echo "== $part ($size)"
  if [ -x /usr/bin/time ]; then  # peak memory of each part into OUT/PART.time
    /usr/bin/time -v -o "$out/$part.time" python "$here/$part.py" "$size" --output-dir "$out" || status=1
  else
    python "$here/$part.py" "$size" --output-dir "$out" || status=1
  fi
  echo "== $part: $(( $(date +%s) - start )) s"
done
python "$here/summary.py" "$out" | tee "$out/reliability.md" || status=1
exit $status
