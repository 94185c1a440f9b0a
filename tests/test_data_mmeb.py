"""The MMEB reader both MMEB readers share (unime.data.mmeb): data set folders, data files, the rows
of a parquet file with their numbers, the column check, and how the two callers name what it finds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unime.data import mmeb
from unime.data.mmeb import (
    data_files,
    dataset_folders,
    missing_columns,
    parquet_rows,
    row_label,
    write_parquet,
)

EVAL_ROW = {"qry_text": ["q"], "qry_img_path": [""], "tgt_text": [["a", "b"]], "tgt_img_path": [["", ""]]}


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _texts(path: Path, n: int) -> Path:
    write_parquet(path, {"qry": [f"q{i}" for i in range(n)], "pos_text": [f"p{i}" for i in range(n)]})
    return path


def test_dataset_folders_sorted_by_name_each_with_its_sorted_files(tmp_path):
    for name in ("b", "B", "a-1", "a"):
        _touch(tmp_path / name / "z.parquet")
        _touch(tmp_path / name / "y.parquet")
    _touch(tmp_path / "empty" / "notes.txt")  # no data files: left out
    (tmp_path / "bare").mkdir()
    _touch(tmp_path / "top.parquet")  # a file in the root is not a folder
    found = dataset_folders(tmp_path)
    assert [folder.name for folder in found] == ["B", "a", "a-1", "b"]
    assert all(files == (folder / "y.parquet", folder / "z.parquet") for folder, files in found.items())


def test_data_files_regular_files_with_a_suffix_and_the_prefix(tmp_path):
    for name in ("train-2.parquet", "original-1.parquet", "original-0.jsonl", "original-3.csv", "parquet"):
        _touch(tmp_path / name)
    (tmp_path / "original-9.parquet").mkdir()  # a folder, whatever its name, is not a data file
    assert [p.name for p in data_files(tmp_path)] == ["original-1.parquet", "train-2.parquet"]
    assert [p.name for p in data_files(tmp_path, (".parquet", ".jsonl"), "original")] == [
        "original-0.jsonl", "original-1.parquet"]
    assert dataset_folders(tmp_path.parent, prefix="nothing-") == {}


def test_any_entry_is_what_the_glob_finds(tmp_path):
    _touch(tmp_path / "b.parquet")
    _touch(tmp_path / ".parquet")  # no suffix of its own, but the glob *.parquet matches it
    (tmp_path / "a.parquet").mkdir()
    (tmp_path / "c.parquet").symlink_to(tmp_path / "gone")
    _touch(tmp_path / "d.jsonl")
    expected = tuple(sorted(tmp_path.glob("*.parquet")))
    assert data_files(tmp_path, any_entry=True) == expected
    assert [p.name for p in expected] == [".parquet", "a.parquet", "b.parquet", "c.parquet"]
    assert data_files(tmp_path) == (tmp_path / "b.parquet",)
    only_a_folder = tmp_path / "sets" / "Set" / "x.parquet"
    only_a_folder.mkdir(parents=True)
    assert dataset_folders(tmp_path / "sets") == {}
    assert dataset_folders(tmp_path / "sets", any_entry=True) == {only_a_folder.parent: (only_a_folder,)}


def test_missing_columns_in_required_order():
    assert missing_columns(("qry", "pos_text", "x"), ["x", "other"]) == ["qry", "pos_text"]
    assert missing_columns(("qry",), ["qry"]) == []


@pytest.mark.parametrize("decode", ["arrow", "pandas"])
def test_rows_numbered_from_zero_in_file_order(tmp_path, monkeypatch, decode):
    monkeypatch.setattr(mmeb, "CHUNK", 2)  # streamed in batches of 2: numbering continues across them
    path = _texts(tmp_path / "a.parquet", 5)
    rows = list(parquet_rows(path, "ctx", decode=decode))
    assert [index for index, _ in rows] == [0, 1, 2, 3, 4]
    assert [row["qry"] for _, row in rows] == [f"q{i}" for i in range(5)]
    assert row_label(path, 3) == "a.parquet row 3"


@pytest.mark.parametrize("decode", ["arrow", "pandas"])
def test_check_sees_the_columns_before_any_row_and_columns_selects(tmp_path, decode):
    path = _texts(tmp_path / "a.parquet", 2)
    seen = []
    rows = parquet_rows(path, "ctx", seen.append, columns=["pos_text"], decode=decode)
    assert next(rows) == (0, {"pos_text": "p0"})
    assert seen == [["qry", "pos_text"]]


def test_the_two_decodings_of_a_list_and_a_null(tmp_path):
    path = tmp_path / "a.parquet"
    write_parquet(path, {"qry_text": [None], "tgt_text": [["a", "b"]]})
    (_, arrow), = parquet_rows(path, "ctx")
    (_, frame), = parquet_rows(path, "ctx", decode="pandas")
    assert arrow == {"qry_text": None, "tgt_text": ["a", "b"]}
    # pandas: the list an array, the null what pandas makes of it (None up to pandas 2, NaN from 3)
    assert isinstance(frame["tgt_text"], np.ndarray) and list(frame["tgt_text"]) == ["a", "b"]
    expected = pd.read_parquet(path)["qry_text"][0]
    assert frame["qry_text"] is expected or (math.isnan(expected) and math.isnan(frame["qry_text"]))


def test_a_failing_check_stops_before_any_row(tmp_path):
    path = _texts(tmp_path / "a.parquet", 1)

    def check(names):
        raise ValueError(f"{path.name}: missing column(s) {missing_columns(('neg_text',), names)}")

    with pytest.raises(ValueError, match=r"^a\.parquet: missing column\(s\) \['neg_text'\]$"):
        next(parquet_rows(path, "ctx", check))


@pytest.mark.parametrize("decode", ["arrow", "pandas"])
@pytest.mark.parametrize("content", [b"", b"not a parquet file at all", b"PAR1" + b"\0" * 20 + b"PAR1"])
def test_an_unreadable_file_is_named_after_the_context(tmp_path, decode, content):
    path = tmp_path / "Set" / "broken.parquet"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^MMEB Set: cannot read {path}: ") as caught:
        next(parquet_rows(path, "MMEB Set", decode=decode))
    assert type(caught.value) is ValueError  # never pyarrow's own exception


def test_unknown_decoding():
    with pytest.raises(ValueError, match="decode must be arrow or pandas"):
        next(parquet_rows(Path("a.parquet"), "ctx", decode="polars"))


# --- as the two callers report it ---------------------------------------------------------------

def test_eval_and_train_name_rows_the_same_way(tmp_path):
    from unime.evaluation.mmeb import _read_parquet_rows
    from unime.training.mmeb_data import _read_file

    write_parquet(tmp_path / "Set" / "b.parquet", {key: value * 2 for key, value in EVAL_ROW.items()})
    write_parquet(tmp_path / "Set" / "a.parquet", EVAL_ROW)
    assert [where for where, _ in _read_parquet_rows("Set", tmp_path / "Set")] == [
        "a.parquet row 0", "b.parquet row 0", "b.parquet row 1"]
    path = _texts(tmp_path / "VQA" / "a.parquet", 3)
    assert [where for where, _ in _read_file("VQA", path)] == [
        "dataset VQA, a.parquet row 0", "dataset VQA, a.parquet row 1", "dataset VQA, a.parquet row 2"]


def test_the_callers_discover_folders_in_name_order(tmp_path):
    from unime.evaluation.mmeb import discover_mmeb
    from unime.training.mmeb_data import discover

    for name in ("b", "a", "C"):
        write_parquet(tmp_path / name / "x.parquet", EVAL_ROW)
    _touch(tmp_path / "docs" / "README.md")
    assert discover_mmeb(tmp_path) == ["C", "a", "b"]
    assert [source.name for source in discover(tmp_path)] == ["C", "a", "b"]
    # Each keeps its own rule for what counts: MMEB-eval any entry named *.parquet, MMEB-train files.
    (tmp_path / "D" / "part.parquet").mkdir(parents=True)
    assert discover_mmeb(tmp_path) == ["C", "D", "a", "b"]
    assert [source.name for source in discover(tmp_path)] == ["C", "a", "b"]


def test_the_callers_name_the_file_of_a_missing_column(tmp_path):
    from unime.evaluation.mmeb import load_mmeb_dataset
    from unime.training.mmeb_data import _read_file

    write_parquet(tmp_path / "Set" / "a.parquet", {"qry_text": ["q"], "tgt_text": [["a"]]})
    with pytest.raises(ValueError, match=r"^MMEB Set: a\.parquet: missing column\(s\) \['qry_img_path', "
                                         r"'tgt_img_path'\]; it has \['qry_text', 'tgt_text'\]$"):
        load_mmeb_dataset(tmp_path / "Set", tmp_path)
    path = tmp_path / "VQA" / "a.parquet"
    write_parquet(path, {"qry": ["q"]})
    with pytest.raises(ValueError, match=r"^dataset VQA, a\.parquet: missing column\(s\) pos_text$"):
        next(_read_file("VQA", path))


def test_the_callers_name_an_unreadable_file(tmp_path):
    from unime.evaluation.mmeb import load_mmeb_dataset
    from unime.training.mmeb_data import _read_file

    path = _touch(tmp_path / "Set" / "a.parquet", "garbage")
    with pytest.raises(ValueError, match=rf"^MMEB Set: cannot read {path}: "):
        load_mmeb_dataset(tmp_path / "Set", tmp_path)
    with pytest.raises(ValueError, match=rf"^dataset Set: cannot read {path}: "):
        next(_read_file("Set", path))
