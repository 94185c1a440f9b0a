"""MMEB-train reading, validation, batching one data set at a time, and the row-naming collator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset

from unime.inputs import EmbedInput
from unime.training.mmeb_data import (
    DatasetBatchSampler,
    MMEBTrainCollator,
    batch_sampler_factory,
    content_id,
    discover,
    load_mmeb_train,
)

I2T = "<|image_1|>\nRepresent the given image with the following question: what is it?\n"
IMAGE_TARGET = "<|image_1|>\nRepresent the given image.\n"


def _png(path: Path, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.name


def _vqa_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"qry": I2T, "qry_image_path": f"img/{i}.png", "pos_text": f"answer {i}", "pos_image_path": "",
             "neg_text": "", "neg_image_path": ""} for i in range(start, start + n)]


def _t2i_rows(n: int) -> list[dict[str, str]]:
    return [{"qry": f"Find me an everyday image that matches the given caption: scene {i}", "qry_image_path": "",
             "pos_text": IMAGE_TARGET, "pos_image_path": f"img/{i}.png", "neg_text": IMAGE_TARGET,
             "neg_image_path": f"img/{(i + 1) % n}.png"} for i in range(n)]


def _parquet(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def layout(tmp_path) -> tuple[Path, Path]:
    """``data/VQA/{a,b}.parquet`` (6 + 4 rows), ``data/T2I/train.jsonl`` (8 rows), images under ``images/img``."""
    images = tmp_path / "images"
    for i in range(10):
        _png(images / "img" / f"{i}.png", i)
    data = tmp_path / "data"
    _parquet(data / "VQA" / "a.parquet", _vqa_rows(6))
    _parquet(data / "VQA" / "b.parquet", _vqa_rows(4, start=6))
    _jsonl(data / "T2I" / "train.jsonl", _t2i_rows(8))
    return data, images


def test_each_sub_folder_or_loose_file_is_one_dataset(layout, tmp_path):
    data, _ = layout
    _jsonl(data / "Loose.jsonl", _vqa_rows(2))
    sources = {s.name: [f.name for f in s.files] for s in discover(data)}
    assert sources == {"Loose": ["Loose.jsonl"], "T2I": ["train.jsonl"], "VQA": ["a.parquet", "b.parquet"]}
    assert [s.name for s in discover(data, ["VQA", "Loose"])] == ["VQA", "Loose"]
    assert [s.name for s in discover(data / "Loose.jsonl")] == ["Loose"]
    with pytest.raises(ValueError, match=r"no data set named Nope \(found: Loose, T2I, VQA\)"):
        discover(data, ["Nope"])
    with pytest.raises(FileNotFoundError, match="--data"):
        discover(tmp_path / "missing")


def test_rows_become_query_positive_and_negative_with_absolute_image_paths(layout):
    data, images = layout
    loaded = load_mmeb_train(data, images)
    assert list(loaded.datasets) == ["T2I", "VQA"]
    vqa, t2i = loaded.datasets["VQA"], loaded.datasets["T2I"]
    assert len(vqa) == 10 and len(t2i) == 8
    # VQA has no explicit negatives (all empty); T2I has one on every row.
    assert vqa.column_names == ["query", "positive", "row"]
    assert t2i.column_names == ["query", "positive", "negative", "row"]
    assert vqa[7]["query"] == {"text": I2T, "image": str(images / "img" / "7.png")}
    assert vqa[7]["positive"] == {"text": "answer 7", "image": ""}
    assert vqa[7]["row"] == "dataset VQA, b.parquet row 1"
    assert t2i[2]["negative"]["image"] == str(images / "img" / "3.png")
    assert t2i[2]["row"] == "dataset T2I, train.jsonl line 3"
    assert loaded.summary()["T2I"] == {"rows": 8, "skipped": 0, "explicit_negatives": True}
    assert "negative" not in load_mmeb_train(data, images, explicit_negatives=False).datasets["T2I"].column_names


def test_the_cap_keeps_the_first_rows_and_ignores_rows_past_it(layout):
    data, images = layout
    rows = _vqa_rows(5)
    rows[4]["qry_image_path"] = "img/missing.png"  # past the cap: never examined
    _parquet(data / "VQA" / "b.parquet", rows)
    loaded = load_mmeb_train(data, images, datasets=["VQA"], max_rows_per_dataset=9)
    assert [r["positive"]["text"] for r in loaded.datasets["VQA"]] == [f"answer {i}" for i in range(6)] + [
        "answer 0", "answer 1", "answer 2"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"qry_image_path": "img/missing.png"}, "image file not found: .*missing.png"),
        ({"qry": "", "qry_image_path": ""}, "empty query"),
        ({"pos_text": "  ", "pos_image_path": ""}, "empty positive"),
        ({"qry_image_path": ""}, r"refers to an image \(<\|image_1\|>\) but qry_image_path is empty"),
        ({"qry_image_path": "img/corrupt.png"}, "cannot read image .*corrupt.png"),
    ],
)
def test_a_bad_row_is_an_error_naming_dataset_file_and_row(layout, change, message):
    data, images = layout
    (images / "img" / "corrupt.png").write_bytes(b"not a png at all")
    rows = _vqa_rows(4, start=6)
    rows[2].update(change)
    _parquet(data / "VQA" / "b.parquet", rows)
    with pytest.raises(ValueError) as info:
        load_mmeb_train(data, images)
    assert str(info.value).startswith("dataset VQA, b.parquet row 2: ")
    assert info.match(message)


def test_skip_bad_rows_leaves_them_out_and_counts_them(layout, caplog):
    data, images = layout
    rows = _t2i_rows(8)
    rows[1]["pos_image_path"] = "img/missing.png"
    rows[5]["qry"] = ""
    _jsonl(data / "T2I" / "train.jsonl", rows)
    (data / "T2I" / "train.jsonl").open("a").write("{broken json\n")
    with pytest.raises(ValueError, match="dataset T2I, train.jsonl line 2: image file not found"):
        load_mmeb_train(data, images)
    loaded = load_mmeb_train(data, images, skip_bad_rows=True)
    assert loaded.skipped == {"T2I": 3, "VQA": 0}
    assert len(loaded.datasets["T2I"]) == 6
    assert "line 9: not valid JSON" in caplog.text and "dataset T2I: skipped 3 bad rows" in caplog.text


def test_layout_errors_are_never_skipped(layout):
    data, images = layout
    rows = _vqa_rows(3)
    rows[0]["label"] = "x"
    _parquet(data / "VQA" / "a.parquet", rows)
    with pytest.raises(ValueError, match=r"dataset VQA, a.parquet: unknown column\(s\) label"):
        load_mmeb_train(data, images, skip_bad_rows=True)
    _parquet(data / "VQA" / "a.parquet", [{"qry": "q", "qry_image_path": ""}])
    with pytest.raises(ValueError, match=r"dataset VQA, a.parquet: missing column\(s\) pos_text"):
        load_mmeb_train(data, images, skip_bad_rows=True)


def test_a_dataset_without_rows_is_an_error(layout):
    data, images = layout
    _jsonl(data / "T2I" / "train.jsonl", [])
    with pytest.raises(ValueError, match=r"dataset T2I \(.*train.jsonl\) has no rows"):
        load_mmeb_train(data, images)
    rows = _t2i_rows(2)
    for row in rows:
        row["pos_image_path"] = "img/missing.png"
    _jsonl(data / "T2I" / "train.jsonl", rows)
    with pytest.raises(ValueError, match=r"has no rows \(all 2 rows were bad; the first: "):
        load_mmeb_train(data, images, skip_bad_rows=True)


def test_explicit_negatives_are_used_only_when_every_row_has_one(layout, caplog):
    data, images = layout
    rows = _t2i_rows(8)
    rows[3]["neg_text"], rows[3]["neg_image_path"] = "", ""
    _jsonl(data / "T2I" / "train.jsonl", rows)
    loaded = load_mmeb_train(data, images)
    assert "negative" not in loaded.datasets["T2I"].column_names
    assert "7 of 8 rows have an explicit negative" in caplog.text


def test_collator_builds_typed_inputs_and_names_a_row_whose_image_breaks_later(layout):
    data, images = layout
    loaded = load_mmeb_train(data, images)
    seen: list[list] = []

    def preprocess(inputs, prompt=None, **kwargs):
        seen.append(list(inputs))
        return {"input_ids": torch.zeros(len(inputs), 1, dtype=torch.long)}

    collator = MMEBTrainCollator(preprocess_fn=preprocess)
    rows = [loaded.datasets["T2I"][i] for i in range(3)]
    batch = collator(rows)
    assert sorted(batch) == ["label", "negative_input_ids", "positive_input_ids", "query_input_ids"]
    query, positive, negative = seen
    assert query[0] == EmbedInput(text="Find me an everyday image that matches the given caption: scene 0")
    assert positive[0].text == IMAGE_TARGET and isinstance(positive[0].image, Image.Image)
    # The label holds the content ids of the positive and the negative of each row.
    expected = [[content_id(row[side]["text"], row[side]["image"]) for side in ("positive", "negative")]
                for row in rows]
    assert batch["label"].tolist() == expected and batch["label"].dtype == torch.int64
    # A file that passed the header check but is truncated fails when decoded, naming its row.
    path = images / "img" / "2.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"dataset T2I, train.jsonl line 2: cannot read image .*2.png"):
        collator(rows)
    skipping = MMEBTrainCollator(preprocess_fn=preprocess, skip_bad_rows=True)
    seen.clear()
    skipping(rows)
    assert len(seen[0]) == 1 and skipping.skipped == 2  # rows 1 and 2 both use 2.png


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _sampler(sizes, batch, seed=0, **kwargs) -> DatasetBatchSampler:
    from torch.utils.data import BatchSampler, RandomSampler

    generator = torch.Generator()
    datasets = [_Sized(n) for n in sizes]
    samplers = [BatchSampler(RandomSampler(d, generator=generator), batch, drop_last=True) for d in datasets]
    return DatasetBatchSampler(ConcatDataset(datasets), samplers, generator, seed, **kwargs)


def _owner(index: int, sizes) -> int:
    return int(np.searchsorted(np.cumsum(sizes), index, side="right"))


def test_every_batch_comes_from_one_dataset_and_ranks_share_it():
    sizes = [40, 24, 16]
    sampler = _sampler(sizes, batch=4, group=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (5 + 3 + 2) * 2
    owners = [{_owner(i, sizes) for i in batch} for batch in batches]
    assert all(len(o) == 1 for o in owners)
    # Rank r gets batches r, r + 2, ...: the two batches of each step come from the same data set.
    assert all(owners[i] == owners[i + 1] for i in range(0, len(owners), 2))
    assert sum(len(b) for b in batches) == 80 and len({i for b in batches for i in b}) == 80
    assert list(_sampler(sizes, batch=4, group=2)) == batches  # same seed and epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_under_accelerate_both_ranks_draw_each_step_from_the_same_dataset():
    from accelerate.data_loader import BatchSamplerShard

    sizes = [40, 24, 16]
    shards = [list(BatchSamplerShard(_sampler(sizes, batch=4, group=2), num_processes=2, process_index=rank,
                                     split_batches=False, even_batches=False)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 10
    for first, second in zip(*shards, strict=True):
        assert {_owner(i, sizes) for i in first + second} == {_owner(first[0], sizes)}
    assert not set(sum(shards[0], [])) & set(sum(shards[1], []))


def test_weights_scale_a_datasets_share_of_batches():
    sizes = [40, 40]
    batches = list(_sampler(sizes, batch=4, weights=[2.0, 0.5]))
    counts = np.bincount([_owner(b[0], sizes) for b in batches], minlength=2).tolist()
    assert counts == [20, 5]  # 10 batches each, times 2 (cycled once more) and times 0.5
    first = [b for b in batches if _owner(b[0], sizes) == 0]
    assert sorted(i for b in first[:10] for i in b) == list(range(40))


def test_round_robin_takes_turns_until_the_smallest_is_exhausted():
    sizes = [40, 12]
    batches = list(_sampler(sizes, batch=4, strategy="round_robin"))
    assert [_owner(b[0], sizes) for b in batches] == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="weights need sampling 'proportional'"):
        _sampler(sizes, batch=4, strategy="round_robin", weights=[2.0, 1.0])


def test_sampler_factory_checks_the_weights():
    build = batch_sampler_factory(["A", "B"], {"B": 3}, "proportional", group=1)
    assert build.keywords == {"weights": [1.0, 3.0], "strategy": "proportional", "group": 1}
    with pytest.raises(ValueError, match="no data set named C"):
        batch_sampler_factory(["A", "B"], {"C": 1.0}, "proportional", 1)
    with pytest.raises(ValueError, match="B=0.0"):
        batch_sampler_factory(["A", "B"], {"B": 0.0}, "proportional", 1)


def test_content_ids_are_equal_exactly_when_text_and_image_are():
    assert content_id("circle", "") == content_id("circle", None) == content_id("circle", "")
    assert content_id("circle", "") != content_id("circle ", "")
    assert content_id("<|image_1|>", "a.png") != content_id("<|image_1|>", "b.png")
    assert 0 <= content_id("x", "y") < 2**63
