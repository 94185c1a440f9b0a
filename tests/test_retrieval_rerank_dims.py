"""``unime eval retrieval`` with a judge (``--rerank``: the top k of each query in both directions
re-ordered by the judge's yes-probability) and over Matryoshka sizes (``--dimensions`` with several
sizes: one table, each row that of a run at that size alone, also for ``unime eval mmeb``): by hand
with a stand-in judge, and end to end with the seeing default's aligned base as embedder and judge,
and a tiny Qwen2-VL."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
from eval_fixtures import karpathy_images, write_karpathy

from unime.data.photos import SHIPPED_PHOTOS
from unime.evaluation.rerank import rerank_retrieval_ranks
from unime.evaluation.retrieval import RetrievalDataset, query_ranks, recall_from_ranks, unit_rows


class _Judge:
    """Scores a pair by a table keyed by (query, candidate) texts or image names; counts what it was asked."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table, self.asked = table, []

    def score(self, pairs, batch_size=8):
        self.asked.extend(pairs)
        return [self.table[(q[0] or q[1], c[0] or c[1])] for q, c in pairs]


def test_the_judge_reorders_each_querys_top_k_in_both_directions():
    # Three images, captions a0 a1 (image 0), b0 (image 1), c0 (image 2).
    dataset = RetrievalDataset("toy", ["A.jpg", "B.jpg", "C.jpg"], ["a0", "a1", "b0", "c0"], np.array([0, 0, 1, 2]))
    image = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    text = np.array([[0.6, 0.8, 0], [0.5, 0.3, 0.81], [0.2, 1, 0.9], [0.9, 0, 0.44]])
    before = query_ranks(unit_rows(text), unit_rows(image), dataset.caption_image)
    # Cosines (rows A, B, C; columns a0, a1, b0, c0): A .60 .50 .15 .90; B .80 .30 .74 0; C 0 .81 .66 .44.
    assert before["i2t"].tolist() == [1, 1, 2] and before["t2i"].tolist() == [1, 1, 0, 1]
    table = {("A.jpg", "c0"): 0.9, ("A.jpg", "a0"): 0.95, ("B.jpg", "a0"): 0.8, ("B.jpg", "b0"): 0.2,
             ("a0", "B.jpg"): 0.1, ("a0", "A.jpg"): 0.5, ("a1", "C.jpg"): 0.6, ("a1", "A.jpg"): 0.6,
             ("b0", "B.jpg"): 0.1, ("b0", "C.jpg"): 0.2, ("c0", "A.jpg"): 0.5, ("c0", "C.jpg"): 0.7}
    judge = _Judge(table)
    after = rerank_retrieval_ranks(judge, dataset, text, image, before, top=2)
    # A's top 2 (c0, a0): a0 judged first, rank 0. B's (a0, b0): a0 stays first, rank 1. C's top 2 (a1, b0)
    # hold no c0: C keeps its rank 2 and is never judged.
    assert after["i2t"].tolist() == [0, 1, 2]
    # a0's top 2 (B, A): A judged first, rank 0. a1's (C, A) tie at .6: the cosine order stays, rank 1.
    # b0's (B, C): the judge puts C first, rank 1 (a judge can make it worse). c0's (A, C): C first, rank 0.
    assert after["t2i"].tolist() == [0, 1, 1, 0]
    assert not any(query == ("", "C.jpg") for query, _ in judge.asked)
    assert len(judge.asked) == len(set(map(repr, judge.asked)))  # each pair once
    # R@K for K at or above k is unchanged, whatever the judge says; below k it moves.
    assert recall_from_ranks(after, (2, 5)) == recall_from_ranks(before, (2, 5))
    assert recall_from_ranks(after, (1,)) != recall_from_ranks(before, (1,))
    with pytest.raises(ValueError, match="top must be positive"):
        rerank_retrieval_ranks(judge, dataset, text, image, before, top=0)



