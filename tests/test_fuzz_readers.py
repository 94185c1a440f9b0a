"""Property-based tests (hypothesis) of every data reader: generated rows, then damage.

Each test generates a file the reader's layout describes (random texts, some rows broken: a
missing or extra column, a wrong type, an empty value, a missing image, a huge field), then maybe
damages its bytes (truncated, a NUL byte, a UTF-8 BOM, latin-1 or UTF-16 text, garbage bytes, CRLF
line ends, an empty file). The only outcomes allowed (:func:`outcome`):

- a successful read, and when every row was valid and the bytes undamaged (a BOM and CRLF line
  ends count as undamaged) the rows read are the rows written;
- the documented error: a ``ValueError`` or ``FileNotFoundError`` of the project (never a library
  exception such as ``UnicodeDecodeError``, ``json.JSONDecodeError``, ``csv.Error``, pyarrow's
  ``ArrowInvalid`` or a yaml error, even when it subclasses ValueError) whose message names the
  file, and for a single broken row in undamaged bytes that row (its line or index);
- with ``skip_bad_rows`` (MMEB-train, caption files), the broken rows left out and counted.

Profiles: ``ci`` (the default: a few hundred inputs over the file, under a minute on 2 cores,
derandomised so CI is reproducible) and ``full`` (``UNIME_FUZZ_PROFILE=full``: thousands, random).
``UNIME_FUZZ_COUNTS=PATH`` writes the number of inputs each reader was given to PATH (JSON), which
``benchmarks/reliability/fuzz.py`` reports.
"""

from __future__ import annotations

import csv
import io
import json
import os
import string
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

PROFILE = os.environ.get("UNIME_FUZZ_PROFILE", "ci")
_COMMON = dict(deadline=None, database=None, print_blob=True, suppress_health_check=list(HealthCheck))
if os.environ.get("UNIME_FUZZ_NO_SHRINK"):  # report the first failing input as found (fast triage)
    _COMMON["phases"] = [Phase.explicit, Phase.reuse, Phase.generate]
settings.register_profile("unime-fuzz-ci", max_examples=int(os.environ.get("UNIME_FUZZ_EXAMPLES", 20)),
                          derandomize=True, **_COMMON)
settings.register_profile("unime-fuzz-full", max_examples=int(os.environ.get("UNIME_FUZZ_EXAMPLES", 200)), **_COMMON)
if PROFILE not in ("ci", "full"):
    raise ValueError(f"UNIME_FUZZ_PROFILE must be ci or full, got {PROFILE!r}")
# Applied per test (not loaded globally), so other hypothesis tests in the session keep their settings.
fuzz = settings(settings.get_profile(f"unime-fuzz-{PROFILE}"))

COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
    yield
    target = os.environ.get("UNIME_FUZZ_COUNTS")
    if target:
        Path(target).write_text(json.dumps({"profile": PROFILE, "inputs": dict(sorted(COUNTS.items()))}, indent=2))


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-images")
    (root / "img").mkdir()
    for index, rel in enumerate(IMAGES):
        Image.new("RGB", (4 + index, 4), (40 * index, 0, 0)).save(root / rel)
    (root / "not_an_image.png").write_bytes(b"this is text")
    return root


IMAGES = ("a.png", "b.png", "img/c.png")

# --- generated values ---------------------------------------------------------------------------

# Texts a reader must carry through unchanged: printable, no surrounding space (readers strip),
# no delimiter or quote characters (the writer of each layout would quote them differently), and
# some non-ASCII so that latin-1 damage is visible.
_ALPHABET = string.ascii_letters + string.digits + " .-éßø中😀"
texts = st.text(_ALPHABET, min_size=1, max_size=30).map(str.strip).filter(bool)
junk = st.one_of(st.none(), st.integers(-5, 10**12), st.floats(allow_nan=True), st.booleans(),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                 st.just(""), st.just("   "), st.text(max_size=20))
HUGE = "h" * 150_000  # above the csv module's default field limit (131072)
HUGE_MARK = "<<HUGE>>"  # in generated rows; replaced by HUGE in the file's bytes (short failure reports)


