"""Image-caption pairs for feature alignment (``unime align``), read and validated up front.

Layouts: a CSV file whose header has ``image`` and ``caption`` columns (Flickr8k's ``train.csv``:
one row per caption, 5 per image), or JSON Lines of ``{"image": ..., "caption": ...}``. Image
paths are relative to an image root (by default the caption file's own folder).

A bad row (no image or caption, invalid JSON, an image file that is missing or not an image) stops
the run with an error naming the file, the line and the column, or with ``skip_bad_rows`` is left
out and counted per file. A file that cannot hold rows at all (empty, a missing column, an unknown
suffix) is always an error. Image headers are checked here, on a few threads (it is I/O bound);
the pixels are decoded when a row is batched (:class:`unime.training.captioning.CaptionCollator`),
which names the row again if that fails. Each file's SHA-256 is recorded for provenance.

Torch-free: reading and checking the data needs nothing heavy, so a bad file fails in seconds.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unime.io.images import header_problem
from unime.io.jsonl import CountedLines, iter_jsonl, text_lines

logger = logging.getLogger(__name__)

COLUMNS = ("image", "caption")
SUFFIXES = (".csv", ".jsonl")
# Rows parsed before their images are checked together; bounds the work past a max_rows cap.
_CHUNK = 2048
# Reasons of skipped rows kept for the summary (all are logged).
_REASONS_KEPT = 20


class BadCaptionRow(ValueError):
    """A row that cannot be trained on; the message names the file, the line and the column."""


@dataclass(frozen=True)
class CaptionRow:
    """One training pair: an image path (absolute, or as given when absolute), its caption, and
    where the row came from (``FILE: line N``, for messages)."""

    image: str
    caption: str
    where: str


@dataclass
class CaptionFile:
    """Provenance of one caption file: its SHA-256 and the rows used and skipped from it."""

    path: str
    sha256: str
    rows: int = 0
    skipped: int = 0


@dataclass
class CaptionData:
    """The rows to train on, in file order, and per-file provenance."""

    rows: list[CaptionRow]
    files: list[CaptionFile]
    skipped_reasons: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(f.skipped for f in self.files)

    def summary(self) -> dict[str, Any]:
        """Plain JSON: files (path, SHA-256, rows, skipped), totals, and the first skip reasons."""
        return {
            "files": [vars(f).copy() for f in self.files],
            "rows": len(self.rows),
            "images": len({row.image for row in self.rows}),
            "skipped": self.skipped,
            "skipped_reasons": self.skipped_reasons[:_REASONS_KEPT],
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    lines = CountedLines(path)
    reader = csv.DictReader(lines)
    try:
        header = reader.fieldnames
        if not header:
            raise ValueError(f"{path}: empty file; expected a header with the columns {', '.join(COLUMNS)}")
        missing = [name for name in COLUMNS if name not in header]
        if missing:
            raise ValueError(f"{path}: line 1: missing column(s) {', '.join(missing)}; the header has "
                             f"{', '.join(header)}")
        for row in reader:
            # A row's first physical line (a quoted caption may span several).
            yield f"{path}: line {reader.line_num}", row
    except csv.Error as error:  # a field above csv's size limit, a NUL byte, ...
        raise ValueError(f"{path}: line {lines.count}: malformed CSV: {error}") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | BadCaptionRow]]:
    for number, row, error in iter_jsonl(text_lines(path)):
        where = f"{path}: line {number}"
        if error is not None:
            yield where, BadCaptionRow(f"{where}: not valid JSON ({error})")
        elif not isinstance(row, dict):
            yield where, BadCaptionRow(f"{where}: expected a JSON object with {', '.join(COLUMNS)}")
        else:
            yield where, row


def _read_file(path: Path) -> Iterator[tuple[str, dict[str, Any] | BadCaptionRow]]:
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found (--data): {path}")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: unsupported caption file type {path.suffix!r} (use .csv or .jsonl)")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file; expected image-caption rows")
    yield from _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)


def _parse(row: dict[str, Any], where: str, image_root: Path) -> CaptionRow:
    values = {}
    for column in COLUMNS:
        value = row.get(column)
        if value is None:
            raise BadCaptionRow(f"{where}: column {column!r} is missing")
        if not isinstance(value, str):
            raise BadCaptionRow(f"{where}: column {column!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise BadCaptionRow(f"{where}: column {column!r} is empty")
        values[column] = value.strip()
    image = Path(values["image"])
    return CaptionRow(str(image if image.is_absolute() else image_root / image), values["caption"], where)


def _image_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as an image, or None; reads the header only
    (:func:`unime.io.images.header_problem`)."""
    problem = header_problem(path)
    return None if problem is None else f"column 'image': {problem}"


