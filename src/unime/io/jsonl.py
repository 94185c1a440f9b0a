"""The one JSON Lines reader: numbered values, blank lines skipped, bad lines reported, not raised.

Every reader of the project's JSONL inputs (``unime encode`` rows, MMEB-train files, stage-1
sentences, training logs) takes its lines from :func:`iter_jsonl` and decides itself whether a bad
line stops the run (naming the file and line) or is skipped and counted (``--skip-bad-rows``).
:func:`text_lines` and :func:`read_json` are the readers' way into any text or JSON file: UTF-8
(a BOM is dropped), and bytes that are not UTF-8 or JSON are a ValueError naming file and line.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(lines: Iterable[str] | Iterable[tuple[int, str]]) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, value, None)`` per non-blank line, or ``(line number, None, reason)`` when the
    line is not valid JSON. ``lines`` is an open text file (numbered from 1 here) or already numbered
    ``(number, line)`` pairs."""
    for number, line in _numbered(lines):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as error:
            yield number, None, error.msg
        except RecursionError:
            yield number, None, "nested too deeply"


def _numbered(lines: Iterable[str] | Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    for number, item in enumerate(lines, start=1):
        yield item if isinstance(item, tuple) else (number, item)


def text_lines(path: str | os.PathLike[str]) -> Iterator[str]:
    """The lines of a UTF-8 text file (a leading BOM dropped, line ends kept, as ``newline=""``
    gives them to :mod:`csv`), decoded one line at a time so that a byte that is not UTF-8 is a
    ValueError naming the file and the line, never a bare UnicodeDecodeError."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}: line {number}: not UTF-8 text ({error.reason} at character "
                                 f"{error.start + 1})") from None


class CountedLines:
    """:func:`text_lines` that counts the lines handed out: when :mod:`csv` fails on a row,
    ``count`` is the physical line it was parsing (csv's own ``line_num`` lags one line behind
    when a field exceeds its size limit)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.count = 0
        self._lines = text_lines(path)

    def __iter__(self) -> CountedLines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.count += 1
        return line


def read_json(path: str | os.PathLike[str]) -> Any:
    """A whole JSON file (UTF-8, a leading BOM dropped); a file that is not UTF-8 or not valid JSON
    is a ValueError naming the file, the line and the column."""
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 text ({error.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno} column {error.colno}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
