"""The demo's real-photo sets (unime.demo_photos): found, written, and read back by the readers that
stage 2, the MMEB evaluator and the retrieval evaluator use, with dev never in training."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import ConceptModel, write_image

from unime.demo_photos import RETRIEVAL_FILE, PhotoSizes, find_photos, photo_examples, prepare_photos
from unime.evaluation.mmeb import evaluate_mmeb, load_mmeb
from unime.evaluation.retrieval import evaluate_retrieval, load_retrieval
from unime.training.mmeb_data import load_mmeb_train

CONCEPTS = ("cat", "dog", "boat", "tree", "bird", "car", "kite", "horse")


@pytest.fixture
def flickr(tmp_path):
    """A Flickr8k-layout folder: 8 images (train 0-4, dev 5-7), 2 captions each."""
    folder = tmp_path / "flickr8k"
    for split, indices in (("train", range(5)), ("dev", range(5, 8))):
        rows = ["image,caption"]
        for i in indices:
            write_image(folder / "images" / f"{CONCEPTS[i]}_{i}.jpg", seed=i)
            rows += [f"{CONCEPTS[i]}_{i}.jpg,a photo of a {CONCEPTS[i]}", f"{CONCEPTS[i]}_{i}.jpg,a {CONCEPTS[i]}"]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_photos_are_found_where_given_and_a_wrong_folder_is_named(flickr, tmp_path, monkeypatch):
    assert find_photos(flickr) == flickr.resolve()
    with pytest.raises(FileNotFoundError, match=r"--photos .*: not a Flickr8k folder \(missing .*dev.csv"):
        (flickr / "dev.csv").rename(tmp_path / "moved.csv")
        find_photos(flickr)
    monkeypatch.chdir(tmp_path)
    assert find_photos(None) is None  # no ../shared/data/flickr8k from here: synthetic sets only


def test_prepared_sets_read_back_and_dev_is_never_trained_on(flickr, tmp_path):
    data = tmp_path / "data"
    counts = prepare_photos(flickr, data, PhotoSizes(train_images=4, dev_images=3, mmeb_queries=3, mmeb_candidates=2))
    assert counts == {"train_pairs": 4, "mmeb_queries": 3, "retrieval_images": 3, "retrieval_captions": 6}
    train = load_mmeb_train(str(data / "mmeb_train"), str(tmp_path))
    images = {row["query"]["image"] for row in train.datasets["Flickr8k_i2t"]}
    assert len(images) == 4 and all("_5" not in i and "_6" not in i and "_7" not in i for i in images)
    dev = load_retrieval(data / "retrieval" / RETRIEVAL_FILE, data / "retrieval", name="flickr8k")
    assert len(dev.images) == 3 and len(dev.captions) == 6
    assert evaluate_retrieval(ConceptModel(), [dev])["retrieval/flickr8k/i2t_R@1"] == 100.0
    splits = json.loads((data / "mmeb_eval" / "splits.json").read_text())
    groups = {name: (g["meta_task"], g["split"]) for name, g in splits.items()}
    scores = evaluate_mmeb(ConceptModel(), load_mmeb(data / "mmeb_eval", data / "images"), groups=groups)
    assert scores["mmeb/Flickr8k_i2t/precision@1"] == scores["mmeb/Flickr8k_t2i/precision@1"] == 100.0
    assert [p.rsplit("/", 1)[-1] for p in photo_examples(data, 2)] == [f"{CONCEPTS[5]}_5.jpg", f"{CONCEPTS[6]}_6.jpg"]
