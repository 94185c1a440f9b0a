"""The demo's real-photo sets (unime.data.photos): found, written, and read back by the readers that
stage 2, the MMEB evaluator and the retrieval evaluator use, with dev never in training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from eval_fixtures import ConceptModel, write_image

import unime
from unime.data import photos as demo_photos
from unime.data.photos import (
    RETRIEVAL_FILE,
    SHIPPED_PHOTOS,
    PhotoSizes,
    find_photos,
    photo_examples,
    prepare_photos,
)
from unime.demo.run import PRESETS
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


# The subset that ships in src/unime/assets/flickr8k (scripts/make_photo_subset.py).
SUBSET_IMAGES = {"train": 600, "dev": 400}
SUBSET_BUDGET = 20 * 10**6  # bytes


def test_photos_are_found_where_given_and_a_wrong_folder_is_named(flickr, tmp_path, monkeypatch):
    assert find_photos(flickr) == flickr.resolve()
    (flickr / "dev.csv").rename(tmp_path / "moved.csv")
    with pytest.raises(FileNotFoundError, match=r"--photos .*: not a Flickr8k folder \(missing dev.csv\)"):
        find_photos(flickr)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "images").write_text("a file, not a folder")
    with pytest.raises(FileNotFoundError, match=r"--photos .*empty: not a Flickr8k folder "
                                                r"\(missing train.csv, dev.csv, images/\)"):
        find_photos(tmp_path / "empty")


def test_the_default_is_the_shipped_subset_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ../shared from here: the photos come from the package
    assert find_photos(None) == find_photos() == SHIPPED_PHOTOS
    assert SHIPPED_PHOTOS == Path(unime.__file__).resolve().parent / "assets" / "flickr8k"
    monkeypatch.setattr(demo_photos, "SHIPPED_PHOTOS", tmp_path)  # a broken install is named, not skipped
    with pytest.raises(FileNotFoundError, match=r"ships with unime is incomplete .*missing train.csv, dev.csv, "
                                                r"images/\): reinstall unime, or give --photos DIR"):
        find_photos(None)


def _subset_rows(split: str) -> list[dict[str, str]]:
    with (SHIPPED_PHOTOS / f"{split}.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_shipped_subset_has_its_images_all_captions_a_clean_dev_split_and_fits_the_budget():
    images = {}
    for split, count in SUBSET_IMAGES.items():
        rows = _subset_rows(split)
        assert all(set(row) == {"image", "caption"} and row["caption"].strip() for row in rows)
        names = list(dict.fromkeys(row["image"] for row in rows))
        assert len(names) == count and len(rows) == 5 * count  # every image with all 5 captions
        assert all((SHIPPED_PHOTOS / "images" / name).is_file() for name in names)
        images[split] = set(names)
    assert not images["train"] & images["dev"]  # dev is never trained on
    files = sorted((SHIPPED_PHOTOS / "images").iterdir())
    assert {path.name for path in files} == images["train"] | images["dev"]  # no photo without captions
    total = sum(path.stat().st_size for path in SHIPPED_PHOTOS.rglob("*") if path.is_file())
    assert total < SUBSET_BUDGET
    readme = (SHIPPED_PHOTOS / "README.md").read_text(encoding="utf-8")
    assert f"({total:,} bytes)" in readme  # the size it states is the size it has
    assert "Hodosh" in readme and "research use" in readme and "--photos DIR" in readme


def test_the_demo_presets_ask_for_no_more_photos_than_the_subset_has(tmp_path):
    sized = {name: preset.photos for name, preset in PRESETS.items() if preset.photos is not None}
    assert sized  # the seeing preset uses photos
    for name, sizes in sized.items():
        assert sizes.train_images <= SUBSET_IMAGES["train"] and sizes.dev_images <= SUBSET_IMAGES["dev"], name
        assert sizes.mmeb_candidates <= sizes.mmeb_queries <= sizes.dev_images, name
        counts = prepare_photos(find_photos(None), tmp_path / name, sizes)
        assert counts == {"train_pairs": sizes.train_images, "mmeb_queries": sizes.mmeb_queries,
                          "retrieval_images": sizes.dev_images, "retrieval_captions": 5 * sizes.dev_images}
        dev = {row["image"] for row in _subset_rows("dev")}
        assert {Path(path).name for path in photo_examples(tmp_path / name, 3)} <= dev


def test_a_folder_smaller_than_the_sizes_gives_what_it_has(flickr, tmp_path):
    counts = prepare_photos(flickr, tmp_path / "data", PRESETS["seeing"].photos)
    assert counts == {"train_pairs": 5, "mmeb_queries": 3, "retrieval_images": 3, "retrieval_captions": 6}
    one_dev = PhotoSizes(train_images=4, dev_images=1, mmeb_queries=1, mmeb_candidates=1)
    with pytest.raises(ValueError, match=r"dev.csv: 1 image\(s\); the MMEB-style sets need at least 2"):
        prepare_photos(flickr, tmp_path / "one", one_dev)


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


def test_the_seeing_preset_scores_exactly_its_real_image_mmeb_sets(tmp_path):
    from unime.demo.run import _evaluate
    from unime.synth import SynthConfig, generate

    preset = PRESETS["seeing"]
    data = tmp_path / "data"
    generate(data, SynthConfig(seed=0, **preset.synth))
    prepare_photos(find_photos(None), data, preset.photos)
    assert all((data / "mmeb_eval" / name).is_dir() for name in preset.mmeb_datasets)
    metrics, _ = _evaluate(ConceptModel(), data, 32, ("mmeb",), preset.mmeb_datasets)
    scored = {key.split("/")[1] for key in metrics if (data / "mmeb_eval" / key.split("/")[1]).is_dir()}
    assert scored == set(preset.mmeb_datasets)
    assert len([p for p in (data / "mmeb_eval").iterdir() if p.is_dir()]) > len(scored)  # others were left out
