"""The reliability suite's tables (docs/RELIABILITY.md) from one run's faults.json, fuzz.json and
server.json, plus each part's peak memory when ``/usr/bin/time -v`` recorded it (PART.time).

    python benchmarks/reliability/summary.py runs/reliability > runs/reliability/reliability.md

Exits 1 when a part is missing or reported a failure, so run.sh fails with it.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _peak_gb(folder: Path, part: str) -> str:
    path = folder / f"{part}.time"
    if not path.is_file():
        return "-"
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text())
    return f"{int(found.group(1)) / 2**20:.1f}" if found else "-"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return str(value)


def faults_table(report: dict[str, Any]) -> list[str]:
    lines = [f"Fault injection ({report['mode']}, {report['kills_per_command']} kills per command, seed "
             f"{report['seed']}, weights compared with rtol {report['tolerance']['rtol']}, atol "
             f"{report['tolerance']['atol']}; {report['wall_s']} s)", "",
             "| command | kills survived / tried | kill moments | resumes | runs equal to the uninterrupted one | "
             "max abs weight diff | caches / reports equal | damaged files named / tried | temporaries left |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["commands"].items():
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(row["kills_by_kind"].items()))
        equal = row["caches_equal"] if row["caches_equal"] is not None else row["reports_equal"]
        lines.append(f"| {name} | {row['kills_survived']} / {row['kills_tried']} | {kinds} | {row['resumes']} | "
                     f"{row['episodes_equal']} / {row['episodes']} | {_cell(row['max_abs_diff'])} | {_cell(equal)} | "
                     f"{row['corruptions_detected']} / {row['corruptions_tried']} | {row['leftover_temporaries']} |")
    return lines


def fuzz_table(report: dict[str, Any]) -> list[str]:
    lines = [f"Fuzzed readers (hypothesis, profile {report['profile']}; {report['inputs_total']} generated inputs, "
             f"{report['failures']} failing properties; {report['wall_s']} s)", "",
             "| reader | generated inputs |", "|---|---|"]
    lines += [f"| {reader} | {count} |" for reader, count in sorted(report["inputs_per_reader"].items())]
    return lines


def server_table(report: dict[str, Any]) -> list[str]:
    fuzz, hostile, load, overload, drain = (report[key] for key in ("fuzz", "hostile", "load", "overload", "drain"))
    statuses = ", ".join(f"{code}: {count}" for code, count in sorted(fuzz["statuses"].items()))
    lines = [f"The server ({report['mode']}, {report['model']}, {report['wall_s']} s)", "",
             "| check | result |", "|---|---|",
             f"| schema fuzzing ({fuzz['tool']}) | {fuzz['requests']} requests reached the server "
             f"({statuses}); {fuzz['server_errors']} 5xx |",
             f"| hostile bodies | {hostile['requests']} hand-made requests "
             f"({', '.join(f'{code}: {count}' for code, count in sorted(Counter(hostile['statuses'].values()).items()))}; "
             "-1: the connection closed, as for a body cut short); "
             f"{len(hostile['problems'])} problems |",
             f"| load: {load['clients']} clients, {load['seconds']} s | {load['requests']} requests "
             f"({load['statuses']['2xx']} 2xx, {load['statuses']['4xx']} 4xx, {load['statuses']['503']} 503, "
             f"{load['statuses']['5xx_other']} other 5xx, {load['statuses']['transport_errors']} transport errors); "
             f"{load['requests_per_s']} requests/s, {load['items_per_s']} items/s; p50 {load['p50_ms']} ms, "
             f"p99 {load['p99_ms']} ms; {load['crossed']} crossed embeddings (max deviation "
             f"{load['max_deviation']:.1e}, tolerance {load['atol']}); server RSS {load['rss_idle_mib']} MiB idle, "
             f"{load['rss_peak_mib']} MiB peak (bound: idle + {load['rss_growth_bound_mib']} MiB) |",
             f"| overload (queue of {overload['max_queued_items']} items) | {overload['requests']} requests: "
             f"{overload['statuses']['2xx']} answered, {overload['statuses']['503']} refused with 503 "
             f"(Retry-After {', '.join(overload['retry_after'])}), {overload['statuses']['5xx_other']} other 5xx; "
             f"/health {overload['health_after']} afterwards |",
             f"| shutdown (SIGTERM) | {drain['completed_200']} / {drain['requests']} in-flight requests answered "
             f"200; exit {drain['exit_code']} after {drain['exit_after_sigterm_s']} s |"]
    return lines


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:] or ["."])[0])
    ok, lines = True, []
    for part, table in (("faults", faults_table), ("fuzz", fuzz_table), ("server", server_table)):
        report = _load(folder, part)
        if report is None:
            lines += [f"{part}: no {part}.json in {folder}", ""]
            ok = False
            continue
        lines += table(report) + ["", f"peak memory of this part: {_peak_gb(folder, part)} GB", ""]
        ok = ok and report.get("ok", report.get("failures", 1) == 0 and report.get("pytest_exit_code", 1) == 0)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
