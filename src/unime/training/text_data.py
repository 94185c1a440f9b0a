"""Stage-1 training text: every sentence of NLI CSVs, JSONL / TSV files of sentences or pairs, or plain text.

Stage 1 needs sentences, not pairs: the loss compares all sentences of a batch with each other, so
every sentence of every row is used (the SimCSE/E5-V ``nli_for_simcse.csv`` gives premise,
entailment and contradiction; an image-caption CSV such as Flickr8k's ``train.csv`` gives its captions). Sentences are stripped, empty ones skipped, duplicates removed
(first occurrence kept, file order preserved), so the teacher embeds each once and no batch pairs
a sentence with itself.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from unime.io.jsonl import CountedLines, iter_jsonl, text_lines

# Column names that hold a sentence, in the layouts stage 1 reads.
NLI_COLUMNS = ("sent0", "sent1", "hard_neg")
TEXT_COLUMNS = (*NLI_COLUMNS, "sentence", "sentence1", "sentence2", "sentence_A", "sentence_B", "text",
                "anchor", "positive", "negative", "premise", "hypothesis", "query", "pos", "neg", "caption")


def read_sentences(paths: str | Path | Iterable[str | Path]) -> list[str]:
    """The unique sentences of one or more files, in order of first appearance.

    The layout is chosen by extension: ``.csv`` (a header naming the sentence columns, e.g.
    ``sent0,sent1,hard_neg``), ``.jsonl`` (per line a string, a list of strings or an object with
    sentence fields), ``.tsv`` (a header of sentence column names, or one to three sentences per
    line), anything else plain text with one sentence a line. An empty or malformed file, or a bad
    row, is a ValueError naming the file and line.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    seen: dict[str, None] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        count = 0
        for sentence in _read_file(path):
            seen.setdefault(sentence, None)
            count += 1
        if count == 0:
            raise ValueError(f"{path}: no sentences (the file is empty)")
    if not seen:
        raise ValueError("no data files given")
    return list(seen)


def data_fingerprint(sentences: list[str]) -> str:
    """SHA-256 of the sentence list (order included): identifies the data a teacher cache was built on."""
    digest = hashlib.sha256()
    for sentence in sentences:
        digest.update(sentence.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def _read_file(path: Path) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _read_table(path, ",")
    elif suffix == ".tsv":
        yield from _read_table(path, "\t")
    elif suffix == ".jsonl":
        yield from _read_jsonl(path)
    else:
        yield from _read_text(path)


def _clean(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a sentence (a string), got {type(value).__name__}")
    value = value.strip()
    return value or None


def _open_text(path: Path) -> Iterator[tuple[int, str]]:
    # A byte that is not UTF-8 is a ValueError naming the file and the line (text_lines).
    yield from enumerate(text_lines(path), start=1)


def _read_text(path: Path) -> Iterator[str]:
    for _, line in _open_text(path):
        sentence = line.strip()
        if sentence:
            yield sentence


def _read_table(path: Path, delimiter: str) -> Iterator[str]:
    """CSV/TSV: a header naming sentence columns, or (TSV only) headerless rows of sentences."""
    lines = CountedLines(path)
    reader = csv.reader(lines, delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        columns = [i for i, name in enumerate(header) if name in TEXT_COLUMNS]
        headerless = not columns
        if headerless and delimiter == ",":
            raise ValueError(
                f"{path} line 1: no sentence column in the header {header}; expected some of "
                f"{', '.join(TEXT_COLUMNS)} (e.g. sent0,sent1,hard_neg)"
            )
        if headerless:
            if len(header) > 3:
                raise ValueError(f"{path} line 1: {len(header)} fields; a headerless TSV holds 1 to 3 sentences a line")
            columns = list(range(len(header)))
            yield from _row_sentences(header, columns, f"{path} line 1")
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} fields, but the {'first line' if headerless else 'header'} has {len(header)}")
            yield from _row_sentences(row, columns, where)
    except csv.Error as error:  # e.g. a field above csv's size limit, or a NUL byte
        raise ValueError(f"{path} line {lines.count}: malformed {'CSV' if delimiter == ',' else 'TSV'}: "
                         f"{error}") from None


def _row_sentences(row: list[str], columns: list[int], where: str) -> Iterator[str]:
    found = [s for s in (_clean(row[i], where) for i in columns) if s]
    if not found:
        raise ValueError(f"{where}: the row has no sentence")
    yield from found


def _read_jsonl(path: Path) -> Iterator[str]:
    for number, item, error in iter_jsonl(_open_text(path)):
        where = f"{path} line {number}"
        if error is not None:
            raise ValueError(f"{where}: not valid JSON: {error}")
        if isinstance(item, str):
            values: list[object] = [item]
        elif isinstance(item, list):
            values = item
        elif isinstance(item, dict):
            values = [item[key] for key in TEXT_COLUMNS if key in item]
            if not values:
                raise ValueError(f"{where}: no sentence field among {sorted(item)}; expected some of {', '.join(TEXT_COLUMNS)}")
        else:
            raise ValueError(f"{where}: expected a string, a list of strings or an object, got {type(item).__name__}")
        found = [s for s in (_clean(v, where) for v in values) if s]
        if not found:
            raise ValueError(f"{where}: the row has no sentence")
        yield from found