@dataclass
class Defect:
    """One broken row: its index and what was done to it."""

    index: int
    kind: str  # "missing", "type", "empty", "extra", "huge", "image"
    column: str


DAMAGES = ("none", "none", "none", "bom", "crlf", "truncate", "nul", "latin1", "utf16", "garbage", "empty")
HARMLESS = ("none", "bom", "crlf")


damage_plans = st.tuples(st.sampled_from(DAMAGES), st.floats(0, 1), st.binary(min_size=1, max_size=16))


def damaged(text: str):
    """A strategy of (bytes, damage kind): ``text`` as UTF-8, maybe damaged. Only the plan (kind,
    position, garbage) is drawn, so failure reports stay short even for huge fields."""
    return damage_plans.map(lambda plan: (_damage(text, *plan), plan[0]))


def _damage(text: str, kind: str, where: float, garbage: bytes) -> bytes:
    text = text.replace(HUGE_MARK, HUGE)
    data = text.encode("utf-8")
    position = int(where * len(data))
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    if kind == "truncate":
        return data[: min(position, max(len(data) - 1, 0))]
    if kind == "nul":
        return data[:position] + b"\0" + data[position:]
    if kind == "latin1":
        return text.encode("latin-1", errors="replace") + "é".encode("latin-1")
    if kind == "utf16":
        return text.encode("utf-16")
    if kind == "garbage":
        return data[:position] + garbage + data[position:]
    if kind == "empty":
        return b""
    return data


ALLOWED_ERRORS: set[type] = {ValueError, FileNotFoundError}


def _project_errors() -> set[type]:
    from unime.io.images import ImageDecodeError
    from unime.training.caption_data import BadCaptionRow
    from unime.training.mmeb_data import BadRow

    return {BadRow, BadCaptionRow, ImageDecodeError}


def outcome(reader: str, call, path: Path, defect: Defect | None = None, where: str | None = None,
            damage: str = "none") -> tuple[str, Any]:
    """Run ``call``; ("ok", result) or ("error", message), failing on anything not allowed."""
    COUNTS[reader] += 1
    try:
        return "ok", call()
    except Exception as error:  # the property: what escapes and what it says
        allowed = ALLOWED_ERRORS | _project_errors()
        assert type(error) in allowed, (
            f"{reader}: {type(error).__module__}.{type(error).__name__} escaped: {error}")
        message = str(error)
        # SugarCrepe names a split file by its split (the file's stem: replace_obj for replace_obj.json).
        names = (path.name, path.stem) if reader == "sugarcrepe_json" else (path.name,)
        assert any(name in message for name in names), (
            f"{reader}: the error does not name the file {path.name}: {message[:2000]}")
        if defect is not None and where is not None and damage in HARMLESS and defect.kind != "image":
            # One broken row in clean bytes: the error names it (unless an earlier check of the whole
            # file refused it first, e.g. a column missing from a header).
            assert where in message or "line 1:" in message or "column" in message or "header" in message, (
                f"{reader}: the error does not name {where}: {message[:2000]}")
        return "error", message


def _damage_binary(raw: bytes, data) -> tuple[bytes, str]:
    """A binary file (parquet) left alone, truncated, overwritten with garbage or emptied."""
    damage = data.draw(st.sampled_from(["none", "none", "truncate", "garbage", "empty"]))
    if damage == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif damage == "garbage":
        position = data.draw(st.integers(0, len(raw)))
        raw = raw[:position] + data.draw(st.binary(min_size=1, max_size=32)) + raw[position + 32:]
    elif damage == "empty":
        raw = b""
    return raw, damage


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _apply(row: dict[str, Any], defect: Defect | None, index: int, draw, required: tuple[str, ...]) -> dict[str, Any]:
    if defect is None or defect.index != index:
        return row
    row = dict(row)
    if defect.kind == "missing":
        row.pop(defect.column, None)
    elif defect.kind == "type":
        row[defect.column] = draw(junk.filter(lambda v: not isinstance(v, str) or not v.strip()))
    elif defect.kind == "empty":
        row[defect.column] = draw(st.sampled_from(["", "  "]))
    elif defect.kind == "extra":
        row[defect.column] = draw(junk)
    elif defect.kind == "huge":
        row[defect.column] = HUGE_MARK
    elif defect.kind == "image":
        row[defect.column] = draw(st.sampled_from(["missing.png", "not_an_image.png", "../a.png", "/nope/x.png"]))
    return row


