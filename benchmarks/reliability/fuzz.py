"""Fuzzed data readers: run tests/test_fuzz_readers.py under a hypothesis profile and write fuzz.json.

    python benchmarks/reliability/fuzz.py --short --output-dir out   # the CI profile (a few hundred inputs)
    python benchmarks/reliability/fuzz.py --full --output-dir out    # thousands of inputs

fuzz.json holds, per reader, the number of generated inputs the reader was given (counted by the
test file itself, ``UNIME_FUZZ_COUNTS``), the failing tests (0 when every reader held), the
profile, pytest's exit code and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_FILE = ROOT / "tests" / "test_fuzz_readers.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full profile (thousands of inputs)")
    size.add_argument("--short", action="store_true", help="the CI profile (default)")
    parser.add_argument("--output-dir", default="reliability-out", help="where fuzz.json goes")
    parser.add_argument("--examples", type=int, default=None, help="inputs per test (overrides the profile)")
    args = parser.parse_args(argv)
    profile = "full" if args.full else "ci"
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        counts_file, junit = Path(scratch) / "counts.json", Path(scratch) / "junit.xml"
        env = {**os.environ, "UNIME_FUZZ_PROFILE": profile, "UNIME_FUZZ_COUNTS": str(counts_file)}
        if args.examples is not None:
            env["UNIME_FUZZ_EXAMPLES"] = str(args.examples)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEST_FILE),
                   f"--junitxml={junit}"]
        start = time.perf_counter()
        code = subprocess.run(command, cwd=ROOT, env=env).returncode
        wall = time.perf_counter() - start
        counts = json.loads(counts_file.read_text())["inputs"] if counts_file.is_file() else {}
        failures = []
        if junit.is_file():
            for case in ET.parse(junit).getroot().iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    failures.append(case.get("name"))
    report = {
        "profile": profile,
        "command": " ".join(["python", "benchmarks/reliability/fuzz.py", f"--{'full' if args.full else 'short'}"]),
        "inputs_per_reader": counts,
        "inputs_total": sum(counts.values()),
        "failing_tests": failures,
        "failures": len(failures),
        "pytest_exit_code": code,
        "wall_s": round(wall, 1),
    }
    (out / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
