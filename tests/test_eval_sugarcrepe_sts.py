"""SugarCrepe accuracy and STS Spearman on hand-computed cases, and their file layouts."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fixtures import ConstantModel, LookupModel, write_sugarcrepe

from unime.evaluation.sts import STSDataset, evaluate_sts, load_sts
from unime.evaluation.sugarcrepe import evaluate_sugarcrepe, load_sugarcrepe

VECTORS = {
    "p0.png": [1, 0],
    "p1.png": [0, 1],
    "p2.png": [1, 1],
    "cap0": [1, 0.2],
    "neg0": [0.2, 1],
    "cap1": [1, 0],
    "neg1": [0, 1],
    "cap2": [1, 0],
    "neg2": [0, 1],
}


@pytest.fixture
def sugarcrepe(tmp_path):
    splits = {
        # item 0 wins, item 1 loses, item 2 is a tie (cos 0.707 both ways) and so a failure.
        "replace_obj": [("p0.png", "cap0", "neg0"), ("p1.png", "cap1", "neg1"), ("p2.png", "cap2", "neg2")],
        "swap_obj": [("p0.png", "cap0", "neg0")],
        "add_att": [("p1.png", "cap1", "neg1")],
    }
    return write_sugarcrepe(tmp_path / "sugar", tmp_path / "val2017", splits), tmp_path / "val2017"


def test_sugarcrepe_accuracy_and_group_means_by_hand(sugarcrepe):
    splits = load_sugarcrepe(*sugarcrepe)
    assert [s.name for s in splits] == ["replace_obj", "swap_obj", "add_att"]
    metrics = evaluate_sugarcrepe(LookupModel(VECTORS), splits)
    assert metrics["sugarcrepe/replace_obj/accuracy"] == pytest.approx(100 / 3)
    assert metrics["sugarcrepe/swap_obj/accuracy"] == 100.0
    assert metrics["sugarcrepe/add_att/accuracy"] == 0.0
    assert metrics["sugarcrepe/replace/accuracy"] == pytest.approx(100 / 3)
    assert metrics["sugarcrepe/swap/accuracy"] == 100.0 and metrics["sugarcrepe/add/accuracy"] == 0.0
    assert metrics["sugarcrepe/average/accuracy"] == pytest.approx((100 / 3 + 100) / 3)
    assert set(evaluate_sugarcrepe(ConstantModel(), splits).values()) == {0.0}


def test_sugarcrepe_bad_input_is_named(sugarcrepe, tmp_path):
    data_dir, image_dir = sugarcrepe
    with pytest.raises(ValueError, match="unknown SugarCrepe split"):
        load_sugarcrepe(data_dir, image_dir, ["replace_colour"])
    with pytest.raises(FileNotFoundError, match="swap_att.json"):
        load_sugarcrepe(data_dir, image_dir, ["swap_att"])
    (image_dir / "p1.png").unlink()
    with pytest.raises(FileNotFoundError, match="SugarCrepe replace_obj: item 1: filename: image 'p1.png'"):
        load_sugarcrepe(data_dir, image_dir, ["replace_obj"])


def _sts_model():
    cosines = [0.1, 0.3, 0.5, 0.9]
    table = {"left": [1, 0]}
    table.update({f"right{k}": [c, np.sqrt(1 - c * c)] for k, c in enumerate(cosines)})
    return LookupModel(table)


def test_spearman_by_hand():
    # Cosine ranks 1 2 3 4 against gold ranks 1 3 2 4: rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    dataset = STSDataset("hand", ["left"] * 4, [f"right{k}" for k in range(4)], [1.0, 3.0, 2.0, 4.0])
    assert evaluate_sts(_sts_model(), [dataset]) == {"sts/hand/spearman": pytest.approx(80.0)}


def test_stsb_layouts(tmp_path):
    rows = [
        ("A man plays a guitar.", 'He said "hi', 4.2),
        ("A dog runs.", "A cat sleeps.", 0.4),
        ("x", "y", 2.5),
    ]
    (tmp_path / "stsb.tsv").write_text(
        "split\tgenre\tscore\tsentence1\tsentence2\n"
        + "".join(f"test\tnews\t{s}\t{a}\t{b}\n" for a, b, s in rows)
        + "dev\tnews\t1.0\tq\tr\n"
    )
    (tmp_path / "sts-test.csv").write_text(
        "".join(f"main-news\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows))
    )
    (tmp_path / "stsb.jsonl").write_text(
        "".join(
            f'{{"sentence1": "{a}", "sentence2": "{b.replace(chr(34), "")}", "score": {s}}}\n'
            for a, b, s in rows
        )
    )
    header = load_sts(tmp_path / "stsb.tsv", split="test")
    assert header.sentences2[0] == 'He said "hi' and header.scores.tolist() == [4.2, 0.4, 2.5]
    assert len(load_sts(tmp_path / "stsb.tsv").scores) == 4
    original = load_sts(tmp_path / "sts-test.csv")
    assert original.name == "sts-test" and original.sentences1 == header.sentences1
    assert load_sts(tmp_path / "stsb.jsonl").scores.tolist() == [4.2, 0.4, 2.5]


def test_sts_bad_input_is_named(tmp_path):
    (tmp_path / "bad.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t3\nc\td\thigh\n")
    with pytest.raises(ValueError, match="bad.tsv: line 3: score 'high' is not a number"):
        load_sts(tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match="--split test given but the file has no"):
        load_sts(tmp_path / "bad.tsv", split="test")
    (tmp_path / "cols.jsonl").write_text('{"a": "x", "b": "y", "label": 1}\n')
    with pytest.raises(ValueError, match="needs columns"):
        load_sts(tmp_path / "cols.jsonl")


def test_sick_full_file_split_and_jsonl_agree(data_excerpts):
    folder = data_excerpts / "sick"  # the first 60 pairs of SICK.txt and the JSON lines of its splits
    full = load_sts(folder / "SICK.txt", split="test")
    jsonl = load_sts(folder / "sick_test.jsonl")
    assert full.name == "sick" and len(full.scores) == 36
    assert full.sentences1 == jsonl.sentences1 and full.sentences2 == jsonl.sentences2
    assert np.array_equal(full.scores, jsonl.scores)
    trial = load_sts(folder / "SICK.txt", split="TRIAL")
    assert len(trial.scores) == 2 and trial.scores.tolist() == [3.6, 3.4]
    trial_jsonl = load_sts(folder / "sick_trial.jsonl")
    assert len(trial_jsonl.scores) == 12 and trial_jsonl.sentences1[:2] == trial.sentences1
    assert len(load_sts(folder / "SICK.txt", split="train").scores) == 22
    assert len(load_sts(folder / "SICK.txt").scores) == 60
