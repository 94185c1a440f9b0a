"""Shared pieces of the evaluation readers: model inputs, image paths and small table readers.

Every reader turns a row into the model contract's input (docs/design.md): a ``str`` for a text
alone, a dict ``{"image": path}`` for an image alone, and ``{"text": ..., "image": path}`` for
both. Images are passed as PATHS so the model decodes them lazily, once per unique input, and every
path is checked when the data is read so that a missing file fails before any encoding starts,
with a message naming the dataset, the row and the field.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: One input of the model contract as the evaluators build it (images always as paths).
EvalInput = str | dict[str, str]


def make_input(text: str | None, image: str | None) -> EvalInput:
    """Build a model input from an optional text and an optional resolved image path.

    A text alone stays a plain string so that text-only evaluations (STS) also run on any
    sentence-transformers model, not only on UniME models.
    """
    text = text or None
    image = image or None
    if text is None and image is None:
        raise ValueError("an input needs a text, an image or both")
    if image is None:
        return text  # type: ignore[return-value]
    if text is None:
        return {"image": image}
    return {"text": text, "image": image}


def resolve_image(image_dir: str | os.PathLike[str], relative: str, where: str) -> str:
    """Return the absolute path of ``relative`` under ``image_dir``, failing if the file is missing.

    ``where`` names the dataset, row and field for the error message.
    """
    from unime.images import is_file

    path = Path(relative) if os.path.isabs(relative) else Path(image_dir) / relative
    if not is_file(path):
        raise FileNotFoundError(f"{where}: image '{relative}' not found (looked for {path})")
    return str(path.resolve())


def input_key(item: EvalInput) -> str:
    """A canonical string for an input: two inputs with the same key embed identically."""
    if isinstance(item, str):
        return json.dumps(["t", item], ensure_ascii=False)
    if isinstance(item, dict):
        unknown = set(item) - {"text", "image", "instruction"}
        if unknown:
            raise ValueError(f"input has unknown fields {sorted(unknown)}; expected text/image/instruction")
        values = [item.get(field) for field in ("text", "image", "instruction")]
        if not all(value is None or isinstance(value, str) for value in values):
            raise TypeError("evaluation inputs must hold strings (texts and image PATHS), not decoded images")
        return json.dumps(["d", *values], ensure_ascii=False)
    raise TypeError(f"unsupported evaluation input of type {type(item).__name__}")


def dataset_name(path: str | os.PathLike[str]) -> str:
    """A short lowercase name for a data file: its stem without a ``dataset_`` prefix."""
    stem = Path(path).name if Path(path).is_dir() else Path(path).stem
    stem = stem.lower()
    return stem[len("dataset_") :] if stem.startswith("dataset_") else stem


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` from a CSV, TSV (or tab-separated .txt) or JSONL file with a header.

    Line numbers are 1-based file lines so that error messages point at the right place.
    """
    from unime.jsonl import CountedLines, iter_jsonl, text_lines

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for number, row, error in iter_jsonl(text_lines(path)):
            if error is not None:
                raise ValueError(f"{path}: line {number}: invalid JSON ({error})")
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number}: expected a JSON object")
            yield number, row
        return
    if suffix not in (".csv", ".tsv", ".txt"):
        raise ValueError(f"{path}: unsupported file type '{suffix}' (use .csv, .tsv, .txt or .jsonl)")
    delimiter = "," if suffix == ".csv" else "\t"
    # STS files carry unbalanced quotes inside sentences: tabs are the only separator there.
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    lines = CountedLines(path)
    reader = csv.DictReader(lines, delimiter=delimiter, quoting=quoting)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:  # a field above csv's size limit, a NUL byte, ...
            raise ValueError(f"{path}: line {lines.count}: malformed {suffix[1:].upper()}: {error}") from None
        # DictReader puts the fields past the header under None: a row longer than its header.
        if None in row:
            raise ValueError(f"{path}: line {reader.line_num}: {len(row) - 1 + len(row[None])} fields, but the "
                             f"header has {len(row) - 1}")
        yield reader.line_num, row


def require_fields(row: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    """Fail with a message naming the row when any of ``fields`` is absent."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with {', '.join(fields)}, got {type(row).__name__}")
    missing = [field for field in fields if field not in row or row[field] is None]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; the row has {sorted(row)}")


def percent(hits: int | float, total: int) -> float:
    """``100 * hits / total``: every score in this package is a percentage, as in the paper."""
    if total <= 0:
        raise ValueError("cannot score an empty dataset")
    return 100.0 * float(hits) / float(total)


def row_cosine(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [n, d] arrays: the contract promises unit rows, this does not rely on it."""
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    return (left * right).sum(axis=1) / np.maximum(norms, 1e-12)