@st.composite
def defects(draw, n: int, required: tuple[str, ...], image_columns: tuple[str, ...] = (),
            extra: str = "surprise") -> Defect | None:
    if draw(st.booleans()):
        return None
    kinds = ["missing", "type", "empty", "extra", "huge"] + (["image"] if image_columns else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "extra":
        column = extra
    elif kind == "image":
        column = draw(st.sampled_from(image_columns))
    else:
        column = draw(st.sampled_from(required))
    return Defect(draw(st.integers(0, n - 1)), kind, column)


def _real(value: Any) -> Any:
    """A generated value as the file holds it (the huge-field marker expanded)."""
    return HUGE if value == HUGE_MARK else value


def _jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _table(rows: list[dict[str, Any]], columns: list[str], delimiter: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n",
                        quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE, escapechar="\\")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else str(row.get(c)) for c in columns])
    return buffer.getvalue()


# --- MMEB-train (stage 2), JSONL and parquet ----------------------------------------------------

MMEB_TRAIN_REQUIRED = ("qry", "pos_text")


@st.composite
def mmeb_train_rows(draw):
    n = draw(st.integers(1, 6))
    rows = []
    for _ in range(n):
        with_image = draw(st.booleans())
        rows.append({"qry": ("<|image_1|> " if with_image else "") + draw(texts),
                     "qry_image_path": draw(st.sampled_from(IMAGES)) if with_image else "",
                     "pos_text": draw(texts), "pos_image_path": ""})
    defect = draw(defects(n, MMEB_TRAIN_REQUIRED, ("qry_image_path", "pos_image_path")))
    rows = [_apply(row, defect, i, draw, MMEB_TRAIN_REQUIRED) for i, row in enumerate(rows)]
    return rows, defect


def _mmeb_train_ok(defect: Defect | None) -> bool:
    return defect is None or defect.kind == "huge"


@fuzz
@given(generated=mmeb_train_rows(), skip=st.booleans(), data=st.data())
def test_mmeb_train_jsonl(image_root, generated, skip, data):
    from unime.training.mmeb_data import load_mmeb_train

    rows, defect = generated
    raw, damage = data.draw(damaged(_jsonl(rows)))
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "D.jsonl", raw)
        where = f"D.jsonl line {defect.index + 1}" if defect else None
        kind, result = outcome("mmeb_train_jsonl", lambda: load_mmeb_train(path, image_root, skip_bad_rows=skip),
                               path, defect, where, damage)
    if damage in HARMLESS and _mmeb_train_ok(defect):
        assert kind == "ok", result
        assert len(result.datasets["D"]) == len(rows)
        assert [r["text"] for r in result.datasets["D"]["query"]] == [_real(r["qry"]) for r in rows]
    elif damage in HARMLESS and skip and defect.kind != "extra" and len(rows) > 1:
        assert kind == "ok", result
        assert result.skipped == {"D": 1} and len(result.datasets["D"]) == len(rows) - 1


