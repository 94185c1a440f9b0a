"""Result files and markdown tables: everything the evaluators leave to their callers.

A result file is JSON ``{"task", "model", "config", "metrics": {flat key: percentage}}``; its
markdown table is written beside it with the ``.md`` suffix. :func:`compare_markdown` lines up
several result files key by key.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unime.evaluation.mmeb import MMEB_SPLITS, dataset_group

_TASK_TITLES = {
    "classification": "Classification",
    "vqa": "VQA",
    "retrieval": "Retrieval",
    "grounding": "Grounding",
}
_SUMMARY_TITLES = {**_TASK_TITLES, "IND": "IND", "OOD": "OOD", "overall": "Overall"}


def _number(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _finite_or_none(metrics: Mapping[str, float]) -> dict[str, float | None]:
    # JSON has no NaN: a score that could not be computed (constant embeddings in STS) becomes null.
    return {key: (None if isinstance(v, float) and math.isnan(v) else float(v)) for key, v in metrics.items()}


def write_results(
    path: str | os.PathLike[str],
    task: str,
    metrics: Mapping[str, float],
    *,
    model: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write the JSON result file and its markdown table (same name, ``.md``); returns the markdown path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"task": task, "model": model, "config": dict(config or {}), "metrics": _finite_or_none(metrics)}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    markdown = path.with_suffix(".md")
    title = f"# {task} results" + (f" for {model}" if model else "")
    protocol = (config or {}).get("protocol")
    if isinstance(protocol, Mapping) and protocol.get("name"):
        # Which protocol produced the numbers: VLM2Vec's and unime's differ by many points.
        details = ", ".join(f"{key} {protocol[key]}" for key in ("ties", "image_resolution", "max_length")
                            if protocol.get(key) is not None)
        title += f"\n\nProtocol: {protocol['name']}" + (f" ({details})" if details else "")
    markdown.write_text(f"{title}\n\n{markdown_report(task, metrics)}", encoding="utf-8")
    return markdown


def read_metrics(path: str | os.PathLike[str]) -> dict[str, float | None]:
    """The flat metrics of a result file (or of a JSON file that is itself a flat metrics dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error.msg})") from None
    metrics = data.get("metrics", data) if isinstance(data, dict) else None
    if not isinstance(metrics, dict) or not all(
        v is None or isinstance(v, (int, float)) for v in metrics.values()
    ):
        raise ValueError(f"{path}: expected a result file with a 'metrics' object of numbers")
    return {key: None if value is None else float(value) for key, value in metrics.items()}


