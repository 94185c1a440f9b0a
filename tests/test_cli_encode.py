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


@pytest.mark.parametrize("mode", ["joint", "sum"])
def test_encode_dimensions_cut_the_full_embedding_and_renormalise(tiny_model_factory, rows_file, tmp_path, mode):
    path, _ = rows_file
    model_dir = str(tiny_model_factory("qwen2_vl"))
    full, cut = tmp_path / "full.npy", tmp_path / "cut.npy"
    common = ["--model", model_dir, "--input", str(path), "--batch-size", "2", "--mode", mode, "--dtype", "float32",
              "--no-progress"]
    assert main(["encode", *common, "--output", str(full)]) == 0
    with pytest.warns(UserWarning, match="dimensions 16 was not optimised in training"):
        assert main(["encode", *common, "--output", str(cut), "--dimensions", "16"]) == 0
    whole, got = np.load(full), np.load(cut)
    assert got.shape == (5, 16)
    expected = whole[:, :16] / np.linalg.norm(whole[:, :16], axis=1, keepdims=True)
    # In sum mode the parts are summed and normalised at full size first, then cut: not a sum of cut parts.
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_dimensions_beyond_the_width_or_not_positive_are_refused(tiny_model_factory, rows_file, tmp_path, capsys):
    path, _ = rows_file
    common = ["encode", "--model", str(tiny_model_factory("qwen2_vl")), "--input", str(path), "--output",
              str(tmp_path / "x.npy"), "--no-progress"]
    assert main([*common, "--dimensions", "65"]) == 2
    assert "dimensions 65 exceeds the model's embedding size 64" in capsys.readouterr().err
    assert main([*common, "--dimensions", "0"]) == 2
    assert "--dimensions must be positive" in capsys.readouterr().err


def test_trained_sizes_are_recorded_and_truncate_without_warning(tiny_model_factory):
    import warnings

    from unime.evaluation.runner import cache_identity

    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    model.update_config(matryoshka_dims=[16, 64, 32])
    assert model.unime_config.matryoshka_dims == [64, 32, 16]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_dimensions(32)
    assert model.get_embedding_dimension() == 32 and model.encode(["a dog"]).shape == (1, 32)
    # Evaluation caches are keyed by the size: a cut model never reads full-size embeddings.
    assert cache_identity("m", None, model) == "m dimensions=32"
    model.set_dimensions(64)  # the full size: nothing cut
    assert model.dimensions is None and cache_identity("m", None, model) == "m"