@fuzz
@given(generated=mmeb_train_rows(), skip=st.booleans(), column_junk=st.booleans(), data=st.data())
def test_mmeb_train_parquet(image_root, generated, skip, column_junk, data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unime.training.mmeb_data import load_mmeb_train

    rows, defect = generated
    columns = sorted({key for row in rows for key in row})
    values = {c: [row.get(c) for row in rows] for c in columns}
    if column_junk:  # a whole column of another type (parquet columns are typed)
        column = data.draw(st.sampled_from(columns))
        values[column] = data.draw(st.sampled_from([[1] * len(rows), [[1, 2]] * len(rows), [1.5] * len(rows),
                                                    [None] * len(rows), [b"x"] * len(rows)]))
    try:
        table = pa.table({c: pa.array([v if isinstance(v, str) or v is None else json.dumps(v) for v in vals])
                          if not column_junk or c != column else pa.array(vals) for c, vals in values.items()})
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        assume(False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    raw = buffer.getvalue()
    raw, damage = _damage_binary(raw, data)
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "D.parquet", raw)
        kind, result = outcome("mmeb_train_parquet",
                               lambda: load_mmeb_train(path, image_root, skip_bad_rows=skip), path)
    if damage == "none" and not column_junk and _mmeb_train_ok(defect) and (defect is None or defect.kind != "type"):
        assert kind == "ok", result


# --- MMEB-eval (parquet) ------------------------------------------------------------------------

@st.composite
def mmeb_eval_frames(draw):
    n = draw(st.integers(1, 5))
    rows = []
    for _ in range(n):
        k = draw(st.integers(1, 3))
        rows.append({"qry_text": draw(texts), "qry_img_path": draw(st.sampled_from(("",) + IMAGES)),
                     "tgt_text": [draw(texts) for _ in range(k)],
                     "tgt_img_path": [draw(st.sampled_from(("",) + IMAGES)) for _ in range(k)]})
    defect = None
    if draw(st.booleans()):
        index = draw(st.integers(0, n - 1))
        kind = draw(st.sampled_from(["missing", "lengths", "empty_list", "empty", "image", "null_list", "extra"]))
        row = rows[index]
        if kind == "missing":
            column = draw(st.sampled_from(sorted(row)))
            for r in rows:
                r.pop(column)
        elif kind == "lengths":
            row["tgt_img_path"] = row["tgt_img_path"] + [""]
        elif kind == "empty_list":
            row["tgt_text"], row["tgt_img_path"] = [], []
        elif kind == "empty":
            row["qry_text"], row["qry_img_path"] = "", ""
        elif kind == "image":
            row["qry_img_path"] = "missing.png"
        elif kind == "null_list":
            row["tgt_text"] = None
        else:
            for r in rows:
                r["extra"] = "x"
        defect = Defect(index, kind, "")
    return rows, defect


@fuzz
@given(generated=mmeb_eval_frames(), data=st.data())
def test_mmeb_eval_parquet(image_root, generated, data):
    import pandas as pd

    from unime.evaluation.mmeb import load_mmeb_dataset

    rows, defect = generated
    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer)
    raw = buffer.getvalue()
    raw, damage = _damage_binary(raw, data)
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder) / "Set", "test.parquet", raw)
        where = f"row {defect.index}" if defect and defect.kind not in ("missing", "extra") else None
        kind, result = outcome("mmeb_eval_parquet", lambda: load_mmeb_dataset(path.parent, image_root),
                               path, defect, where, damage)
    if damage == "none" and (defect is None or defect.kind == "extra"):
        assert kind == "ok", result
        assert len(result.queries) == len(rows)


# --- stage-1 sentences: NLI CSV, JSONL, TSV, plain text -----------------------------------------

@st.composite
def sentence_files(draw):
    layout = draw(st.sampled_from(["nli_csv", "jsonl", "tsv", "txt"]))
    n = draw(st.integers(1, 6))
    rows = [{"sent0": draw(texts), "sent1": draw(texts), "hard_neg": draw(texts)} for _ in range(n)]
    defect = draw(defects(n, ("sent0", "sent1", "hard_neg"), (), extra="label"))
    rows = [_apply(row, defect, i, draw, ()) for i, row in enumerate(rows)]
    if layout == "nli_csv":
        text, suffix = _table(rows, ["sent0", "sent1", "hard_neg"], ","), ".csv"
    elif layout == "tsv":
        text, suffix = _table(rows, ["sent0", "sent1", "hard_neg"], "\t"), ".tsv"
    elif layout == "jsonl":
        shape = draw(st.sampled_from(["object", "list", "string"]))
        items = [row if shape == "object" else list(row.values()) if shape == "list" else row.get("sent0")
                 for row in rows]
        text, suffix = _jsonl(items), ".jsonl"
    else:
        text, suffix = "".join(f"{row.get('sent0')}\n" for row in rows), ".txt"
    return layout, text, suffix, rows, defect


