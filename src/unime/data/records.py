"""Small table readers shared by every data format: CSV / TSV / JSON Lines records with line
numbers, required fields, and image paths checked when a row is read (a missing file fails before
any model work, naming the file, row and field)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def resolve_image(image_dir: str | os.PathLike[str], relative: str, where: str) -> str:
    """Return the absolute path of ``relative`` under ``image_dir``, failing if the file is missing.

    ``where`` names the dataset, row and field for the error message.
    """
    from unime.io.images import is_file

    path = Path(relative) if os.path.isabs(relative) else Path(image_dir) / relative
    if not is_file(path):
        raise FileNotFoundError(f"{where}: image '{relative}' not found (looked for {path})")
    return str(path.resolve())


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` from a CSV, TSV (or tab-separated .txt) or JSONL file with a header.

    Line numbers are 1-based file lines so that error messages point at the right place.
    """
    from unime.io.jsonl import CountedLines, iter_jsonl, text_lines

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
