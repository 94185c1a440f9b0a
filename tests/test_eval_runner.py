"""Resumable MMEB runs: a resumed run equals an uninterrupted one and re-encodes nothing cached."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import CountingModel, RandomModel, write_mmeb_suite

from unime.evaluation.common import input_key
from unime.evaluation.encoding import CachedEncoder
from unime.evaluation.mmeb import load_mmeb
from unime.evaluation.runner import RESULT_FILE, run_mmeb


@pytest.fixture
def suite(tmp_path):
    return write_mmeb_suite(tmp_path)


def _distinct_per_dataset(data_dir, image_dir) -> int:
    """Inputs to encode when each dataset encodes each of its distinct inputs once."""
    return sum(len({input_key(x) for x in [*d.queries, *d.pool]}) for d in load_mmeb(data_dir, image_dir))


def test_resumed_run_equals_uninterrupted_run(suite, tmp_path):
    data_dir, image_dir = suite
    reference = CountingModel(RandomModel())
    expected = run_mmeb(reference, data_dir, image_dir, tmp_path / "full", model_id="m", chunk_size=4)
    # Label names shared by two classification datasets are encoded once in each of them.
    assert reference.total == _distinct_per_dataset(data_dir, image_dir) < 2 * len(reference.counts)

    interrupted = CountingModel(RandomModel(), fail_after_calls=5)
    with pytest.raises(KeyboardInterrupt):
        run_mmeb(interrupted, data_dir, image_dir, tmp_path / "resume", model_id="m", chunk_size=4)
    # "Custom" (first in order) finished and stored its score; the next dataset stopped mid-way.
    assert (tmp_path / "resume" / "Custom" / RESULT_FILE).is_file()
    assert not (tmp_path / "resume" / "ImageNet-1K" / RESULT_FILE).exists()

    resumed = CountingModel(RandomModel())
    assert run_mmeb(resumed, data_dir, image_dir, tmp_path / "resume", model_id="m", chunk_size=4) == expected
    assert resumed.total + interrupted.total == reference.total

    again = CountingModel(RandomModel())
    assert run_mmeb(again, data_dir, image_dir, tmp_path / "resume", model_id="m", chunk_size=4) == expected
    assert again.total == 0


def test_cache_of_another_model_is_refused_until_overwrite(suite, tmp_path):
    data_dir, image_dir = suite
    run_mmeb(RandomModel(seed=1), data_dir, image_dir, tmp_path / "c", names=["Custom"], model_id="first")
    with pytest.raises(ValueError, match="belong to model 'first'.*--overwrite"):
        run_mmeb(
            RandomModel(seed=2), data_dir, image_dir, tmp_path / "c", names=["Custom"], model_id="second"
        )
    second = run_mmeb(
        RandomModel(seed=2),
        data_dir,
        image_dir,
        tmp_path / "c",
        names=["Custom"],
        model_id="second",
        overwrite=True,
    )
    fresh = run_mmeb(
        RandomModel(seed=2), data_dir, image_dir, tmp_path / "fresh", names=["Custom"], model_id="second"
    )
    assert second == fresh
    stored = json.loads((tmp_path / "c" / "Custom" / RESULT_FILE).read_text())
    assert stored["precision@1"] == second["mmeb/Custom/precision@1"]


def test_cached_encoder_returns_rows_in_input_order_across_chunks(tmp_path):
    model = RandomModel()
    items = [f"text {i}" for i in range(10)] + [{"image": "/x/a.png"}, "text 3"]
    encoder = CachedEncoder(model, tmp_path / "cache", model_id="m", chunk_size=3)
    assert (encoder.encode(items) == model.encode(items)).all()
    assert encoder.encoded == 11 and len(list((tmp_path / "cache").glob("chunk-*.safetensors"))) == 4
    reopened = CachedEncoder(model, tmp_path / "cache", model_id="m")
    assert (reopened.encode(items[::-1]) == model.encode(items[::-1])).all() and reopened.encoded == 0


def test_missing_image_folder_is_named(suite, tmp_path):
    data_dir, _ = suite
    with pytest.raises(FileNotFoundError, match="--image-dir"):
        run_mmeb(RandomModel(), data_dir, tmp_path / "nowhere", tmp_path / "c")


def test_model_identity_is_one_folder_however_typed_and_changes_when_retrained(tmp_path, monkeypatch):
    import os

    from unime.evaluation.runner import model_identity

    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "1_Pooling" / "config.json").write_text("{}")
    (folder / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    first = model_identity("model")
    assert first == model_identity(str(folder)) and first.startswith(str(folder.resolve()) + "@")
    (folder / "checkpoints" / "optimizer.json").write_text("{}")  # training leftovers do not count
    assert model_identity("model") == first
    (folder / "model.safetensors").write_bytes(b"retrained")
    os.utime(folder / "model.safetensors", ns=(1, 1))
    assert model_identity("model") != first
    assert model_identity("org/hub-model") == "org/hub-model"


def test_saved_scores_are_each_querys_cosines_in_data_order(suite, tmp_path):
    import numpy as np
    import pandas as pd

    from unime.evaluation.common import make_input
    from unime.evaluation.mmeb import MMEBProtocol

    data_dir, image_dir = suite
    protocol = MMEBProtocol("vlm2vec")
    metrics = run_mmeb(RandomModel(), data_dir, image_dir, tmp_path / "c", model_id="m", protocol=protocol,
                       save_scores=tmp_path / "scores")
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == ["Custom.npy", "ImageNet-1K.npy", "MSCOCO_t2i.npy"]
    reference = RandomModel()
    for name in ("ImageNet-1K", "MSCOCO_t2i"):
        saved = np.load(tmp_path / "scores" / f"{name}.npy")
        rows = pd.concat([pd.read_parquet(f) for f in sorted((data_dir / name).glob("*.parquet"))]).to_dict("records")
        assert saved.dtype == np.float32 and saved.shape == (len(rows), len(rows[0]["tgt_text"]))
        for i, row in enumerate(rows):  # written from the parquet rows, not from the reader's pool
            image = str((image_dir / row["qry_img_path"]).resolve()) if row["qry_img_path"] else None
            query = reference.encode([make_input(row["qry_text"], image)])[0]
            candidates = reference.encode([
                make_input(text, str((image_dir / path).resolve()) if path else None)
                for text, path in zip(row["tgt_text"], row["tgt_img_path"], strict=True)])
            np.testing.assert_allclose(saved[i], candidates @ query, atol=1e-6)
        hits = (np.argmax(saved, axis=1) == 0).mean() * 100
        assert metrics[f"mmeb/{name}/precision@1"] == pytest.approx(hits)
    # A second run with stored scores rewrites the files from the cached embeddings alone.
    (tmp_path / "scores" / "Custom.npy").unlink()
    counting = CountingModel(RandomModel())
    again = run_mmeb(counting, data_dir, image_dir, tmp_path / "c", model_id="m", protocol=protocol,
                     save_scores=tmp_path / "scores")
    assert again == metrics and counting.total == 0 and (tmp_path / "scores" / "Custom.npy").is_file()
    # Another tie rule rescores the cached embeddings; another protocol never reuses them.
    strict = run_mmeb(counting, data_dir, image_dir, tmp_path / "c", model_id="m",
                      protocol=MMEBProtocol("vlm2vec", ties="strict"))
    assert counting.total == 0 and strict.keys() == metrics.keys()
    with pytest.raises(ValueError, match="cached embeddings belong to model"):
        run_mmeb(RandomModel(), data_dir, image_dir, tmp_path / "c", model_id="m", protocol=MMEBProtocol("unime"))
    other = CountingModel(RandomModel())
    run_mmeb(other, data_dir, image_dir, tmp_path / "u", model_id="m", protocol=MMEBProtocol("unime"))
    assert other.total == _distinct_per_dataset(data_dir, image_dir)


def test_an_embed_input_keys_like_its_dict():
    from unime.evaluation.common import input_key
    from unime.inputs import EmbedInput

    assert input_key(EmbedInput(text="a dog")) == input_key({"text": "a dog"})
    assert input_key(EmbedInput(text="q", image="/x.png", instruction="i")) == input_key(
        {"text": "q", "image": "/x.png", "instruction": "i"})