@fuzz
@given(generated=sentence_files(), data=st.data())
def test_stage1_sentences(generated, data):
    from unime.training.text_data import read_sentences

    layout, text, suffix, rows, defect = generated
    raw, damage = data.draw(damaged(text))
    reader = "nli_csv" if layout == "nli_csv" else f"sentences_{layout}"
    line = (defect.index + (2 if layout in ("nli_csv", "tsv") else 1)) if defect else 0
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), f"train{suffix}", raw)
        kind, result = outcome(reader, lambda: read_sentences(path), path, defect, f"line {line}", damage)
    if damage in HARMLESS and defect is None:
        assert kind == "ok", result
        if layout == "txt":
            expected = [row["sent0"] for row in rows]
        elif layout == "jsonl" and isinstance(json.loads(text.splitlines()[0]), str):
            expected = [row["sent0"] for row in rows]
        else:
            expected = [row[c] for row in rows for c in ("sent0", "sent1", "hard_neg")]
        assert result == list(dict.fromkeys(expected))


# --- captions: retrieval tables, `unime data captions`, `unime align` ---------------------------

@st.composite
def caption_tables(draw):
    suffix = draw(st.sampled_from([".csv", ".tsv", ".jsonl"]))
    n = draw(st.integers(1, 6))
    rows = [{"image": draw(st.sampled_from(IMAGES)), "caption": draw(texts)} for _ in range(n)]
    defect = draw(defects(n, ("image", "caption"), ("image",), extra="license"))
    rows = [_apply(row, defect, i, draw, ()) for i, row in enumerate(rows)]
    if suffix == ".jsonl":
        text = _jsonl(rows)
    else:
        columns = ["image", "caption"] + (["license"] if defect and defect.kind == "extra" else [])
        if defect and defect.kind == "missing":
            columns = [c for c in columns if c != defect.column] if draw(st.booleans()) else columns
        text = _table(rows, columns, "," if suffix == ".csv" else "\t")
    return suffix, text, rows, defect


@fuzz
@given(generated=caption_tables(), target=st.sampled_from(["retrieval_table", "data_captions", "align_captions"]),
       skip=st.booleans(), data=st.data())
def test_caption_tables(image_root, generated, target, skip, data):
    from unime.data.captions import read_caption_pairs
    from unime.evaluation.retrieval import load_retrieval
    from unime.training.caption_data import read_caption_data

    suffix, text, rows, defect = generated
    if target == "align_captions" and suffix == ".tsv":
        suffix = ".csv"
        text = text.replace("\t", ",")
    raw, damage = data.draw(damaged(text))
    line = (defect.index + (1 if suffix == ".jsonl" else 2)) if defect else 0
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), f"captions{suffix}", raw)
        calls = {
            "retrieval_table": lambda: load_retrieval(path, image_root),
            "data_captions": lambda: read_caption_pairs(path, image_root),
            "align_captions": lambda: read_caption_data([path], image_root, skip_bad_rows=skip),
        }
        kind, result = outcome(target, calls[target], path, defect, f"line {line}", damage)
    clean = damage in HARMLESS and (defect is None or defect.kind in ("extra", "huge"))
    # A huge field is read in JSON Lines (CSV's limit refuses it); a huge image name is a missing image.
    if clean and not (defect and defect.kind == "huge" and (suffix != ".jsonl" or defect.column == "image")):
        assert kind == "ok", result
        captions = {"retrieval_table": lambda r: r.captions, "data_captions": lambda r: [c for _, c in r],
                    "align_captions": lambda r: [row.caption for row in r.rows]}[target](result)
        assert captions == [_real(row["caption"]) for row in rows]
    if target == "align_captions" and skip and damage in HARMLESS and defect and defect.kind in (
            "type", "empty", "image") and len(rows) > 1 and suffix == ".jsonl":
        assert kind == "ok", result
        assert result.skipped == 1


