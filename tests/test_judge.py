"""UniME-V2's MLLM judge: its prompt, its score from the model's own logits, judge files read, written and
resumed, and the ``unime judge`` command, on the seeing default's aligned base (SmolLM2's tokenizer has
"Yes" and "No" as single tokens; the tiny random models' tokenizers do not, which is the refusal case)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from unime.data.photos import SHIPPED_PHOTOS
from unime.judge import JUDGE_INSTRUCTION, Judge, judge_content, judge_file, read_judge_file


def _photos(count: int) -> list[str]:
    with open(SHIPPED_PHOTOS / "dev.csv", newline="") as handle:
        names = sorted({row["image"] for row in csv.DictReader(handle)})
    return names[:count]


def _row(query_image: str, pos_text: str, negatives: list[list[str]], **scores) -> dict:
    return {"query_text": "<|image_1|>\nRepresent the given image with the following question: what happens?",
            "query_image": query_image, "pos_text": pos_text, "pos_image": "", "hard_negatives": negatives, **scores}


@pytest.fixture(scope="module")
def judge(default_dir) -> Judge:
    return Judge(default_dir)


def test_the_judge_content_is_unime_v2s_user_turn():
    content, images = judge_content(("<|image_1|>\nWhat is in the image?", "q.jpg"), ("a dog", None), "<image>")
    assert content == JUDGE_INSTRUCTION + "Query:<image>What is in the image?Candidate:a dog"
    assert images == ["q.jpg"]
    content, images = judge_content(("a red car", ""), ("", "c.jpg"), "<IMG>")
    assert content == JUDGE_INSTRUCTION + "Query:a red carCandidate:<IMG>"
    assert images == ["c.jpg"]


def test_the_score_is_the_yes_probability_of_the_next_token(judge):
    photo = str(SHIPPED_PHOTOS / "images" / _photos(1)[0])
    pair = (("", photo), ("A dog runs on the grass .", ""))
    text, images = judge.prompt(*pair)
    assert text.startswith("<|im_start|>user\n" + JUDGE_INSTRUCTION + "Query:<image>")
    assert text.endswith("Candidate:A dog runs on the grass .<|im_end|>\n<|im_start|>assistant\n")
    from unime.inputs import load_image

    captioner = judge.captioner
    features = captioner.processor(text=[text], images=[load_image(photo, "test")], return_tensors="pt")
    with torch.no_grad():
        logits = captioner.model(**features).logits[0, -1].float()
    expected = torch.softmax(logits[[judge.yes_id, judge.no_id]], dim=0)[0].item()
    assert judge.score([pair])[0] == pytest.approx(expected, abs=1e-6)
    assert captioner.tokenizer.convert_ids_to_tokens([judge.yes_id, judge.no_id]) == ["Yes", "No"]


def test_a_batch_of_mixed_pairs_scores_as_each_pair_alone(judge):
    first, second = (str(SHIPPED_PHOTOS / "images" / name) for name in _photos(2))
    pairs = [(("", first), ("A dog is running .", "")), (("a dog runs in a field", ""), ("", second)),
             (("two cats", ""), ("a cat sleeps on a long red sofa in the sun", "")), (("", first), ("", second))]
    batched = judge.score(pairs, batch_size=4)
    alone = [judge.score([pair], batch_size=1)[0] for pair in pairs]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert all(0.0 < s < 1.0 for s in batched) and len(set(round(s, 6) for s in batched)) == 4


def test_a_tokenizer_without_single_yes_and_no_tokens_is_refused(tiny_model_factory):
    with pytest.raises(ValueError, match=r"splits 'Yes' into 2 tokens \['Y', 'es'\]"):
        Judge(tiny_model_factory("llava"))


def test_rows_in_unime_v2s_training_layout_parse_and_write_back_unchanged(tmp_path):
    # One row with the fields UniME-V2's dataset.py reads (names, [text, image] pairs, scores).
    row = {"query_text": "<|image_1|>\nRepresent the given image with the following question: What is the dog doing?",
           "query_image": "images/OK-VQA/000001.jpg", "pos_text": "playing fetch", "pos_image": "",
           "query_pos_scores": 0.9912, "hard_negatives": [["swimming", ""], ["sleeping", ""]],
           "hard_negatives_scores": [0.0213, 0.0005]}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps([row]))
    [parsed] = read_judge_file(path)
    assert parsed.query == (row["query_text"], row["query_image"]) and parsed.positive == ("playing fetch", "")
    assert parsed.negatives == [("swimming", ""), ("sleeping", "")]
    assert parsed.positive_score == 0.9912 and parsed.negative_scores == [0.0213, 0.0005]
    assert parsed.to_json() == row


@pytest.mark.parametrize(("rows", "message"), [
    ({"query_text": "q"}, "a JSON list"),
    ([{"query_text": "q", "query_image": "", "pos_text": "p", "pos_image": ""}], "row 0: missing hard_negatives"),
    ([_row("a.jpg", "p", [["n", ""]]), _row("a.jpg", "p", [["n"]])], "row 1: hard_negatives must be a list"),
    ([_row("a.jpg", "p", [["n", ""]], hard_negatives_scores=[0.1, 0.2])], "one score per hard negative"),
    ([_row("a.jpg", "p", [["n", ""]], query_pos_scores=float("nan"))], "query_pos_scores: expected a finite"),
    ([{**_row("", "p", []), "query_text": ""}], "row 0: the query and the positive each need"),
])
def test_bad_judge_files_name_the_row_and_field(tmp_path, rows, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=message):
        read_judge_file(path)


def test_unime_judge_writes_the_scores_and_resumes_after_a_stop(judge, default_dir, tmp_path, monkeypatch):
    from unime.cli import main

    names = _photos(3)
    rows = [_row(names[0], "A dog runs .", [["A man cooks .", ""], ["", names[1]]]),
            _row(names[1], "Two people walk .", [["A cat sleeps .", ""], ["A boat sails .", ""]]),
            _row(names[2], "A child plays .", [["", names[0]], ["A red car .", ""]])]
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    root = str(SHIPPED_PHOTOS / "images")
    whole = judge_file(judge, data, tmp_path / "whole.json", image_root=root, batch_size=3)
    expected = read_judge_file(whole)
    first = expected[0]
    pairs = [((rows[0]["query_text"], f"{root}/{names[0]}"), ("A dog runs .", None)),
             ((rows[0]["query_text"], f"{root}/{names[0]}"), ("A man cooks .", None)),
             ((rows[0]["query_text"], f"{root}/{names[0]}"), ("", f"{root}/{names[1]}"))]
    assert [first.positive_score, *first.negative_scores] == pytest.approx(judge.score(pairs), abs=1e-6)

    # A stop after the first row's scores were saved; the command run again scores rows 2 and 3 only.
    calls = []
    score = Judge.score

    def stopping(self, pairs, batch_size=8):
        calls.append(len(pairs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return score(self, pairs, batch_size)

    monkeypatch.setattr(Judge, "score", stopping)
    out = tmp_path / "scored.json"
    command = ["judge", "--model", str(default_dir), "--data", str(data), "--output", str(out),
               "--image-root", root, "--batch-size", "3", "--save-every", "1"]
    with pytest.raises(KeyboardInterrupt):
        main(command)
    assert not out.exists() and (tmp_path / "scored.json.partial.json").exists()
    calls.clear()
    monkeypatch.setattr(Judge, "score", lambda self, pairs, batch_size=8: (calls.append(len(pairs)), score(self, pairs, batch_size))[1])
    assert main(command) == 0
    assert calls == [3, 3]
    got = read_judge_file(out)
    for a, b in zip(got, expected, strict=True):
        assert [a.positive_score, *a.negative_scores] == pytest.approx([b.positive_score, *b.negative_scores], abs=1e-6)
    assert not (tmp_path / "scored.json.partial.json").exists()


def test_a_partial_file_of_other_data_is_refused(judge, tmp_path):
    data = tmp_path / "rows.json"
    data.write_text(json.dumps([_row(_photos(1)[0], "A dog runs .", [["A man cooks .", ""]])]))
    (tmp_path / "out.json.partial.json").write_text(json.dumps({"data": "/elsewhere.json", "rows": 5, "scores": {}}))
    with pytest.raises(ValueError, match="partial scores of another data file"):
        judge_file(judge, data, tmp_path / "out.json", image_root=str(SHIPPED_PHOTOS / "images"))


def test_the_cli_names_a_bad_file_before_loading_the_model(default_dir, tmp_path, capsys, monkeypatch):
    from unime.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    monkeypatch.setattr(Judge, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["judge", "--model", str(default_dir), "--data", str(bad), "--output", str(tmp_path / "o.json")]) == 2
    assert f"unime judge: error: {bad}: not a readable JSON judge file" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps([_row("a.jpg", "p", [])]))
    (tmp_path / "o.json").write_text("[]")
    assert main(["judge", "--model", str(default_dir), "--data", str(good), "--output", str(tmp_path / "o.json")]) == 2
    assert "o.json exists (overwrite to replace it)" in capsys.readouterr().err


def test_paths_stay_as_given_without_an_image_root(tmp_path):
    row = _row("/abs/photo.jpg", "p", [])
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([row]))
    assert read_judge_file(Path(path))[0].query[1] == "/abs/photo.jpg"


def _sharding_rows(tmp_path: Path) -> tuple[Path, str]:
    names = _photos(3)
    rows = [_row(names[0], "A dog runs .", [["A man cooks .", ""], ["", names[1]]]),
            _row(names[1], "Two people walk .", [["A cat sleeps .", ""]]),
            _row(names[2], "A child plays .", [["", names[0]], ["A red car .", ""]]),
            _row(names[0], "A dog sleeps .", [["Two cats .", ""]]),
            _row(names[1], "People on a street .", [["", names[2]]])]
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    return data, str(SHIPPED_PHOTOS / "images")


def test_the_groups_of_a_judge_file_fill_batches_with_whole_rows(tmp_path):
    data, _ = _sharding_rows(tmp_path)
    from unime.judge import judge_groups

    rows = read_judge_file(data)  # 3, 2, 3, 2, 2 pairs
    assert judge_groups(rows, 3) == [[0], [1, 2], [3, 4]]
    assert judge_groups(rows, 1) == [[0], [1], [2], [3], [4]]
    assert judge_groups(rows, 100) == [[0, 1, 2, 3, 4]]


def test_shards_resume_on_their_own_and_merge_into_the_one_process_file(judge, tmp_path, one_thread):
    """Shard 1 of 2 stopped after its first group and resumed, then shard 0: the last finished shard
    writes the output, byte for byte the file of one process, and the shards' files are gone."""
    data, root = _sharding_rows(tmp_path)
    whole = judge_file(judge, data, tmp_path / "whole.json", image_root=root, batch_size=2, save_every=1)

    class Stopping:
        def __init__(self, stop_at: int | None) -> None:
            self.calls, self.stop_at = [], stop_at

        def score(self, pairs, batch_size=8):
            self.calls.append(len(pairs))
            if len(self.calls) == self.stop_at:
                raise KeyboardInterrupt
            return judge.score(pairs, batch_size)

    out = tmp_path / "sharded.json"
    stopped = Stopping(2)
    with pytest.raises(KeyboardInterrupt):
        judge_file(stopped, data, out, image_root=root, batch_size=2, save_every=1, shard=(1, 2))
    state = json.loads((tmp_path / "sharded.json.shard-1-of-2.partial.json").read_text())
    assert state["shard"] == [1, 2] and not state["complete"] and list(state["scores"]) == ["1"]
    resumed = Stopping(None)
    assert judge_file(resumed, data, out, image_root=root, batch_size=2, save_every=1, shard=(1, 2)) == out
    # Groups at batch 2 are rows [0], [1], [2], [3], [4]; shard 1 has rows 1 and 3, and only row 3 was left.
    assert resumed.calls == [2] and not out.exists()
    first = Stopping(None)
    judge_file(first, data, out, image_root=root, batch_size=2, save_every=1, shard=(0, 2))
    assert first.calls == [3, 3, 2]
    assert out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json", "sharded.json", "whole.json"]
    with pytest.raises(ValueError, match=r"shard must be \(index, count\)"):
        judge_file(first, data, tmp_path / "x.json", shard=(2, 2))


