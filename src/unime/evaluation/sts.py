"""Semantic textual similarity: Spearman correlation (x100) between cosine and gold scores.

Files read by :func:`load_sts`:

- STS-B with a header: TSV / CSV / JSONL with ``sentence1, sentence2, score``;
- the original STS-B release (``sts-test.csv``: tab-separated, no header; the score in the 5th
  field, the sentences in the 6th and 7th);
- SICK: ``sentence_A, sentence_B, relatedness_score``, including the full ``SICK.txt`` whose
  ``SemEval_set`` column (TRAIN / TRIAL / TEST) a ``split`` selects, and its JSONL exports.

A ``split`` column (as in the sentence-transformers ``stsbenchmark.tsv``) is filtered the same way.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unime.data.records import read_records
from unime.evaluation.common import dataset_name, row_cosine
from unime.evaluation.encoding import encode_unique
from unime.io.jsonl import CountedLines, text_lines

#: (first sentence, second sentence, score) column names, in the order they are tried.
COLUMN_SETS = (("sentence1", "sentence2", "score"), ("sentence_A", "sentence_B", "relatedness_score"))
SPLIT_COLUMNS = ("SemEval_set", "split")


@dataclass
class STSDataset:
    """Sentence pairs with gold similarity scores."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if len(self.sentences1) < 2:
            raise ValueError(f"STS dataset '{self.name}' needs at least two pairs for a correlation")
        if not len(self.sentences1) == len(self.sentences2) == len(self.scores):
            raise ValueError(f"STS dataset '{self.name}': sentence and score lists differ in length")


def _first_line(path: Path) -> str:
    return next(text_lines(path), "")


def _headerless_stsb(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    lines = CountedLines(path)
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        for fields in reader:
            number = reader.line_num
            if not fields:
                continue
            if len(fields) < 7:
                raise ValueError(f"{path}: line {number}: expected at least 7 tab-separated fields (STS-B)")
            rows.append((number, {"sentence1": fields[5], "sentence2": fields[6], "score": fields[4]}))
    except csv.Error as error:
        raise ValueError(f"{path}: line {lines.count}: malformed TSV: {error}") from None
    return rows


def load_sts(path: str | os.PathLike[str], split: str | None = None, name: str | None = None) -> STSDataset:
    """Read an STS file (see the module docstring); ``split`` keeps the rows of that split only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STS file {path} does not exist")
    header = _first_line(path)
    known = any(column in header for columns in COLUMN_SETS for column in columns)
    records = list(read_records(path)) if known or path.suffix.lower() == ".jsonl" else _headerless_stsb(path)
    if not records:
        raise ValueError(f"{path}: no rows")
    first = records[0][1]
    columns = next((c for c in COLUMN_SETS if all(field in first for field in c)), None)
    if columns is None:
        raise ValueError(f"{path}: needs columns {' or '.join(map(str, COLUMN_SETS))}; found {sorted(first)}")
    split_column = next((c for c in SPLIT_COLUMNS if c in first), None)
    if split is not None and split_column is None:
        raise ValueError(
            f"{path}: --split {split} given but the file has no {' / '.join(SPLIT_COLUMNS)} column"
        )
    sentences1, sentences2, scores = [], [], []
    for line, row in records:
        missing = [c for c in (*columns, *([split_column] if split is not None else [])) if row.get(c) is None]
        if missing:
            raise ValueError(f"{path}: line {line}: missing field(s) {', '.join(missing)}")
        if split is not None and str(row[split_column]).lower() != split.lower():
            continue
        value = row[columns[2]]
        try:
            score = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise ValueError(f"{path}: line {line}: {columns[2]} '{value}' is not a number")
        for column in columns[:2]:
            if not isinstance(row[column], str) or not row[column].strip():
                raise ValueError(f"{path}: line {line}: {column} must be a non-empty string, got {row[column]!r}")
        sentences1.append(row[columns[0]])
        sentences2.append(row[columns[1]])
        scores.append(score)
    if not scores:
        raise ValueError(f"{path}: no rows with {split_column} == '{split}'")
    return STSDataset(name or dataset_name(path), sentences1, sentences2, np.asarray(scores))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation x100 (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(100.0 * spearmanr(x, y).statistic)


def evaluate_sts(
    model: Any, datasets: Sequence[STSDataset], batch_size: int = 32, show_progress_bar: bool = False
) -> dict[str, float]:
    """``sts/<name>/spearman``: Spearman x100 of cosine(sentence1, sentence2) against the gold scores."""
    metrics = {}
    for dataset in datasets:
        n = len(dataset.sentences1)
        embeddings = encode_unique(
            model, [*dataset.sentences1, *dataset.sentences2], batch_size, show_progress_bar
        )
        cosine = row_cosine(embeddings[:n], embeddings[n:])
        metrics[f"sts/{dataset.name}/spearman"] = spearman(cosine, dataset.scores)
    return metrics
