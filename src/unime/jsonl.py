"""The one JSON Lines reader: numbered values, blank lines skipped, bad lines reported, not raised.

Every reader of the project's JSONL inputs (``unime encode`` rows, MMEB-train files, stage-1
sentences, training logs) takes its lines from :func:`iter_jsonl` and decides itself whether a bad
line stops the run (naming the file and line) or is skipped and counted (``--skip-bad-rows``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
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


def _numbered(lines: Iterable[str] | Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    for number, item in enumerate(lines, start=1):
        yield item if isinstance(item, tuple) else (number, item)
