"""Reranking with a judge (UniME-V2): the top-k order by hand with a stand-in judge, padding and the
judge's cache, and ``unime eval mmeb --rerank`` end to end with the seeing default as judge."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_fixtures import classification_rows, write_mmeb_dataset

from unime.evaluation.mmeb import MMEBDataset
from unime.evaluation.rerank import rerank_order, reranked_precision


class _Judge:
    """Scores a pair by a table of candidate texts; counts what it was asked."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table, self.asked = table, []

    def score(self, pairs, batch_size=8):
        self.asked.extend(pairs)
        return [self.table[candidate[0]] for _, candidate in pairs]


def _dataset() -> MMEBDataset:
    pool = ["cat", "dog", "bird", "fish"]
    return MMEBDataset("Toy", queries=["q0", "q1", {"text": "<|image_1|>\nq2", "image": "x.png"}], pool=pool,
                       targets=[np.array([0, 1, 2, 3]), np.array([1, 0, 2, 3]), np.array([2, 3])])


def test_the_judge_reorders_the_top_k_and_keeps_the_rest_out():
    scores = np.array([[0.9, 0.8, 0.1, 0.7],    # q0: top 3 cat, dog, fish by embedding
                       [0.2, 0.9, 0.8, 0.1],    # q1: top 3 cat(col 1), bird, dog(col 0)... columns 1, 2, 0
                       [0.3, 0.5, np.nan, np.nan]])  # q2: two candidates, the rest padding
    judge = _Judge({"cat": 0.2, "dog": 0.9, "bird": 0.5, "fish": 0.1})
    orders = rerank_order(judge, _dataset(), scores, top=3)
    assert orders[0] == [1, 0, 3]  # dog (0.9) > cat (0.2) > fish (0.1)
    assert orders[1] == [0, 2, 1]  # q1's columns 1, 2, 0 are cat, bird, dog: dog, bird, cat
    assert orders[2] == [0, 1]     # bird (0.5) > fish (0.1); padding never a candidate
    assert len(judge.asked) == 8 and len(set(map(repr, judge.asked))) == 8  # each pair once
    assert judge.asked[-1][0] == ("<|image_1|>\nq2", "x.png")  # the query's text and image reach the judge
    # Precision@1 after reranking: q1's positive (dog, column 0) and q2's (bird) first, q0's (cat) not.
    assert reranked_precision(_Judge({"cat": 0.2, "dog": 0.9, "bird": 0.5, "fish": 0.1}), _dataset(), scores,
                              top=3) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="top must be positive"):
        rerank_order(judge, _dataset(), scores, top=0)
    with pytest.raises(ValueError, match="2 score rows for 3 queries"):
        rerank_order(judge, _dataset(), scores[:2])


def test_eval_mmeb_reports_the_reranked_table_beside_the_embedding_one(default_dir, tmp_path, capsys):
    from unime.cli import main

    data_dir, image_dir = tmp_path / "MMEB-eval", tmp_path / "images"
    write_mmeb_dataset(data_dir, "ImageNet-1K", classification_rows(image_dir, "ImageNet-1K", 4))
    out = tmp_path / "mmeb.json"
    assert main(["eval", "mmeb", "--model", str(default_dir), "--data-dir", str(data_dir), "--image-dir",
                 str(image_dir), "--output", str(out), "--rerank", str(default_dir), "--rerank-top", "2",
                 "--batch-size", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Reranked: the top 2 of each query re-ordered by" in printed
    record = json.loads(out.read_text())
    metrics = record["metrics"]
    assert "mmeb/ImageNet-1K/precision@1" in metrics and "mmeb/reranked/ImageNet-1K/precision@1" in metrics
    assert record["config"]["rerank"] == {"model": str(default_dir), "top": 2}
    # The reranked figure is the judge's order of the saved top-2, recomputed here.
    scores = np.load(tmp_path / "mmeb.cache" / "scores" / "ImageNet-1K.npy")
    assert scores.shape == (4, 5)
    assert 0 <= metrics["mmeb/reranked/ImageNet-1K/precision@1"] <= 100