def pivot_markdown(metrics: Mapping[str, float | None], first_column: str = "Dataset") -> str:
    """A table with one row per middle key part and one column per last part (``task/row/column``)."""
    rows: dict[str, dict[str, float | None]] = {}
    columns: list[str] = []
    for key, value in metrics.items():
        parts = key.split("/")
        row, column = ("/".join(parts[1:-1]) or parts[0], parts[-1]) if len(parts) > 1 else (key, "value")
        rows.setdefault(row, {})[column] = value
        if column not in columns:
            columns.append(column)
    lines = [f"| {first_column} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, values in rows.items():
        lines.append(f"| {row} | " + " | ".join(_number(values.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def mmeb_markdown(metrics: Mapping[str, float | None]) -> str:
    """The paper's MMEB summary (meta-tasks, IND, OOD, overall, with counts) and per-dataset scores."""
    scores = {key.split("/")[1]: value for key, value in metrics.items() if key.count("/") == 2}
    datasets = {name: value for name, value in scores.items() if dataset_group(name) is not None}
    others = {
        name: value
        for name, value in scores.items()
        if dataset_group(name) is None and name not in (*MMEB_SPLITS, "IND", "OOD", "overall")
    }
    totals = {task: len(ind) + len(ood) for task, (ind, ood) in MMEB_SPLITS.items()}
    totals["IND"] = sum(len(ind) for ind, _ in MMEB_SPLITS.values())
    totals["OOD"] = sum(len(ood) for _, ood in MMEB_SPLITS.values())
    totals["overall"] = totals["IND"] + totals["OOD"]
    counts = dict.fromkeys(totals, 0)
    for name in datasets:
        task, split = dataset_group(name)  # type: ignore[misc]
        for key in (task, split, "overall"):
            counts[key] += 1
    header = [f"{_SUMMARY_TITLES[key]} ({counts[key]}/{totals[key]})" for key in totals]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines.append("| " + " | ".join(_number(scores.get(key)) for key in totals) + " |")
    lines += ["", "| Meta-task | Split | Dataset | Precision@1 |", "|---|---|---|---|"]
    for task, (ind, ood) in MMEB_SPLITS.items():
        for split, names in (("IND", ind), ("OOD", ood)):
            lines += [
                f"| {_TASK_TITLES[task]} | {split} | {n} | {_number(datasets[n])} |"
                for n in names
                if n in datasets
            ]
    lines += [f"| other | - | {name} | {_number(value)} |" for name, value in others.items()]
    return "\n".join(lines) + "\n"


def markdown_report(task: str, metrics: Mapping[str, float | None]) -> str:
    """The markdown table of one task's metrics."""
    if task == "mmeb":
        sizes = {key: value for key, value in metrics.items() if key.startswith("mmeb/dimensions/")}
        rest = {key: value for key, value in metrics.items() if key not in sizes}
        return "\n".join(([mmeb_markdown(rest)] if rest else []) +
                         ([dimensions_markdown(sizes, "mmeb")] if sizes else []))
    if task == "mmeb-v2":
        from unime.evaluation.mmeb_v2 import metrics_table

        return metrics_table(metrics)
    if task == "retrieval":
        return retrieval_markdown(metrics)
    return pivot_markdown(metrics, "Split" if task == "sugarcrepe" else "Dataset")


def dimensions_markdown(metrics: Mapping[str, float | None], prefix: str) -> str:
    """One row per Matryoshka size of ``PREFIX/dimensions/<N>/...`` keys, one column per metric."""
    rows: dict[str, dict[str, float | None]] = {}
    columns: list[str] = []
    for key, value in metrics.items():
        size, column = key[len(prefix) + len("/dimensions/"):].split("/", 1)
        rows.setdefault(size, {})[column] = value
        if column not in columns:
            columns.append(column)
    lines = ["| Dimensions | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {size} | " + " | ".join(_number(values.get(c)) for c in columns) + " |" for size, values in rows.items()]
    return "\n".join(lines) + "\n"


def retrieval_markdown(metrics: Mapping[str, float | None]) -> str:
    """Retrieval's table; the reranked figures (``retrieval/reranked/...``) as a second table and the
    Matryoshka sizes (``retrieval/dimensions/<N>/...``) as a table with a row per size."""
    sections = {"": {}, "reranked": {}, "dimensions": {}}
    for key, value in metrics.items():
        part = key.split("/")[1] if key.count("/") >= 2 else ""
        sections[part if part in ("reranked", "dimensions") else ""][key] = value
    out = []
    if sections[""]:
        out.append(pivot_markdown(sections[""]))
    if sections["reranked"]:
        out.append("Reranked by the judge:\n\n" + pivot_markdown(
            {key.replace("retrieval/reranked/", "retrieval/", 1): v for key, v in sections["reranked"].items()}))
    if sections["dimensions"]:
        out.append(dimensions_markdown(sections["dimensions"], "retrieval"))
    return "\n".join(out)


def compare_markdown(results: Sequence[tuple[str, Mapping[str, float | None]]]) -> str:
    """Side-by-side table of several results (label, metrics); with two, a Δ column (second - first)."""
    if len(results) < 2:
        raise ValueError("comparing needs at least two result files")
    keys: list[str] = []
    for _, metrics in results:
        keys += [key for key in metrics if key not in keys]
    labels = [label for label, _ in results]
    with_delta = len(results) == 2
    header = ["Metric", *labels] + (["Δ"] if with_delta else [])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for key in keys:
        values = [metrics.get(key) for _, metrics in results]
        cells = [_number(value) for value in values]
        if with_delta:
            a, b = values
            cells.append("-" if a is None or b is None else f"{b - a:+.1f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_files(paths: Sequence[str | os.PathLike[str]]) -> str:
    """:func:`compare_markdown` over result files, labelled by file stem (with the folder if stems clash)."""
    stems = [Path(p).stem for p in paths]
    labels = [Path(p).stem if stems.count(Path(p).stem) == 1 else str(Path(p).with_suffix("")) for p in paths]
    return compare_markdown([(label, read_metrics(path)) for label, path in zip(labels, paths, strict=True)])
