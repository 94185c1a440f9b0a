"""Bulk embedding into parquet shards with the local engine (no Ray): the same embeddings as
``unime encode``'s .npy for JSON Lines, CSV and parquet inputs, resume after a deleted or damaged
shard and after a killed process, and the errors for bad input. The Ray engine: test_bulk_ray.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bulk_helpers import expected_embeddings, mixed_rows, save_images, shard_times, write_rows

from unime.bulk import FAULT_ENV, MANIFEST, embed_to_parquet, read_embeddings, read_input_rows
from unime.cli import main

pytest.importorskip("pyarrow")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tiny_model_factory):
    return str(tiny_model_factory("qwen2_vl"))


@pytest.fixture
def folder(tmp_path, images):
    save_images(tmp_path, images)
    return tmp_path


def _common(model_dir: str) -> list[str]:
    return ["--model", model_dir, "--batch-size", "2", "--dtype", "float32", "--no-progress"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_engine_equals_the_npy_of_unime_encode(model_dir, folder, suffix, capsys, one_thread):
    rows = mixed_rows(7, ids="str")
    path = write_rows(folder / f"rows{suffix}", rows)
    assert main(["encode", *_common(model_dir), "--input", str(path), "--output", str(folder / "e.npy")]) == 0
    out = folder / "shards"
    assert main(["encode", "--model", model_dir, "--batch-size", "2", "--dtype", "float32", "--input", str(path),
                 "--output", str(out), "--engine", "local", "--shard-rows", "3"]) == 0
    printed = capsys.readouterr().out
    for done, name in enumerate(["part-00000", "part-00001", "part-00002"], start=1):
        assert f"shard {done}/3 done: {name}.parquet" in printed
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "part-00000.parquet", "part-00001.parquet",
                                                       "part-00002.parquet"]
    ids, matrix = read_embeddings(out)
    assert ids == [row["id"] for row in rows]
    assert matrix.dtype == np.float32 and matrix.shape == (7, 64)
    np.testing.assert_allclose(matrix, np.load(folder / "e.npy"), atol=1e-5)
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["rows"], manifest["shards"], manifest["shard_rows"], manifest["ids"]) == (7, 3, 3, "id column")


def test_integer_ids_and_default_ids_are_kept_in_input_order(model_dir, folder, one_thread):
    rows = mixed_rows(5, ids="int")
    write_rows(folder / "rows.jsonl", rows)
    embed_to_parquet(model_dir, folder / "rows.jsonl", folder / "a", shard_rows=2, batch_size=2, dtype="float32",
                     progress=lambda line: None)
    ids, matrix = read_embeddings(folder / "a")
    assert ids == [1000, 993, 986, 979, 972]
    np.testing.assert_allclose(matrix, expected_embeddings(model_dir, folder, rows), atol=1e-5)
    write_rows(folder / "plain.parquet", mixed_rows(5))
    embed_to_parquet(model_dir, folder / "plain.parquet", folder / "b", shard_rows=4, batch_size=2, dtype="float32",
                     progress=lambda line: None)
    assert read_embeddings(folder / "b")[0] == [0, 1, 2, 3, 4]


def test_a_deleted_or_damaged_shard_is_the_only_one_embedded_again(model_dir, folder, one_thread):
    rows = mixed_rows(9)
    path = write_rows(folder / "rows.jsonl", rows)
    out = folder / "out"
    options = {"shard_rows": 2, "batch_size": 2, "dtype": "float32", "progress": lambda line: None}
    first = embed_to_parquet(model_dir, path, out, **options)
    assert first.embedded == (0, 1, 2, 3, 4) and first.skipped == ()
    _, whole = read_embeddings(out)
    before = shard_times(out)
    (out / "part-00001.parquet").unlink()
    damaged = bytearray((out / "part-00003.parquet").read_bytes())
    damaged[len(damaged) // 3] ^= 0x40  # inside the embedding column's data page: its checksum catches it
    (out / "part-00003.parquet").write_bytes(bytes(damaged))
    lines: list[str] = []
    again = embed_to_parquet(model_dir, path, out, **{**options, "progress": lines.append})
    assert again.embedded == (1, 3) and again.skipped == (0, 2, 4)
    assert any("part-00003.parquet: unreadable" in line for line in lines), lines
    after = shard_times(out)
    assert {name: after[name] for name in ("part-00000.parquet", "part-00002.parquet", "part-00004.parquet")} == {
        name: before[name] for name in ("part-00000.parquet", "part-00002.parquet", "part-00004.parquet")}
    assert after["part-00003.parquet"] != before["part-00003.parquet"]
    ids, matrix = read_embeddings(out)
    assert ids == list(range(9))
    np.testing.assert_allclose(matrix, whole, atol=1e-6)
    # Finished: a third run embeds nothing.
    assert embed_to_parquet(model_dir, path, out, **options).embedded == ()


_JOB = """
import sys
from unime.bulk import embed_to_parquet
embed_to_parquet(sys.argv[1], sys.argv[2], sys.argv[3], shard_rows=2, batch_size=2, dtype="float32", progress=print)
"""


def test_a_killed_process_resumes_without_a_lost_or_repeated_row(model_dir, folder, one_thread):
    rows = mixed_rows(9, ids="str")
    path = write_rows(folder / "rows.csv", rows)
    out, marker = folder / "out", folder / "killed-once"
    env = {**os.environ, FAULT_ENV: f"2:{marker}", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                                                   os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", _JOB, model_dir, str(path), str(out)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert marker.exists()
    # Killed while shard 2 was being written: shards 0 and 1 are whole, shard 2 exists only as a temporary.
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert list(out.glob(".part-00002.parquet.*.tmp"))
    with pytest.raises(ValueError, match="part-00002.parquet: missing: the job is not finished"):
        read_embeddings(out)
    resumed = embed_to_parquet(model_dir, path, out, shard_rows=2, batch_size=2, dtype="float32",
                               progress=lambda line: None)
    assert resumed.skipped == (0, 1) and resumed.embedded == (2, 3, 4)
    assert not list(out.glob(".*.tmp"))
    ids, matrix = read_embeddings(out)
    assert ids == [row["id"] for row in rows]  # every row once, in input order
    np.testing.assert_allclose(matrix, expected_embeddings(model_dir, folder, rows), atol=1e-5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{not json}\n', "bad.jsonl line 2: not valid JSON"),
        ("bad.jsonl", '{"text": "ok"}\n{"image": "missing.png"}\n', "bad.jsonl line 2: image file not found"),
        ("bad.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n',
         ["bad.jsonl line 3: id 'a' repeats ", "bad.jsonl line 1's"]),
        ("bad.jsonl", '{"id": 1, "text": "x"}\n{"text": "y"}\n', "bad.jsonl line 2: no 'id', but"),
        ("bad.jsonl", '{"id": 1, "text": "x"}\n{"id": "2", "text": "y"}\n', "bad.jsonl line 2: id '2' is a str"),
        ("bad.jsonl", '{"id": true, "text": "x"}\n', "bad.jsonl line 1: 'id' must be an integer"),
        ("bad.csv", "id,text\na,one\nb,\n", "bad.csv line 3: an input needs a text, an image or a video"),
        ("bad.csv", "text,caption\nx,y\n", "bad.csv line 2: unknown keys ['caption']"),
        ("bad.csv", "id,text\nk,one\nk,two\n", ["bad.csv line 3: id 'k' repeats ", "bad.csv line 2's"]),
        ("bad.rows", "x", "unknown extension '.rows': the input must be .jsonl, .csv or .parquet"),
        ("empty.jsonl", "\n", "empty.jsonl: no rows to embed"),
    ],
)
def test_bad_rows_are_named_before_any_model_work(folder, name, content, message):
    path = folder / name
    path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        read_input_rows(path)
    for part in [message] if isinstance(message, str) else message:  # a repeated id: both rows named
        assert part in str(error.value)


def test_bad_parquet_rows_and_columns_are_named(folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", None, "c"], "image": [None, None, "gone.png"]}), folder / "r.parquet")
    with pytest.raises(ValueError, match=r"r.parquet row 1: an input needs a text, an image or a video"):
        read_input_rows(folder / "r.parquet")
    pq.write_table(pa.table({"text": ["a"], "score": [1.0]}), folder / "c.parquet")
    with pytest.raises(ValueError, match=r"c.parquet: unknown columns \['score'\]"):
        read_input_rows(folder / "c.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), folder / "t.parquet")
    with pytest.raises(ValueError, match="t.parquet: column 'text' holds int64; expected strings"):
        read_input_rows(folder / "t.parquet")
    (folder / "x.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="x.parquet: not a readable parquet file"):
        read_input_rows(folder / "x.parquet")


def test_a_folder_of_another_job_is_refused_naming_the_difference(model_dir, folder, capsys, one_thread):
    path = write_rows(folder / "rows.jsonl", mixed_rows(4))
    out = folder / "out"
    common = ["encode", *_common(model_dir), "--input", str(path), "--output", str(out), "--engine", "local"]
    assert main([*common, "--shard-rows", "2"]) == 0
    assert main([*common, "--shard-rows", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{out / MANIFEST}: written for another job (shard_rows 2 there, 3 now)" in err
    write_rows(path, mixed_rows(5))
    assert main([*common, "--shard-rows", "2"]) == 2
    assert "the input differs: the folder was written for" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "part-00000.parquet", "part-00001.parquet"]
    # A job that stopped before its first shard (here on a size above the model's width) binds nothing.
    with pytest.raises(ValueError, match="dimensions 65 exceeds the model's embedding size 64"):
        embed_to_parquet(model_dir, path, folder / "early", dimensions=65, progress=lambda line: None)
    assert sorted(p.name for p in (folder / "early").iterdir()) == [MANIFEST]
    result = embed_to_parquet(model_dir, path, folder / "early", dtype="float32", progress=lambda line: None)
    assert result.embedded == (0,) and read_embeddings(folder / "early")[1].shape == (5, 64)
    other = folder / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main([*common[:-4], "--output", str(other), "--engine", "local"]) == 2
    assert f"{other}: is not empty and holds no {MANIFEST}" in capsys.readouterr().err


def test_bad_options_are_refused_naming_the_option(model_dir, folder, capsys):
    path = write_rows(folder / "rows.jsonl", mixed_rows(2))
    common = ["encode", "--model", model_dir, "--input", str(path)]
    cases = [
        ([*common, "--output", str(folder / "e.npy"), "--engine", "local"], "--engine writes a folder of parquet shards"),
        ([*common, "--output", str(folder / "e.npy"), "--actors", "2"], "--actors is for --engine local or ray"),
        ([*common, "--output", str(folder / "o"), "--engine", "local", "--actors", "2"], "--actors is for --engine ray"),
        ([*common, "--output", str(folder / "o"), "--engine", "local", "--shard-rows", "0"],
         "--shard-rows must be positive"),
        (["encode", "--model", model_dir, "--input", str(folder / "nope.csv"), "--output", str(folder / "o"),
          "--engine", "local"], "--input " + str(folder / "nope.csv") + ": file not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert not (folder / "o").exists()


def test_engine_ray_without_ray_says_which_extra_to_install(model_dir, folder, capsys, monkeypatch):
    for name in [name for name in sys.modules if name == "ray" or name.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    path = write_rows(folder / "rows.jsonl", mixed_rows(2))
    assert main(["encode", "--model", model_dir, "--input", str(path), "--output", str(folder / "o"),
                 "--engine", "ray"]) == 2
    assert "--engine ray needs Ray Data: pip install 'unime[ray]'" in capsys.readouterr().err
    assert not (folder / "o").exists()
    with pytest.raises(ImportError, match=r"pip install 'unime\[ray\]'"):
        embed_to_parquet(model_dir, path, folder / "o", engine="ray")


def test_read_embeddings_refuses_an_unfinished_or_foreign_folder(model_dir, folder, one_thread):
    with pytest.raises(FileNotFoundError, match=f"no {MANIFEST}: not a folder of bulk embeddings"):
        read_embeddings(folder)
    path = write_rows(folder / "rows.jsonl", mixed_rows(3))
    embed_to_parquet(model_dir, path, folder / "out", shard_rows=2, dtype="float32", progress=lambda line: None)
    (folder / "out" / "part-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="part-00001.parquet: unreadable"):
        read_embeddings(folder / "out")
