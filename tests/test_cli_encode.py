"""`unime encode` and `unime make-tiny` end to end, and their errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import unime
from unime.cli import main


@pytest.fixture
def rows_file(tmp_path, images):
    images[0].save(tmp_path / "a.png")
    (tmp_path / "img").mkdir()
    images[1].save(tmp_path / "img" / "b.png")
    rows = [
        {"text": "a much longer first sentence, so that sorting by length reorders the batch"},
        {"image": "a.png"},
        {"text": "short"},
        {"text": "<|image_1|>\nwhat is shown?", "image": "img/b.png"},
        {"text": "find it", "image": "a.png", "instruction": "Represent the query"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, rows


def test_encode_writes_rows_in_input_order(tiny_model_factory, rows_file, tmp_path):
    path, rows = rows_file
    model_dir = str(tiny_model_factory("qwen2_vl"))
    out = tmp_path / "emb.npy"
    assert main(["encode", "--model", model_dir, "--input", str(path), "--output", str(out),
                 "--batch-size", "2", "--mode", "joint", "--dtype", "float32", "--no-progress"]) == 0
    got = np.load(out)
    model = unime.load(model_dir, mode="joint")
    for index, row in enumerate(rows):
        if "image" in row:
            row = {**row, "image": str(tmp_path / row["image"])}
        np.testing.assert_allclose(got[index], model.encode([row])[0], atol=1e-5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{not json}\n', "line 2: not valid JSON"),
        ('{"text": "ok"}\n{"image": "missing.png"}\n', "line 2: image file not found"),
        ('{"text": ""}\n', "line 1: empty text"),
        ('{"caption": "x"}\n', "line 1: unknown keys"),
        ("\n", "no rows to embed"),
    ],
)
def test_encode_rejects_bad_rows_naming_file_and_line(tiny_model_factory, tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    code = main(["encode", "--model", str(tiny_model_factory("qwen2_vl")), "--input", str(path),
                 "--output", str(tmp_path / "e.npy")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "bad.jsonl" in err
    assert not (tmp_path / "e.npy").exists()


def test_make_tiny_cli_builds_a_loadable_model_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["make-tiny", "--family", "llava_next", "--out", str(out)]) == 0
    assert unime.load(str(out)).backbone.family == "llava_next"
    assert main(["make-tiny", "--family", "llava_next", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["make-tiny", "--family", "phi3_v", "--out", str(tmp_path / "phi")]) == 2
    assert "remote code" in capsys.readouterr().err


def test_the_console_entry_point_runs(tiny_model_factory, rows_file, tmp_path):
    path, _ = rows_file
    result = subprocess.run(
        [sys.executable, "-m", "unime.cli", "encode", "--model", str(tiny_model_factory("llava")),
         "--input", str(path), "--output", str(tmp_path / "e.npy"), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "e.npy").shape[0] == 5