class _Reader:
    """Accumulates the good rows of all files, checking image headers a chunk at a time so that the
    first bad row in file order is the one reported."""

    def __init__(self, captions_per_image: int | None, max_rows: int | None, skip_bad_rows: bool) -> None:
        self.captions_per_image, self.max_rows, self.skip_bad_rows = captions_per_image, max_rows, skip_bad_rows
        self.rows: list[CaptionRow] = []
        self.reasons: list[str] = []
        self.pending: list[tuple[CaptionFile, CaptionRow | BadCaptionRow]] = []
        self.per_image: dict[str, int] = {}

    def full(self) -> bool:
        return self.max_rows is not None and len(self.rows) >= self.max_rows

    def add(self, source: CaptionFile, item: CaptionRow | BadCaptionRow) -> None:
        if isinstance(item, CaptionRow) and self.captions_per_image is not None:
            seen = self.per_image.get(item.image, 0)
            self.per_image[item.image] = seen + 1
            if seen >= self.captions_per_image:
                return
        self.pending.append((source, item))
        wanted = _CHUNK if self.max_rows is None else min(_CHUNK, self.max_rows - len(self.rows))
        if len(self.pending) >= wanted:
            self.flush()

    def flush(self) -> None:
        paths = sorted({item.image for _, item in self.pending if isinstance(item, CaptionRow)})
        with ThreadPoolExecutor(max_workers=8) as pool:
            problems = dict(zip(paths, pool.map(_image_problem, paths), strict=True))
        for source, item in self.pending:
            if self.full():
                break
            problem = str(item) if isinstance(item, BadCaptionRow) else problems[item.image]
            if problem is None:
                self.rows.append(item)
                source.rows += 1
                continue
            reason = problem if isinstance(item, BadCaptionRow) else f"{item.where}: {problem}"
            if not self.skip_bad_rows:
                raise BadCaptionRow(reason)
            source.skipped += 1
            self.reasons.append(reason)
            logger.warning("skipping %s", reason)
        self.pending.clear()


def read_caption_data(
    paths: Sequence[str | Path],
    image_root: str | Path | None = None,
    *,
    captions_per_image: int | None = None,
    max_rows: int | None = None,
    skip_bad_rows: bool = False,
) -> CaptionData:
    """Read and validate image-caption files (see the module docstring).

    ``image_root`` (None or ""): the folder image paths are relative to; by default each file's own
    folder. ``captions_per_image`` keeps the first N captions of each image (in file order),
    ``max_rows`` the first N good rows over all files (rows past it are never examined).
    """
    if not paths:
        raise ValueError("no caption files given (--data)")
    reader = _Reader(captions_per_image, max_rows, skip_bad_rows)
    files = []
    for name in paths:
        path = Path(name)
        root = Path(image_root) if image_root else path.parent
        rows = _read_file(path)  # validates the file (suffix, header) before hashing it
        first = next(rows, None)
        source = CaptionFile(str(path), sha256_of(path))
        files.append(source)
        if first is None:
            raise ValueError(f"{path}: no image-caption rows")
        for where, raw in itertools.chain([first], rows):
            if reader.full():
                break
            try:
                reader.add(source, raw if isinstance(raw, BadCaptionRow) else _parse(raw, where, root))
            except BadCaptionRow as error:
                reader.add(source, error)
        reader.flush()
    if not reader.rows:
        first = f"; the first: {reader.reasons[0]}" if reader.reasons else ""
        raise ValueError(f"no usable image-caption rows in {', '.join(map(str, paths))} "
                         f"({sum(f.skipped for f in files)} bad rows skipped{first})")
    data = CaptionData(reader.rows, files, reader.reasons)
    logger.info("caption data: %d rows of %d images from %d file(s), %d bad rows skipped", len(data.rows),
                len({row.image for row in data.rows}), len(files), data.skipped)
    return data