# --- Karpathy and ShareGPT4V JSON ---------------------------------------------------------------

@st.composite
def karpathy_files(draw):
    n = draw(st.integers(1, 5))
    entries = [{"filename": draw(st.sampled_from(["a.png", "b.png", "c.png"])),
                "filepath": "img" if False else "", "split": draw(st.sampled_from(["test", "test", "train"])),
                "sentences": [{"raw": draw(texts)} for _ in range(draw(st.integers(1, 3)))]} for _ in range(n)]
    for entry in entries:
        if entry["filename"] == "c.png":
            entry["filepath"] = "img"
    defect = draw(defects(n, ("filename", "split", "sentences"), ("filename",), extra="cocoid"))
    entries = [_apply(e, defect, i, draw, ()) for i, e in enumerate(entries)]
    shape = draw(st.sampled_from(["ok", "ok", "ok", "list", "no_images", "images_not_list", "sentence_junk"]))
    document: Any = {"images": entries}
    if shape == "list":
        document = entries
    elif shape == "no_images":
        document = {"pictures": entries}
    elif shape == "images_not_list":
        document = {"images": draw(junk)}
    elif shape == "sentence_junk":
        entries[0]["sentences"] = draw(st.one_of(junk, st.lists(junk, min_size=1, max_size=2)))
    return document, entries, defect, shape


@fuzz
@given(generated=karpathy_files(), data=st.data())
def test_karpathy_json(image_root, generated, data):
    from unime.evaluation.retrieval import load_retrieval

    document, entries, defect, shape = generated
    raw, damage = data.draw(damaged(json.dumps(document, ensure_ascii=False, indent=data.draw(st.sampled_from([None, 1])))))
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "dataset_coco.json", raw)
        # A broken document (not an object, no list of images) is refused as a whole, before any entry.
        where = {"ok": f"images[{defect.index}]" if defect else None, "sentence_junk": "images[0]"}.get(shape)
        kind, result = outcome("karpathy_json", lambda: load_retrieval(path, image_root, fmt="karpathy"),
                               path, defect, where, damage)
    if damage in HARMLESS and shape == "ok" and (defect is None or defect.kind == "extra"):
        tests = [e for e in entries if e["split"] == "test"]
        if tests:
            assert kind == "ok", result
            assert result.captions == [s["raw"] for e in tests for s in e["sentences"]]


@fuzz
@given(n=st.integers(1, 4), shape=st.sampled_from(["ok", "ok", "no_gpt", "junk_turns", "not_list", "junk_entry"]),
       data=st.data())
