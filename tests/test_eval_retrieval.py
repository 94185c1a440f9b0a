"""Image-text retrieval: Recall@K by hand, tie handling, and every supported layout."""

from __future__ import annotations

import pytest
from eval_fixtures import (
    ConceptModel,
    ConstantModel,
    LookupModel,
    karpathy_images,
    write_image,
    write_karpathy,
    write_sharegpt4v,
    write_table,
    write_urban1k,
)

from unime.evaluation.retrieval import (
    RetrievalDataset,
    evaluate_retrieval,
    load_retrieval,
    recall_from_ranks,
    retrieval_ranks,
)


def _hand_dataset(tmp_path):
    images = [str(write_image(tmp_path / f"i{k}.png", seed=k)) for k in range(3)]
    return RetrievalDataset("hand", images, ["a", "b", "c", "d"], [0, 0, 1, 2])


def test_recall_hand_computed(tmp_path):
    # Similarities worked out in docs/evaluation.md, "Retrieval" (its worked retrieval example).
    model = LookupModel(
        {
            "i0.png": [1, 0],
            "i1.png": [0, 1],
            "i2.png": [1, 1],
            "a": [1, 0.1],
            "b": [0.2, 1],
            "c": [0.9, 1],
            "d": [1, 1],
        }
    )
    metrics = evaluate_retrieval(model, [_hand_dataset(tmp_path)])
    assert metrics["retrieval/hand/t2i_R@1"] == pytest.approx(50.0)
    assert metrics["retrieval/hand/t2i_R@5"] == 100.0
    assert metrics["retrieval/hand/i2t_R@1"] == pytest.approx(200 / 3)
    assert metrics["retrieval/hand/i2t_R@10"] == 100.0
    assert metrics["retrieval/mean_R@1"] == pytest.approx((50 + 200 / 3) / 2)


def _hand_model():
    return LookupModel({"i0.png": [1, 0], "i1.png": [0, 1], "i2.png": [1, 1],
                        "a": [1, 0.1], "b": [0.2, 1], "c": [0.9, 1], "d": [1, 1]})


def test_per_query_ranks_are_what_recall_averages(tmp_path):
    # The worked example's ranks (docs/evaluation.md): I1's caption c is beaten by b; b ranks two
    # images above its own, c one.
    ranks = retrieval_ranks(_hand_model(), _hand_dataset(tmp_path))
    assert ranks["i2t"].tolist() == [0, 1, 0] and ranks["t2i"].tolist() == [0, 2, 1, 0]
    metrics = evaluate_retrieval(_hand_model(), [_hand_dataset(tmp_path)])
    assert {f"retrieval/hand/{key}": value for key, value in recall_from_ranks(ranks).items()} == {
        key: value for key, value in metrics.items() if key.startswith("retrieval/hand/")}


def test_ties_count_against_the_model(tmp_path):
    metrics = evaluate_retrieval(ConstantModel(), [_hand_dataset(tmp_path)])
    assert metrics["retrieval/hand/t2i_R@1"] == 0.0 and metrics["retrieval/hand/i2t_R@1"] == 0.0
    # With 3 images every caption ranks at worst third: R@5 is a hit even for a constant model.
    assert metrics["retrieval/hand/t2i_R@5"] == 100.0


def _check_oracle(dataset, images, captions):
    assert (len(dataset.images), len(dataset.captions)) == (images, captions)
    metrics = evaluate_retrieval(ConceptModel(), [dataset])
    assert all(value == 100.0 for value in metrics.values())
    constant = evaluate_retrieval(ConstantModel(), [dataset])
    assert constant[f"retrieval/{dataset.name}/i2t_R@1"] == 0.0


def test_karpathy_test_split_with_several_captions_per_image(tmp_path):
    entries = karpathy_images(tmp_path / "images", 4, per_image=3) + karpathy_images(
        tmp_path / "images", 1, split="train"
    )
    path = write_karpathy(tmp_path / "dataset_coco.json", entries)
    dataset = load_retrieval(path, tmp_path / "images")
    assert dataset.name == "coco" and dataset.caption_image.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    _check_oracle(dataset, 4, 12)
    with pytest.raises(ValueError, match="no images in split 'val'"):
        load_retrieval(path, tmp_path / "images", split="val")


