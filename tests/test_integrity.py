"""unime.io.integrity's atomic writers: a write that fails midway leaves the target as it was and no
temporary file behind; one that succeeds reads back exactly what was written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unime.io.integrity import atomic_path, write_json_atomic, write_text_atomic


class _Failure(RuntimeError):
    pass


def _names(folder):
    return sorted(path.name for path in folder.iterdir())


def test_text_and_json_round_trip_and_replace_the_old_file(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("old", encoding="utf-8")
    write_text_atomic(text_file, "new text, ünïcode\nsecond line\n")
    assert text_file.read_text(encoding="utf-8") == "new text, ünïcode\nsecond line\n"

    data = {"model_id": "m", "files": {"a": {"size": 3, "sha256": "ab"}}, "rows": [1, 2.5, None]}
    json_file = tmp_path / "manifest.json"
    write_json_atomic(json_file, data)
    assert json.loads(json_file.read_text(encoding="utf-8")) == data
    assert json_file.read_text(encoding="utf-8") == json.dumps(data, indent=1) + "\n"
    write_json_atomic(json_file, data, indent=2)
    assert json_file.read_text(encoding="utf-8") == json.dumps(data, indent=2) + "\n"
    assert _names(tmp_path) == ["manifest.json", "notes.txt"]


def test_atomic_path_round_trips_a_library_written_file(tmp_path):
    target = tmp_path / "scores.npy"
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    with atomic_path(target) as temporary, open(temporary, "wb") as handle:
        assert temporary.parent == tmp_path and temporary != target
        np.save(handle, array)
        assert not target.exists()  # nothing at the target until the block ends
    np.testing.assert_array_equal(np.load(target), array)
    assert _names(tmp_path) == ["scores.npy"]


def test_a_write_failing_midway_leaves_the_target_untouched_and_no_temporary(tmp_path):
    target = tmp_path / "chunk.bin"
    target.write_bytes(b"the old content")
    with pytest.raises(_Failure), atomic_path(target) as temporary:
        temporary.write_bytes(b"half of the new")
        raise _Failure("killed midway")
    assert target.read_bytes() == b"the old content"
    assert _names(tmp_path) == ["chunk.bin"]


def test_a_failing_write_of_a_new_file_creates_nothing(tmp_path):
    with pytest.raises(_Failure), atomic_path(tmp_path / "new.json") as temporary:
        temporary.write_text("{", encoding="utf-8")
        raise _Failure("serialisation failed")
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "other.json", {"not json": object()})
    assert _names(tmp_path) == []


def test_a_failing_rename_removes_the_temporary(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("kept", encoding="utf-8")
    with pytest.raises(OSError):
        write_text_atomic(target, "cannot replace a folder")
    assert (target / "inside").read_text(encoding="utf-8") == "kept"
    assert _names(tmp_path) == ["taken"]


def test_a_temporary_left_by_a_killed_write_is_overwritten_by_the_next(tmp_path):
    target = tmp_path / "shard-00000.npy"
    with atomic_path(target) as first:
        first.write_bytes(b"first")
    # A run killed before its rename leaves its temporary; the next write to the same target uses the
    # same name, so it replaces that file instead of leaving it behind.
    first.write_bytes(b"a partial shard of a killed run")
    array = np.ones((2, 3), dtype=np.float16)
    with atomic_path(target) as again, again.open("wb") as handle:
        np.save(handle, array)
    assert again == first
    np.testing.assert_array_equal(np.load(target), array)
    assert _names(tmp_path) == ["shard-00000.npy"]


def test_score_matrices_are_written_through_the_atomic_writer(tmp_path, monkeypatch):
    from unime.evaluation.runner import save_score_matrix

    path = save_score_matrix(tmp_path, "CIRR", [[1.0, 0.5], [0.25, 0.0]])
    np.testing.assert_array_equal(np.load(path), np.array([[1.0, 0.5], [0.25, 0.0]], dtype=np.float32))

    def fail_midway(handle, array, **kwargs):
        handle.write(b"\x93NUMPY partial")
        raise _Failure("disk full")

    monkeypatch.setattr(np, "save", fail_midway)
    with pytest.raises(_Failure):
        save_score_matrix(tmp_path, "CIRR", [[0.0, 0.0], [0.0, 0.0]])
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(path), np.array([[1.0, 0.5], [0.25, 0.0]], dtype=np.float32))
    assert _names(tmp_path) == ["CIRR.npy"]