@pytest.mark.distributed
def test_unime_judge_under_torchrun_writes_the_one_process_file(judge, default_dir, tmp_path):
    """Two processes launched by torchrun, each scoring its share: the same bytes as one process (one
    thread each, as torchrun's processes run)."""
    import os

    from process_helpers import run_torchrun

    data, root = _sharding_rows(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = judge_file(judge, data, tmp_path / "whole.json", image_root=root, batch_size=3)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = run_torchrun(["-m", "unime", "judge", "--model", str(default_dir), "--data", str(data), "--output", str(out),
                         "--image-root", root, "--batch-size", "3", "--save-every", "1"], env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]
    assert done.stdout.count("wrote ") == 1
    # Groups at batch 3: rows [0], [1, 2], [3, 4]; process 0 has rows 0, 3 and 4, process 1 rows 1 and 2.
    assert "judge: 3/3 rows of shard 0/2" in done.stderr and "judge: 2/2 rows of shard 1/2" in done.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json", "two.json", "whole.json"]


# One process of `torchrun -m`-like launch of `unime judge`: process 1 SIGKILLs itself at its second
# group (after its first group's scores were saved), which makes torchrun stop the job.
_KILLING_LAUNCHER = """
import os, signal, sys
from unime.judge import Judge

if os.environ["RANK"] == "1":
    score, calls = Judge.score, []

    def killing(self, pairs, batch_size=8):
        calls.append(len(pairs))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return score(self, pairs, batch_size)

    Judge.score = killing
from unime.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_process_of_unime_judge_resumes_its_own_share(judge, default_dir, tmp_path):
    """Process 1 of 2 killed after its first group: the job stops; the same command run again scores
    only what each process had left and writes the one-process file."""
    import os

    from process_helpers import run_torchrun

    data, root = _sharding_rows(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = judge_file(judge, data, tmp_path / "whole.json", image_root=root, batch_size=2)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "two.json"
    launcher = tmp_path / "launch.py"
    launcher.write_text(_KILLING_LAUNCHER)
    # Groups at batch 2 are single rows: process 0 has rows 0, 2 and 4, process 1 rows 1 and 3.
    arguments = ["judge", "--model", str(default_dir), "--data", str(data), "--output", str(out), "--image-root",
                 root, "--batch-size", "2", "--save-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = run_torchrun([str(launcher), *arguments], env=env, timeout=300)
    assert killed.returncode != 0 and not out.exists()
    state = json.loads((tmp_path / "two.json.shard-1-of-2.partial.json").read_text())
    assert list(state["scores"]) == ["1"] and not state["complete"]
    done = run_torchrun(["-m", "unime", *arguments], env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]
    assert "judge: 1 of 5 rows already scored" in done.stderr
    assert "judge: 2/2 rows of shard 1/2" in done.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert not list(tmp_path.glob("*.partial.json"))