def test_ties_of_cosine_are_broken_against_the_positive():
    dataset = RetrievalDataset("tie", ["A.jpg", "B.jpg"], ["a", "b"], np.array([0, 1]))
    image = np.array([[1.0, 0], [0, 1.0]])
    text = np.array([[1.0, 1.0], [0, 1.0]])  # caption a is as close to B as to A
    before = query_ranks(unit_rows(text), unit_rows(image), dataset.caption_image)
    assert before["t2i"].tolist() == [1, 0]
    judge = _Judge({("a", "A.jpg"): 0.9, ("a", "B.jpg"): 0.1, ("b", "B.jpg"): 0.5, ("b", "A.jpg"): 0.1,
                    ("A.jpg", "a"): 0.5, ("A.jpg", "b"): 0.1, ("B.jpg", "b"): 0.5, ("B.jpg", "a"): 0.9})
    # At top 1, a's tie puts B (wrong) first: a's positive is outside the top 1 and keeps rank 1.
    assert rerank_retrieval_ranks(judge, dataset, text, image, before, top=1)["t2i"].tolist() == [1, 0]
    # At top 2 the judge puts A first.
    assert rerank_retrieval_ranks(judge, dataset, text, image, before, top=2)["t2i"].tolist() == [0, 0]


def _photo_table(tmp_path, images: int, per_image: int = 2):
    rows, seen = [], {}
    with open(SHIPPED_PHOTOS / "dev.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if seen.get(row["image"], 0) < per_image and (row["image"] in seen or len(seen) < images):
                seen[row["image"]] = seen.get(row["image"], 0) + 1
                rows.append(row)
    path = tmp_path / "dev.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_eval_retrieval_rerank_follows_the_judge_end_to_end(default_dir, tmp_path, capsys, one_thread):
    import unime
    from unime.cli import main
    from unime.evaluation.retrieval import load_retrieval, retrieval_embeddings
    from unime.judge import Judge

    data = _photo_table(tmp_path, 4)
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--model", str(default_dir), "--data", str(data), "--image-dir",
                 str(SHIPPED_PHOTOS / "images"), "--dtype", "float32", "--output", str(out), "--rerank",
                 str(default_dir), "--rerank-top", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Reranked by the judge:" in printed
    record = json.loads(out.read_text())
    assert record["config"]["rerank"] == {"model": str(default_dir), "top": 3}
    metrics = record["metrics"]

    # The same figures from the judge called directly on each query's top 3 by cosine.
    dataset = load_retrieval(data, SHIPPED_PHOTOS / "images")
    text, image = retrieval_embeddings(unime.load(str(default_dir), dtype="float32"), dataset)
    text, image = unit_rows(text), unit_rows(image)
    judge = Judge(default_dir)
    owner = dataset.caption_image
    expected, judged_queries = {}, 0
    for direction, queries, candidates in (("i2t", image, text), ("t2i", text, image)):
        ranks = []
        for q, row in enumerate(queries @ candidates.T):
            own = owner == q if direction == "i2t" else np.arange(len(dataset.images)) == owner[q]
            order = sorted(range(len(row)), key=lambda c: (-row[c], own[c]))
            top = order[:3]
            if not own[top].any():  # the positive outside the top 3: its rank by cosine
                ranks.append(sum(1 for c in range(len(row)) if not own[c] and row[c] >= row[own].max()))
                continue
            pairs = [(("", dataset.images[q]), (dataset.captions[c], None)) if direction == "i2t" else
                     ((dataset.captions[q], None), ("", dataset.images[c])) for c in top]
            judged = judge.score(pairs)
            judged_queries += 1
            reordered = sorted(range(3), key=lambda j: -judged[j])
            ranks.append(next(place for place, j in enumerate(reordered) if own[top[j]]))
        expected[direction] = np.array(ranks)
    assert judged_queries >= 4
    before = query_ranks(text, image, owner)
    assert any((expected[d] != before[d]).any() for d in expected)  # the judge moved a positive here
    for key, value in recall_from_ranks(expected).items():
        assert metrics[f"retrieval/reranked/{dataset.name}/{key}"] == pytest.approx(value), key
        if int(key.split("@")[1]) >= 3:  # R@K for K >= the reranked top: unchanged
            assert metrics[f"retrieval/{dataset.name}/{key}"] == metrics[f"retrieval/reranked/{dataset.name}/{key}"]
    assert "retrieval/reranked/mean_R@1" in metrics


def test_a_dimensions_table_row_is_the_run_at_that_size(tiny_model_factory, tmp_path, monkeypatch, capsys):
    from unime.cli import main
    from unime.evaluation import retrieval

    model = str(tiny_model_factory("qwen2_vl"))
    path = write_karpathy(tmp_path / "dataset_flickr30k.json", karpathy_images(tmp_path / "images", 10))
    base = ["eval", "retrieval", "--model", model, "--data", str(path), "--image-dir", str(tmp_path / "images"),
            "--dtype", "float32", "--no-progress"]
    calls = []
    encode_unique = retrieval.encode_unique
    monkeypatch.setattr(retrieval, "encode_unique", lambda *a, **k: (calls.append(1), encode_unique(*a, **k))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sizes the tiny model was not trained at
        assert main([*base, "--output", str(tmp_path / "table.json"), "--dimensions", "8", "16", "64"]) == 0
        assert calls == [1]  # embedded once, at the full size
        table = json.loads((tmp_path / "table.json").read_text())
        assert table["config"]["dimensions"] == [8, 16, 64]
        markdown = (tmp_path / "table.md").read_text()
        assert "| Dimensions | flickr30k/i2t_R@1 |" in markdown and "\n| 16 | " in markdown
        rows = {}
        for size in (8, 16, 64):
            assert main([*base, "--output", str(tmp_path / f"d{size}.json"), "--dimensions", str(size)]) == 0
            single = json.loads((tmp_path / f"d{size}.json").read_text())["metrics"]
            rows[size] = {key[len(f"retrieval/dimensions/{size}/"):]: value for key, value in table["metrics"].items()
                          if key.startswith(f"retrieval/dimensions/{size}/")}
            assert rows[size] == {key[len("retrieval/"):]: value for key, value in single.items()}
    assert rows[8] != rows[64]  # the sizes differ: the rows are not one figure copied
    capsys.readouterr()
    assert main([*base, "--dimensions", "8", "8"]) == 2
    assert "--dimensions names a size twice" in capsys.readouterr().err
    assert main([*base, "--dimensions", "8", "999"]) == 2
    assert "dimensions 999 exceeds" in capsys.readouterr().err
    assert main([*base, "--dimensions", "8", "16", "--rerank", model]) == 2
    assert "--rerank with several --dimensions" in capsys.readouterr().err


def test_an_mmeb_dimensions_table_row_is_the_run_at_that_size(tiny_model_factory, tmp_path, monkeypatch, capsys):
    from eval_fixtures import write_mmeb_suite

    from unime.cli import main
    from unime.evaluation.encoding import CachedEncoder

    model = str(tiny_model_factory("qwen2_vl"))
    data_dir, image_dir = write_mmeb_suite(tmp_path)
    base = ["eval", "mmeb", "--model", model, "--data-dir", str(data_dir), "--image-dir", str(image_dir),
            "--dtype", "float32", "--batch-size", "8", "--no-progress"]
    encoded = []
    encode = CachedEncoder._encode_shared
    monkeypatch.setattr(CachedEncoder, "_encode_shared",
                        lambda self, items, *a: (encoded.extend(items), encode(self, items, *a))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sizes the tiny model was not trained at
        assert main([*base, "--output", str(tmp_path / "table.json"), "--dimensions", "1", "16", "64"]) == 0
        in_table, encoded[:] = len(encoded), []
        table = json.loads((tmp_path / "table.json").read_text())["metrics"]
        assert "| Dimensions | " in (tmp_path / "table.md").read_text()
        rows = {}
        for size in (1, 16, 64):
            assert main([*base, "--output", str(tmp_path / f"d{size}.json"), "--dimensions", str(size)]) == 0
            single = json.loads((tmp_path / f"d{size}.json").read_text())["metrics"]
            prefix = f"mmeb/dimensions/{size}/"
            rows[size] = {key[len(prefix):]: value for key, value in table.items() if key.startswith(prefix)}
            assert rows[size] == {key[len("mmeb/"):]: value for key, value in single.items()}
            # The table encoded what one run at one size encodes: each dataset's inputs once.
            assert len(encoded) == in_table
            encoded[:] = []
    assert rows[1] != rows[64]  # a size of 1 leaves cosines of +-1: the rows are not one copied
    capsys.readouterr()
    assert main([*base, "--output", str(tmp_path / "x.json"), "--dimensions", "8", "16", "--save-scores",
                 str(tmp_path / "s")]) == 2
    assert "--rerank and --save-scores take one size" in capsys.readouterr().err
