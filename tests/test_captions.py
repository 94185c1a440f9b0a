"""`unime data captions`: image-caption files into MMEB-train pairs and MMEB-eval retrieval sets that
the stage-2 reader and the MMEB evaluator read back, with the oracle scoring 100."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import ConceptModel, RandomModel, write_image

from unime.cli import main
from unime.data.captions import I2T_QUERY, IMAGE_TARGET, T2I_QUERY, read_caption_pairs
from unime.evaluation.mmeb import evaluate_mmeb, load_mmeb
from unime.training.mmeb_data import load_mmeb_train

CONCEPTS = ("cat", "dog", "boat", "tree", "bird", "car")


@pytest.fixture
def caption_file(tmp_path):
    images = tmp_path / "images"
    rows = ["image,caption"]
    for i, concept in enumerate(CONCEPTS):
        write_image(images / f"{concept}_{i}.jpg", seed=i)
        rows += [f"{concept}_{i}.jpg,a photo of a {concept}", f'{concept}_{i}.jpg,"another view, of a {concept}"']
    path = tmp_path / "captions.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, images


def test_train_pairs_are_read_back_by_the_stage2_reader(caption_file, tmp_path, capsys):
    path, images = caption_file
    out = tmp_path / "train"
    argv = ["data", "captions", "--data", str(path), "--image-dir", str(images), "--output-dir", str(out), "--train"]
    assert main([*argv, "--captions-per-image", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == {"Flickr8k_i2t": 6, "Flickr8k_t2i": 6}
    data = load_mmeb_train(str(out), str(images))
    assert sorted(data.datasets) == ["Flickr8k_i2t", "Flickr8k_t2i"]
    i2t, t2i = data.datasets["Flickr8k_i2t"][0], data.datasets["Flickr8k_t2i"][0]
    assert i2t["query"]["text"] == I2T_QUERY and i2t["query"]["image"].endswith("cat_0.jpg")
    assert i2t["positive"]["text"] == "a photo of a cat"
    assert t2i["query"]["text"] == T2I_QUERY.format("a photo of a cat") and t2i["positive"]["text"] == IMAGE_TARGET
    assert main(argv) == 0  # all captions: 2 per image
    assert json.loads(capsys.readouterr().out)["rows"]["Flickr8k_i2t"] == 12


def test_eval_sets_put_the_positive_first_and_score_as_mmeb(caption_file, tmp_path, capsys):
    path, images = caption_file
    out = tmp_path / "eval"
    assert main(["data", "captions", "--data", str(path), "--image-dir", str(images), "--output-dir", str(out),
                 "--eval", "--candidates", "4", "--name", "Caps"]) == 0
    groups = {name: (g["meta_task"], g["split"]) for name, g in json.loads((out / "splits.json").read_text()).items()}
    assert groups == {"Caps_i2t": ("retrieval", "OOD"), "Caps_t2i": ("retrieval", "OOD")}
    sets = load_mmeb(out, images)
    assert [len(s.queries) for s in sets] == [6, 6] and all(len(t) == 4 for s in sets for t in s.targets)
    oracle = evaluate_mmeb(ConceptModel(), sets, groups=groups)
    assert oracle["mmeb/Caps_i2t/precision@1"] == oracle["mmeb/Caps_t2i/precision@1"] == 100.0
    assert evaluate_mmeb(RandomModel(), sets, groups=groups)["mmeb/overall/precision@1"] < 100.0


def test_bad_caption_rows_are_named_by_file_and_line(caption_file, tmp_path):
    path, images = caption_file
    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines[:3] + ["missing_9.jpg,a photo of nothing"]) + "\n")
    with pytest.raises(FileNotFoundError, match=r"bad.csv: line 4: image: image 'missing_9.jpg' not found"):
        read_caption_pairs(bad, images)
    bad.write_text("\n".join(lines[:2] + ["cat_0.jpg,"]) + "\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 3: empty caption"):
        read_caption_pairs(bad, images)
    bad.write_text("picture,text\ncat_0.jpg,a cat\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 2: missing field\(s\) \['image', 'caption'\]"):
        read_caption_pairs(bad, images)
    with pytest.raises(ValueError, match="--candidates must be between 2 and the number of images"):
        from unime.data.captions import write_eval_sets

        write_eval_sets(read_caption_pairs(path, images), tmp_path / "e", "X", candidates=7)