def test_karpathy_keeps_the_first_five_captions_of_each_image_as_the_official_scripts(tmp_path):
    # Some COCO test images have 6 or 7 captions; the official evaluation cuts every image to 5.
    entries = karpathy_images(tmp_path / "images", 2, per_image=7)
    path = write_karpathy(tmp_path / "dataset_coco.json", entries)
    dataset = load_retrieval(path, tmp_path / "images")
    assert dataset.caption_image.tolist() == [0] * 5 + [1] * 5
    assert dataset.captions[:5] == [f"caption number {k} shows a thing0" for k in range(5)]
    assert len(load_retrieval(path, tmp_path / "images", captions_per_image=None).captions) == 14
    with pytest.raises(ValueError, match="captions_per_image"):
        load_retrieval(path, tmp_path / "images", captions_per_image=0)


def test_karpathy_missing_image_is_named(tmp_path):
    entries = karpathy_images(tmp_path / "images", 2)
    entries[1]["filename"] = "gone.jpg"
    path = write_karpathy(tmp_path / "dataset_flickr30k.json", entries)
    with pytest.raises(FileNotFoundError, match=r"images\[1\]: filename: image 'val2014/gone.jpg'"):
        load_retrieval(path, tmp_path / "images")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".tsv"])
def test_table_rows_sharing_an_image_are_grouped(tmp_path, suffix):
    for k in range(3):
        write_image(tmp_path / "img" / f"obj{k}_x.png", seed=k)
    rows = [
        {"image": "img/obj0_x.png", "caption": "first view of obj0"},
        {"image": "img/obj1_x.png", "caption": "this is obj1"},
        {"image": "img/obj0_x.png", "caption": "second view of obj0"},
        {"image": "img/obj2_x.png", "caption": "and obj2"},
    ]
    dataset = load_retrieval(write_table(tmp_path / f"pairs{suffix}", rows))
    assert dataset.caption_image.tolist() == [0, 1, 0, 2]
    _check_oracle(dataset, 3, 4)


def test_table_missing_column_is_named(tmp_path):
    path = write_table(tmp_path / "pairs.csv", [{"image": "a.png", "text": "x"}])
    with pytest.raises(ValueError, match=r"pairs.csv: line 2: missing field\(s\) \['caption'\]"):
        load_retrieval(path)


def test_sharegpt4v_takes_the_first_entries(tmp_path):
    pairs = []
    for k in range(5):
        write_image(tmp_path / "coco" / "train2017" / f"pic{k}_0.jpg", seed=k)
        pairs.append((f"coco/train2017/pic{k}_0.jpg", f"A detailed description. It shows pic{k}."))
    path = write_sharegpt4v(tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json", pairs)
    dataset = load_retrieval(path, tmp_path, limit=3)
    assert dataset.name == "sharegpt4v"
    _check_oracle(dataset, 3, 3)


def test_sharegpt4v_without_answer_is_named(tmp_path):
    write_image(tmp_path / "a_0.jpg")
    path = write_sharegpt4v(tmp_path / "share.json", [("a_0.jpg", "x")])
    path.write_text(path.read_text().replace('"gpt"', '"human"'))
    with pytest.raises(ValueError, match="entry 0: conversations has no 'gpt' turn"):
        load_retrieval(path, tmp_path)


@pytest.mark.parametrize("split_layout", [True, False])
def test_urban1k_both_layouts(tmp_path, split_layout):
    captions = [f"A long caption describing picture {i}" for i in range(1, 12)]
    folder = write_urban1k(tmp_path / "Urban1k", captions, split_layout=split_layout)
    dataset = load_retrieval(folder)
    assert dataset.name == "urban1k"
    # Natural order: 2.jpg before 10.jpg.
    assert [p.rsplit("/", 1)[1] for p in dataset.images[:3]] == ["1.jpg", "2.jpg", "3.jpg"]
    assert dataset.captions[9] == captions[9]
    _check_oracle(dataset, 11, 11)


def test_urban1k_missing_caption_is_named(tmp_path):
    folder = write_urban1k(tmp_path / "Urban1k", ["a 1", "a 2"])
    (folder / "caption" / "2.txt").unlink()
    with pytest.raises(FileNotFoundError, match="image 2.jpg has no caption file"):
        load_retrieval(folder)
