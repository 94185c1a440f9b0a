"""End to end on a real (tiny, random) Qwen2-VL: ``unime eval mmeb`` and ``unime eval retrieval``."""

from __future__ import annotations

import json

from eval_fixtures import karpathy_images, write_karpathy, write_mmeb_suite

from unime import cli


def _main(monkeypatch, argv):
    return cli.main(argv)


def test_eval_commands_on_a_tiny_model(tiny_model_factory, tmp_path, monkeypatch):
    model = str(tiny_model_factory("qwen2_vl"))
    data_dir, image_dir = write_mmeb_suite(tmp_path)
    argv = [
        "eval",
        "mmeb",
        "--model",
        model,
        "--data-dir",
        str(data_dir),
        "--image-dir",
        str(image_dir),
        "--output",
        str(tmp_path / "mmeb.json"),
        "--batch-size",
        "8",
        "--no-progress",
    ]
    assert _main(monkeypatch, argv) == 0
    result = json.loads((tmp_path / "mmeb.json").read_text())
    first = result["metrics"]
    # The default protocol is VLM2Vec's, resolved for the backbone and recorded with the result.
    protocol = result["config"]["protocol"]
    assert (protocol["name"], protocol["family"], protocol["mode"]) == ("vlm2vec", "qwen2_vl", "joint")
    assert protocol["input_format"]["style"] == "raw" and protocol["input_format"]["image_resize"] == "1344x1344"
    assert set(first) >= {
        "mmeb/ImageNet-1K/precision@1",
        "mmeb/MSCOCO_t2i/precision@1",
        "mmeb/Custom/precision@1",
        "mmeb/classification/precision@1",
        "mmeb/retrieval/precision@1",
        "mmeb/overall/precision@1",
    }
    assert all(0.0 <= value <= 100.0 for value in first.values())
    assert len(list((tmp_path / "mmeb.cache" / "ImageNet-1K").glob("chunk-*.safetensors"))) == 1
    # The resumed run reads every score from the cache and reports the same table.
    assert _main(monkeypatch, argv) == 0
    assert json.loads((tmp_path / "mmeb.json").read_text())["metrics"] == first

    path = write_karpathy(tmp_path / "dataset_flickr30k.json", karpathy_images(tmp_path / "images", 4))
    assert (
        _main(
            monkeypatch,
            [
                "eval",
                "retrieval",
                "--model",
                model,
                "--data",
                str(path),
                "--image-dir",
                str(tmp_path / "images"),
                "--output",
                str(tmp_path / "r.json"),
                "--no-progress",
            ],
        )
        == 0
    )
    recall = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert recall["retrieval/flickr30k/i2t_R@5"] == 100.0  # 4 images: R@5 always hits
    assert 0.0 <= recall["retrieval/flickr30k/t2i_R@1"] <= 100.0
