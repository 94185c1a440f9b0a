"""UniME-V2's judge-based mining: the filter and the cyclic sampling by hand, retrieval from the pool of
positives, and ``unime mine`` end to end on the seeing default's aligned base (retriever and judge),
resumed from its intermediate files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from unime.data.photos import SHIPPED_PHOTOS
from unime.judge import JudgeRow, read_judge_file
from unime.mining import cyclic_sample, retrieve_candidates, select_negatives


def test_cyclic_sampling_takes_the_next_k_each_round_and_repeats_short_lists():
    items = list("abcdefghij")
    assert cyclic_sample(items, 4, 0) == list("abcd")
    assert cyclic_sample(items, 4, 1) == list("efgh")
    assert cyclic_sample(items, 4, 2) == list("ijab")  # wraps around
    assert cyclic_sample(list("xy"), 5) == list("xyxyx")  # fewer than k: copied
    assert cyclic_sample([], 3) == []
    with pytest.raises(ValueError, match="keep must be positive"):
        cyclic_sample(items, 0)


def test_false_negatives_are_dropped_and_the_hardest_come_first():
    candidates = [(f"c{i}", "") for i in range(6)]
    scores = [0.30, 0.95, 0.89, 0.10, 0.70, 0.891]
    # Positive 0.9, beta 0.01: above 0.89 is a false negative (0.95, 0.891); 0.89 itself stays.
    negatives, kept, dropped = select_negatives(0.9, candidates, scores, keep=3, beta=0.01)
    assert dropped == 2
    assert negatives == [("c2", ""), ("c4", ""), ("c0", "")] and kept == [0.89, 0.70, 0.30]
    negatives, _, _ = select_negatives(0.9, candidates, scores, keep=3, beta=0.01, cycle=1)
    assert negatives == [("c3", ""), ("c2", ""), ("c4", "")]
    with pytest.raises(ValueError, match="2 candidates but 3 scores"):
        select_negatives(0.5, candidates[:2], scores[:3])


class _Embedder:
    """A stand-in retriever: a fixed unit vector per input text."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def encode(self, inputs, batch_size=32, normalize_embeddings=True):
        rows = np.array([self.vectors[item.text] for item in inputs], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_retrieval_ranks_the_pool_of_positives_and_never_offers_a_querys_own_positive():
    rows = [JudgeRow(("q1", ""), ("p1", ""), []), JudgeRow(("q2", ""), ("p2", ""), []),
            JudgeRow(("q3", ""), ("p1", ""), []), JudgeRow(("q4", ""), ("p3", ""), [])]
    vectors = {"q1": [1, 0, 0], "q2": [0, 1, 0], "q3": [1, 0.1, 0], "q4": [0, 0, 1],
               "p1": [1, 0, 0], "p2": [0.8, 0.6, 0], "p3": [0.6, 0, 0.8]}
    got = retrieve_candidates(_Embedder(vectors), rows, top_n=2)
    assert got[0].negatives == [("p2", ""), ("p3", "")]  # p1 is q1's positive (and a copy of q3's)
    assert got[1].negatives == [("p1", ""), ("p3", "")]
    assert got[2].negatives == [("p2", ""), ("p3", "")]
    assert got[3].negatives == [("p1", ""), ("p2", "")]
    capped = retrieve_candidates(_Embedder(vectors), rows, top_n=2, max_similarity=0.7)
    assert capped[0].negatives == [("p3", "")]  # p2 (cosine 0.8) at or above the cap


def _rows(count: int) -> list[dict]:
    with open(SHIPPED_PHOTOS / "dev.csv", newline="") as handle:
        captions: dict[str, str] = {}
        for row in csv.DictReader(handle):
            captions.setdefault(row["image"], row["caption"])
    return [{"query_text": "<|image_1|>\nFind an everyday caption that matches the given image.", "query_image": image,
             "pos_text": caption, "pos_image": "", "hard_negatives": []}
            for image, caption in sorted(captions.items())[:count]]


def test_unime_mine_end_to_end_and_resumed(default_dir, tmp_path, monkeypatch):
    from unime.cli import main
    from unime.judge import Judge

    data = tmp_path / "rows.json"
    data.write_text(json.dumps(_rows(6)))
    out = tmp_path / "mined.json"
    command = ["mine", "--model", str(default_dir), "--judge", str(default_dir), "--data", str(data), "--output",
               str(out), "--image-root", str(SHIPPED_PHOTOS / "images"), "--top-n", "3", "--keep", "2",
               "--beta", "0.0"]
    assert main(command) == 0
    candidates = read_judge_file(tmp_path / "mined.candidates.json")
    scored = read_judge_file(tmp_path / "mined.scored.json")
    mined = read_judge_file(out)
    assert len(candidates) == 6 and all(len(row.negatives) == 3 for row in candidates)
    for row in candidates:  # the candidates are other rows' captions, never the row's own
        assert row.positive not in row.negatives and all(n[1] == "" for n in row.negatives)
    _check_mined(mined, scored, cycle=0)

    # Run again into a new output with the same intermediate files: nothing is embedded or judged again,
    # and another round of the sampling takes other negatives where there are enough.
    monkeypatch.setattr(Judge, "score", lambda *a, **k: pytest.fail("judged again"))
    again = tmp_path / "mined-round1.json"
    for suffix in (".candidates.json", ".scored.json"):
        (tmp_path / f"mined-round1{suffix}").write_bytes((tmp_path / f"mined{suffix}").read_bytes())
    assert main([*command[:8], str(again), *command[9:], "--cycle", "1"]) == 0
    _check_mined(read_judge_file(again), scored, cycle=1)


def _check_mined(mined: list[JudgeRow], scored: list[JudgeRow], cycle: int) -> None:
    """Each mined row is the filter and sampling of its judged candidates; rows left without negatives are out."""
    by_query = {row.query: row for row in scored}
    assert mined and len(mined) <= len(scored)
    for row in mined:
        judged = by_query[row.query]
        expected, scores, _ = select_negatives(judged.positive_score, judged.negatives, judged.negative_scores,
                                               keep=2, beta=0.0, cycle=cycle)
        assert row.negatives == expected and row.negative_scores == scores and len(row.negatives) == 2
        assert all(s <= row.positive_score for s in row.negative_scores)


def test_mine_refuses_candidates_of_other_rows(default_dir, tmp_path, capsys):
    from unime.cli import main

    data = tmp_path / "rows.json"
    data.write_text(json.dumps(_rows(3)))
    (tmp_path / "out.candidates.json").write_text(json.dumps(_rows(2)))
    assert main(["mine", "--model", str(default_dir), "--judge", str(default_dir), "--data", str(data), "--output",
                 str(tmp_path / "out.json"), "--top-n", "2"]) == 2
    assert "candidates of other rows" in capsys.readouterr().err


@pytest.mark.distributed
def test_unime_mine_under_torchrun_writes_the_one_process_files(default_dir, tmp_path, one_thread):
    """Two processes launched by torchrun share the embedding and the judging: the candidates, their
    scores and the mined rows are the bytes one process writes (one thread each, as torchrun's run)."""
    import os

    from process_helpers import run_torchrun

    from unime.cli import main

    data = tmp_path / "rows.json"
    data.write_text(json.dumps(_rows(4)))
    options = ["--model", str(default_dir), "--judge", str(default_dir), "--data", str(data), "--image-root",
               str(SHIPPED_PHOTOS / "images"), "--top-n", "2", "--keep", "2", "--beta", "0.0",
               "--judge-batch-size", "4"]
    assert main(["mine", *options, "--output", str(tmp_path / "one.json")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = run_torchrun(["-m", "unime", "mine", *options, "--output", str(tmp_path / "two.json")], env=env,
                        timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]
    assert done.stdout.count("wrote ") == 1
    # Rows of 3 pairs in batches of 4: groups [0, 1] and [2, 3], one a process.
    assert "judge: 2/2 rows of shard 0/2" in done.stderr and "judge: 2/2 rows of shard 1/2" in done.stderr
    for suffix in (".candidates.json", ".scored.json", ".json"):
        assert (tmp_path / f"two{suffix}").read_bytes() == (tmp_path / f"one{suffix}").read_bytes(), suffix
    assert not list(tmp_path.glob("*.partial.json"))