def test_sharegpt4v_json(image_root, n, shape, data):
    from unime.evaluation.retrieval import load_retrieval

    entries: Any = [{"image": data.draw(st.sampled_from(IMAGES)),
                     "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                       {"from": "gpt", "value": data.draw(texts)}]} for _ in range(n)]
    if shape == "no_gpt":
        entries[0]["conversations"] = entries[0]["conversations"][:1]
    elif shape == "junk_turns":
        entries[0]["conversations"] = data.draw(st.one_of(junk, st.lists(junk, min_size=1, max_size=2)))
    elif shape == "junk_entry":
        entries[0] = data.draw(junk)
    elif shape == "not_list":
        entries = {"entries": entries}
    raw, damage = data.draw(damaged(json.dumps(entries, ensure_ascii=False)))
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "share.json", raw)
        kind, result = outcome("sharegpt4v_json", lambda: load_retrieval(path, image_root, fmt="sharegpt4v"),
                               path, None, None, damage)
    if damage in HARMLESS and shape == "ok":
        assert kind == "ok", result


# --- SugarCrepe ---------------------------------------------------------------------------------

@fuzz
@given(n=st.integers(1, 5), data=st.data())
def test_sugarcrepe_json(image_root, n, data):
    from unime.evaluation.sugarcrepe import load_sugarcrepe_split

    items = {str(i): {"filename": data.draw(st.sampled_from(IMAGES)), "caption": data.draw(texts),
                      "negative_caption": data.draw(texts)} for i in range(n)}
    defect = data.draw(defects(n, ("filename", "caption", "negative_caption"), ("filename",)))
    items = {key: _apply(item, defect, i, data.draw, ()) for i, (key, item) in enumerate(items.items())}
    document: Any = items
    shape = data.draw(st.sampled_from(["ok", "ok", "ok", "list", "junk_item"]))
    if shape == "list":
        document = list(items.values())
    elif shape == "junk_item":
        document = {**items, "0": data.draw(junk)}
    raw, damage = data.draw(damaged(json.dumps(document, ensure_ascii=False)))
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "replace_obj.json", raw)
        where = f"item {defect.index}" if defect else None
        kind, result = outcome("sugarcrepe_json", lambda: load_sugarcrepe_split(path, image_root),
                               path, defect if shape == "ok" else None, where, damage)
    if damage in HARMLESS and shape == "ok" and (defect is None or defect.kind == "extra"
                                                 or (defect.kind == "huge" and defect.column != "filename")):
        assert kind == "ok", result
        assert result.captions == [_real(item["caption"]) for item in items.values()]


# --- STS ----------------------------------------------------------------------------------------

@st.composite
def sts_files(draw):
    layout = draw(st.sampled_from(["stsb_tsv", "sick_tsv", "csv", "jsonl", "headerless"]))
    n = draw(st.integers(2, 6))
    names = ("sentence_A", "sentence_B", "relatedness_score") if layout == "sick_tsv" else ("sentence1", "sentence2", "score")
    rows = [{names[0]: draw(texts), names[1]: draw(texts),
             names[2]: draw(st.floats(0, 5, allow_nan=False).map(lambda v: round(v, 3)))} for _ in range(n)]
    defect = draw(defects(n, names, (), extra="genre"))
    rows = [_apply(row, defect, i, draw, ()) for i, row in enumerate(rows)]
    if layout == "jsonl":
        text, suffix = _jsonl(rows), ".jsonl"
    elif layout == "headerless":
        text = "".join("\t".join(["main-captions", "MSRvid", "2012test", f"{i:04d}", str(row.get(names[2])),
                                  str(row.get(names[0])), str(row.get(names[1]))]) + "\n"
                       for i, row in enumerate(rows))
        suffix = ".tsv"
    else:
        columns = list(names) + (["genre"] if defect and defect.kind == "extra" else [])
        text, suffix = _table(rows, columns, "," if layout == "csv" else "\t"), ".csv" if layout == "csv" else ".tsv"
    return layout, text, suffix, rows, defect, names


@fuzz
@given(generated=sts_files(), data=st.data())
def test_sts(generated, data):
    from unime.evaluation.sts import load_sts

    layout, text, suffix, rows, defect, names = generated
    raw, damage = data.draw(damaged(text))
    line = (defect.index + (1 if layout in ("jsonl", "headerless") else 2)) if defect else 0
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), f"sts-test{suffix}", raw)
        kind, result = outcome(f"sts_{'jsonl' if layout == 'jsonl' else 'table'}", lambda: load_sts(path), path,
                               defect, f"line {line}", damage)
    if damage in HARMLESS and defect is None:
        assert kind == "ok", result
        np.testing.assert_allclose(result.scores, [row[names[2]] for row in rows])
        assert result.sentences1 == [row[names[0]] for row in rows]


# --- `unime encode` input rows ------------------------------------------------------------------

@st.composite
def encode_rows(draw):
    n = draw(st.integers(1, 6))
    rows = []
    for _ in range(n):
        row = {}
        kind = draw(st.sampled_from(["text", "image", "both"]))
        if kind in ("text", "both"):
            row["text"] = draw(texts)
        if kind in ("image", "both"):
            row["image"] = draw(st.sampled_from(IMAGES))
        if draw(st.booleans()):
            row["instruction"] = draw(texts)
        rows.append(row)
    defect = draw(defects(n, ("text",), ("image",), extra="caption"))
    rows = [_apply(row, defect, i, draw, ()) for i, row in enumerate(rows)]
    if draw(st.integers(0, 9)) == 0:
        rows[0] = draw(junk)  # not an object at all
        defect = Defect(0, "type", "")
    return rows, defect


@fuzz
@given(generated=encode_rows(), data=st.data())
def test_encode_input_rows(image_root, generated, data):
    import shutil

    from unime.cli.encode import read_rows

    rows, defect = generated
    raw, damage = data.draw(damaged(_jsonl(rows)))
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(image_root, Path(folder), dirs_exist_ok=True)
        path = _write(Path(folder), "rows.jsonl", raw)
        where = f"line {defect.index + 1}" if defect else None
        kind, result = outcome("encode_rows_jsonl", lambda: read_rows(path), path, defect, where, damage)
    if damage in HARMLESS and (defect is None or defect.kind == "huge"):
        assert kind == "ok", result
        assert [r.text for r in result] == [_real(r.get("text")) for r in rows]


# --- recipe YAML --------------------------------------------------------------------------------

RECIPES = ("distill-cpu", "tune-cpu", "align-smol")


def _recipe_class(name: str):
    from unime.training.recipes import AlignRecipe, DistillRecipe, TuneRecipe

    return {"distill": DistillRecipe, "tune": TuneRecipe, "align": AlignRecipe}[name.split("-")[0]]


@fuzz
@given(name=st.sampled_from(RECIPES), edits=st.lists(st.tuples(st.sampled_from(["set", "drop", "add"]),
                                                                 st.integers(0, 100), junk), max_size=3),
       mangle=st.sampled_from(["none", "none", "tab", "indent", "flow", "truncate", "anchor", "list", "scalar"]),
       data=st.data())
def test_recipe_yaml(name, edits, mangle, data):
    from unime.training.recipes import resolve_recipe

    cls = _recipe_class(name)
    settings_ = yaml.safe_load(resolve_recipe(name).read_text(encoding="utf-8"))
    keys = sorted(settings_)
    for op, index, value in edits:
        key = keys[index % len(keys)]
        if op == "set":
            settings_[key] = value
        elif op == "drop":
            settings_.pop(key, None)
        else:
            settings_[f"x_{index}"] = value
    text = yaml.safe_dump(settings_, allow_unicode=True)
    if mangle == "tab":
        text = text.replace("\n", "\n\t", 1)
    elif mangle == "indent":
        text = "  " + text.replace("\n", "\n ", 2)
    elif mangle == "flow":
        text = "{" + text
    elif mangle == "truncate":
        text = text[: data.draw(st.integers(0, len(text)))]
    elif mangle == "anchor":
        text = "a: &x [*x]\n" + text
    elif mangle == "list":
        text = "- " + text.replace("\n", "\n  ")
    elif mangle == "scalar":
        text = data.draw(st.sampled_from(["42", "just text", "~", "[1, 2]", "!!python/object:os.system x"]))
    raw, damage = data.draw(damaged(text))
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "recipe.yaml", raw)
        kind, result = outcome("recipe_yaml", lambda: cls.from_yaml(path), path)
    if kind == "ok":
        # A recipe that loads holds settings of the declared types (no "bf16: 'no'" read as true).
        from unime.training.recipes import setting_type_problem

        for field_name, value in result.to_dict().items():
            assert setting_type_problem(cls, field_name, value) is None, (field_name, value)
    if damage in HARMLESS and mangle == "none" and not edits:
        assert kind == "ok", result
