"""``unime eval mmeb-v2``: VLM2Vec-V2's configs, readers, metrics and reports, on the miniature MMEB-V2.

VLM2Vec-V2's own code is compared where a copy of it is at hand: set ``VLM2VEC_REPO`` to a checkout
of TIGER-AI-Lab/VLM2Vec (main) or to a bare git repository of it. Without it those tests are
skipped and the hand-computed cases, pinned from that code, still run.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import CountingModel, RandomModel

from unime import cli
from unime.evaluation import mmeb_v2 as v2
from unime.evaluation.common import input_key
from unime.evaluation.mmeb_v2_mini import NUM_FRAMES, build_miniature

# --------------------------------------------------------------------------- the peer's code, when present


def _peer_file(relative: str, tmp_path: Path) -> Path:
    """A copy of one file of VLM2Vec-V2 (``$VLM2VEC_REPO``) in ``tmp_path``, or a skip saying why."""
    repo = os.environ.get("VLM2VEC_REPO")
    if not repo:
        pytest.skip("VLM2VEC_REPO is not set (a checkout or bare git repository of TIGER-AI-Lab/VLM2Vec)")
    target = tmp_path / "peer" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if (Path(repo) / relative).is_file():
        target.write_bytes((Path(repo) / relative).read_bytes())
    else:
        shown = subprocess.run(["git", f"--git-dir={repo}", "show", f"HEAD:{relative}"], capture_output=True)
        if shown.returncode != 0:
            pytest.skip(f"VLM2VEC_REPO={repo} has no {relative}")
        target.write_bytes(shown.stdout)
    return target


def _peer_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type:
    """VLM2Vec-V2's ``RankingMetrics``, imported from the copy. The module imports pytrec_eval, which
    the class never calls: an empty module stands in for it."""
    path = _peer_file("src/utils/eval_utils/metrics.py", tmp_path)
    monkeypatch.setitem(sys.modules, "pytrec_eval", types.ModuleType("pytrec_eval"))
    monkeypatch.syspath_prepend(str(path.parent))
    import importlib

    module = importlib.import_module("metrics")
    monkeypatch.delitem(sys.modules, "metrics")
    return module.RankingMetrics


def _literals(path: Path) -> dict[str, object]:
    """The module-level assignments of literal values in one of the peer's files."""
    values = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def _peer_functions(path: Path, names: tuple[str, ...]) -> dict[str, object]:
    """Some top-level functions of one of the peer's files, with its literal constants, compiled alone
    (the file's imports need torchvision and ffmpeg, which these functions do not use)."""
    import re

    tree = ast.parse(path.read_text(encoding="utf-8"))
    def literal(node: ast.AST) -> bool:
        try:
            return isinstance(node, ast.Assign) and ast.literal_eval(node.value) is not None
        except ValueError:
            return False

    module = ast.Module(body=[n for n in tree.body if literal(n)
                              or (isinstance(n, ast.FunctionDef) and n.name in names)], type_ignores=[])
    namespace: dict[str, object] = {"np": np, "os": os, "re": re}
    exec(compile(module, str(path), "exec"), namespace)
    return {name: namespace[name] for name in names}


# --------------------------------------------------------------------------- metrics


def test_metrics_hand_cases() -> None:
    assert v2.hit_at_k(["a", "b", "c"], ["b"], 1) == 0.0
    assert v2.hit_at_k(["a", "b", "c"], ["b"], 2) == 1.0
    assert v2.hit_at_k(["a", "b"], ["x", "a"], 1) == 1.0
    # Binary NDCG@5: relevant at ranks 2 and 4 of two relevant -> (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3)).
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert v2.ndcg_at_k(["x", "a", "y", "b", "z"], ["a", "b"], 5) == pytest.approx(expected)
    # Graded: a (2) at rank 2, b (1) at rank 1 -> (1 + 2/log2(3)) / (2 + 1/log2(3)).
    graded = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert v2.ndcg_at_k(["b", "a", "c"], ["a", "b"], 5, [2, 1]) == pytest.approx(graded)
    assert v2.ndcg_at_k(["c", "d"], ["a"], 5) == 0.0
    assert v2.ndcg_at_k(["a"], ["a"], 5, [3]) == 1.0
    with pytest.raises(ValueError, match="2 labels but 1 relevance"):
        v2.ndcg_at_k(["a"], ["a", "b"], 5, [1])


def test_ranking_ties_and_pools() -> None:
    # eval.py ranks with numpy.argsort(-scores): on a tie the earlier candidate of the pool comes first.
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    pool = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    assert v2.rank_names(queries, ["n", "p1", "p2"], pool, None) == [["p1", "p2", "n"]]
    assert v2.set_metric([["p1", "p2", "n"]], [["p2"]], [None], "hit@1") == 0.0
    # local: only the row's own names, in the row's order
    assert v2.rank_names(queries, ["n", "p1", "p2"], pool, [["p2", "n"]]) == [["p2", "n"]]
    # the dot product of the embeddings as given (no renormalisation): a longer vector wins
    long = np.array([[0.6, 0.0], [0.9, 0.1]], dtype=np.float32)
    assert v2.rank_names(queries, ["a", "b"], long, None) == [["b", "a"]]


def test_metrics_equal_vlm2vec_ranking_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ranking_metrics = _peer_metrics(tmp_path, monkeypatch)
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(40)]
    for trial in range(4):
        # Scores rounded to one decimal: many ties, which both must break alike.
        queries = np.round(rng.standard_normal((25, 6)), 1).astype(np.float32)
        pool = np.round(rng.standard_normal((40, 6)), 1).astype(np.float32)
        labels = [list(rng.choice(names, size=1 + trial % 3, replace=False)) for _ in range(25)]
        ranked = v2.rank_names(queries, names, pool, None)
        cases = [{"prediction": p, "label": y, "rel_scores": None} for p, y in zip(ranked, labels, strict=True)]
        theirs = ranking_metrics(["hit", "ndcg"]).evaluate(cases)
        for k in (1, 5, 10):
            assert v2.set_metric(ranked, labels, [None] * 25, f"hit@{k}") == pytest.approx(100 * theirs[f"hit@{k}"])
            assert v2.set_metric(ranked, labels, [None] * 25, f"ndcg_linear@{k}") == pytest.approx(
                100 * theirs[f"ndcg_linear@{k}"])
        # Graded relevance, against their ndcg_at_k on the labels as given.
        peer = ranking_metrics(["ndcg"])
        for p, y in zip(ranked, labels, strict=True):
            scores = [float(s) for s in rng.integers(1, 4, len(y))]
            assert v2.ndcg_at_k(p, y, 5, scores) == pytest.approx(peer.ndcg_at_k(p, y, 5, scores, form="linear"))


# --------------------------------------------------------------------------- inputs pinned to the peer

PINNED = {
    "src/data/eval_dataset/vidore_dataset.py": (v2.VISDOC_QUERY_INSTRUCTION, v2.VISDOC_TARGET_INSTRUCTION),
    "src/data/eval_dataset/visrag_dataset.py": (v2.VISDOC_QUERY_INSTRUCTION, v2.VISDOC_TARGET_INSTRUCTION),
    **{f"src/data/eval_dataset/{parser}_dataset.py": (instruction, v2.VIDEO_TARGET_INSTRUCTION)
       for parser, instruction in v2.VIDEO_RETRIEVAL_INSTRUCTIONS.items()},
}


def test_rendered_inputs_hand_pinned() -> None:
    assert v2.VISDOC_QUERY_INSTRUCTION == "Find a document image that matches the given query:"
    assert v2.VISDOC_TARGET_INSTRUCTION == "Understand the content of the provided document image."
    assert v2._prompt("Inst:", "a text") == "Inst: a text"
    assert v2._prompt(v2.VISDOC_TARGET_INSTRUCTION, image=True) == (
        "<|image_1|> Understand the content of the provided document image.")
    assert v2._prompt("Recognize.", video=True) == "<|video_1|> Recognize."
    # Frames: truncated linspace, all frames when there are no more than asked.
    assert v2.v2_sample_frames(64, 8) == [0, 9, 18, 27, 36, 45, 54, 63]
    assert v2.v2_sample_frames(10, 4) == [0, 3, 6, 9]
    assert v2.v2_sample_frames(11, 4) == [0, 3, 6, 10]  # rounding would give 7 for 6.67
    assert v2.v2_sample_frames(5, 8) == [0, 1, 2, 3, 4]
    # VisRAG page files: the stem cut to 50 characters, "_", 8 hex digits of the name's MD5, the extension.
    assert v2.visrag_file_name("a" * 60 + ".png") == "a" * 50 + "_5298206d.png"
    assert v2.visrag_file_name("short.png") == "short_" + __import__("hashlib").md5(b"short.png").hexdigest()[:8] + ".png"


def test_rendered_inputs_equal_the_peer_code(tmp_path: Path) -> None:
    for relative, (query, target) in PINNED.items():
        values = _literals(_peer_file(relative, tmp_path))
        assert (values["TASK_INST_QRY"], values["TASK_INST_TGT"]) == (query, target), relative
    utils = _literals(_peer_file("src/data/eval_dataset/video_classification_utils.py", tmp_path))
    assert utils["DATASET_INSTRUCTION"] == v2.VIDEO_CLASSIFICATION_INSTRUCTIONS
    functions = _peer_functions(_peer_file("src/utils/vision_utils/vision_utils.py", tmp_path),
                                ("load_frames", "sample_frames", "process_video_frames"))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10, 11, 3, 20, 100):
        (folder / f"frame_{i}.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not a frame")
    for count in (1, 3, 4, 7):
        theirs = functions["process_video_frames"](str(folder), num_frames=count)
        assert v2.frame_paths(folder, count, "t") == theirs, count
    for total in range(1, 70):
        for frames in (1, 4, 8, 16):
            if total >= frames:
                assert v2.v2_sample_frames(total, frames) == functions["sample_frames"](list(range(total)), frames)
    base = _literals(_peer_file("src/data/eval_dataset/base_eval_dataset.py", tmp_path))
    assert base["RESOLUTION_MAPPING"].get(None) is None  # the default resolution: no resize by eval.py


# --------------------------------------------------------------------------- configs and bad input


def test_yaml_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "video.yaml"
    path.write_text("HMDB51:\n  dataset_parser: video_classification\nOdd:\n  dataset_parser: telepathy\n")
    with pytest.raises(ValueError, match=r"video.yaml: entry 'Odd': unknown dataset_parser 'telepathy'"):
        v2.read_config(path)
    path.write_text("Lost:\n  dataset_name: Lost\n")
    with pytest.raises(ValueError, match="entry 'Lost': no dataset_parser"):
        v2.read_config(path)
    path.write_text("Bad:\n  dataset_parser: vidore\n  eval_type: nearby\n")
    with pytest.raises(ValueError, match="entry 'Bad': eval_type must be global or local"):
        v2.read_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        v2.read_config(path)
    path.write_text("QA:\n  dataset_parser: nextqa\n")
    (entry,) = v2.read_config(path)
    assert not entry.supported and entry.group == "video"


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("mini")
    return root, build_miniature(root)


def _copy_mini(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "mini"
    return root, build_miniature(root)


def test_missing_candidates_name_the_set_and_row(tmp_path: Path) -> None:
    root, configs = _copy_mini(tmp_path)
    layout = v2.Layout.under(root)
    doc = next(c for c in v2.read_config(configs["visdoc"]) if c.name == "MiniDoc")
    (root / "visdoc-tasks" / "MiniDoc" / "page-3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"MMEB-V2 MiniDoc corpus row 3: page image .*page-3.png not found"):
        v2.load_set(doc, layout)
    video = next(c for c in v2.read_config(configs["video"]) if c.name == "MSR-VTT")
    import shutil

    shutil.rmtree(root / "video-tasks" / "frames" / "video_ret" / "MSR-VTT" / "video2")
    with pytest.raises(FileNotFoundError, match=r"MMEB-V2 MSR-VTT: row 2: frames folder .*video2 does not exist"):
        v2.load_set(video, layout)
    ucf = next(c for c in v2.read_config(configs["video"]) if c.name == "UCF101")
    folder = root / "video-tasks" / "frames" / "video_cls" / "UCF101" / "video1"
    for frame in sorted(folder.iterdir())[NUM_FRAMES - 1:]:
        frame.unlink()
    with pytest.raises(ValueError, match=rf"MMEB-V2 UCF101: row 1: frames folder .* has {NUM_FRAMES - 1} frames"):
        v2.load_set(ucf, layout)


def test_miniature_sets_read_as_vlm2vec_v2_builds_them(mini: tuple[Path, dict[str, Path]]) -> None:
    root, configs = mini
    layout = v2.Layout.under(root)
    sets = {c.name: v2.load_set(c, layout) for path in configs.values() for c in v2.read_config(path)}
    doc = sets["MiniDoc"]
    assert doc.queries[0].startswith("Find a document image that matches the given query: ")
    assert doc.labels[0] == ["page-0", "page-1"] and doc.relevance[0] == [2.0, 1.0]
    assert doc.labels[1] == ["page-1"]  # a zero qrels score is dropped
    assert list(doc.candidates)[:3] == ["page-0", "page-1", "page-2"] and doc.local is None
    rag = sets["MiniVisRAG"]
    page = next(iter(rag.candidates.values()))
    assert Path(page["image"]).is_file() and Path(page["image"]).name == v2.visrag_file_name(next(iter(rag.candidates)))
    ucf = sets["UCF101"]
    assert ucf.queries[0]["text"] == "<|video_1|> What activities or sports are being performed by the person in the video?"
    assert [Path(f).name for f in ucf.queries[0]["video"]] == ["frame_0001.jpg", "frame_0004.jpg", "frame_0007.jpg",
                                                              "frame_0010.jpg"]
    # The pool: the rows' labels first, then labels.txt's others (generate_cand_dataset's order).
    assert list(ucf.candidates) == [labels[0] for labels in ucf.labels] + ["juggling", "rowing"]
    assert sets["SmthSmthV2"].local is not None and sets["MSR-VTT"].local is None
    assert sets["MSR-VTT"].queries[0].startswith("Find a video that contains the following visual content: ")


def _oracle(dataset: v2.V2Set) -> dict[str, np.ndarray]:
    """Vectors giving every query its labels first, in relevance order: query = sum of the label
    axes weighted by relevance; every other candidate on its own axis."""
    names = list(dataset.candidates)
    table = {input_key(item): np.eye(len(names) + 1)[i] for i, item in enumerate(dataset.candidates.values())}
    for query, labels, relevance in zip(dataset.queries, dataset.labels, dataset.relevance, strict=True):
        weights = relevance or [1.0] * len(labels)
        table[input_key(query)] = sum(w * np.eye(len(names) + 1)[names.index(y)] for w, y in zip(weights,
                                                                                               labels, strict=True))
    return table


class _Table:
    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode(self, inputs, batch_size=32, show_progress_bar=False):  # noqa: ANN001, ANN201
        return np.stack([self.table[input_key(item)] for item in inputs]).astype(np.float32)


def test_oracle_scores_100_and_a_swap_scores_by_hand(mini: tuple[Path, dict[str, Path]]) -> None:
    root, configs = mini
    layout = v2.Layout.under(root)
    for path in configs.values():
        for config in v2.read_config(path):
            dataset = v2.load_set(config, layout)
            assert v2.score_set(_Table(_oracle(dataset)), dataset) == pytest.approx(100.0), config.name
    doc = v2.load_set(next(c for c in v2.read_config(configs["visdoc"]) if c.name == "MiniDoc"), layout)
    table = _oracle(doc)
    # Query 0 ranks page-1 (relevance 1) above page-0 (relevance 2); the others stay perfect.
    table[input_key(doc.queries[0])] = table[input_key(doc.candidates["page-1"])] * 2 + table[
        input_key(doc.candidates["page-0"])]
    swapped = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    expected = 100 * (swapped + len(doc.queries) - 1) / len(doc.queries)
    assert v2.score_set(_Table(table), doc) == pytest.approx(expected)


def test_resumed_run_encodes_only_what_is_missing(mini: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    root, configs = mini
    entries = [c for path in configs.values() for c in v2.read_config(path)]
    layout = v2.Layout.under(root)
    reference = CountingModel(RandomModel())
    expected = v2.run_mmeb_v2(reference, entries, layout, tmp_path / "ref", model_id="m", chunk_size=3).scores
    interrupted = CountingModel(RandomModel(), fail_after_calls=6)
    with pytest.raises(KeyboardInterrupt):
        v2.run_mmeb_v2(interrupted, entries, layout, tmp_path / "resume", model_id="m", chunk_size=3)
    resumed = CountingModel(RandomModel())
    assert v2.run_mmeb_v2(resumed, entries, layout, tmp_path / "resume", model_id="m", chunk_size=3).scores == expected
    assert resumed.total + interrupted.total == reference.total
    again = CountingModel(RandomModel())
    assert v2.run_mmeb_v2(again, entries, layout, tmp_path / "resume", model_id="m", chunk_size=3).scores == expected
    assert again.total == 0


# --------------------------------------------------------------------------- the command, on a tiny model


def test_cli_end_to_end_on_a_tiny_model(mini: tuple[Path, dict[str, Path]], tiny_model_factory, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root, configs = mini
    model = tiny_model_factory("qwen2_vl")
    qa = tmp_path / "qa.yaml"
    qa.write_text("NExTQA:\n  dataset_parser: nextqa\n  dataset_name: NExTQA\n  frame_root: x\n")
    output = tmp_path / "out" / "report.json"
    argv = ["eval", "mmeb-v2", "--model", str(model), "--data-dir", str(root), "--config",
            *map(str, configs.values()), str(qa), "--output", str(output), "--no-progress", "--batch-size", "4"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads(output.read_text())
    metrics = record["metrics"]
    assert set(metrics) >= {"mmeb_v2/image/MiniCLS/hit@1", "mmeb_v2/video/UCF101/hit@1",
                            "mmeb_v2/video/SmthSmthV2/hit@1", "mmeb_v2/video/MSR-VTT/hit@1",
                            "mmeb_v2/visdoc/MiniDoc/ndcg_linear@5", "mmeb_v2/visdoc/MiniVisRAG/ndcg_linear@5",
                            "mmeb_v2/image/mean", "mmeb_v2/video/mean", "mmeb_v2/visdoc/mean", "mmeb_v2/all/mean"}
    assert all(0 <= value <= 100 for value in metrics.values())
    video = [metrics[f"mmeb_v2/video/{n}/hit@1"] for n in ("UCF101", "SmthSmthV2", "MSR-VTT")]
    assert metrics["mmeb_v2/video/mean"] == pytest.approx(np.mean(video))
    protocol = record["config"]["protocol"]
    assert protocol["name"] == "vlm2vec-v2" and protocol["family"] == "qwen2_vl"
    assert protocol["input_format"]["style"] == "raw" and "28 px" in protocol["input_format"]["image_resize"]
    assert record["config"]["not_run"] == {"NExTQA": "dataset_parser 'nextqa' not read by unime"}
    assert record["config"]["set_notes"]["UCF101"]["frames"] == NUM_FRAMES
    table = output.with_suffix(".md").read_text()
    assert "| visdoc | ViDoRe_arxivqa | ndcg_linear@5 | - |" in table and "| video | 3/18 |" in table
    assert sum(line.startswith(("| image |", "| video |", "| visdoc |")) for line in table.splitlines()) >= 78
    assert "not run: NExTQA" in printed
    # Resumed: every set's score comes from its cache, nothing is encoded again.
    monkeypatch.setattr(v2, "score_set", lambda *a, **k: pytest.fail("a cached set was scored again"))
    assert cli.main(argv) == 0
    assert json.loads(output.read_text())["metrics"] == metrics


def test_cli_refuses_bad_configs_before_loading_the_model(mini: tuple[Path, dict[str, Path]], tiny_model_factory,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, configs = mini
    bad = tmp_path / "bad.yaml"
    bad.write_text("Odd:\n  dataset_parser: telepathy\n")
    model = str(tiny_model_factory("qwen2_vl"))
    base = ["eval", "mmeb-v2", "--model", model, "--data-dir", str(root), "--output", str(tmp_path / "o.json")]
    assert cli.main([*base, "--config", str(bad)]) == 2
    assert "bad.yaml: entry 'Odd': unknown dataset_parser 'telepathy'" in capsys.readouterr().err
    assert cli.main([*base, "--config", str(configs["visdoc"]), "--sets", "Nope"]) == 2
    assert "--sets: Nope not in the configs" in capsys.readouterr().err


def test_raw_texts_place_the_video_token_inline(mini: tuple[Path, dict[str, Path]], tiny_model_factory) -> None:
    import unime

    root, configs = mini
    model = unime.load(str(tiny_model_factory("qwen2_vl")), device="cpu")
    ucf = v2.load_set(next(c for c in v2.read_config(configs["video"]) if c.name == "UCF101"), v2.Layout.under(root))
    doc = v2.load_set(next(c for c in v2.read_config(configs["visdoc"]) if c.name == "MiniDoc"), v2.Layout.under(root))
    with v2.using_v2_protocol(model), v2.video_frames(model, ucf.frames):
        calls = model[0].processor_calls([ucf.queries[0], doc.candidates["page-0"], doc.queries[0]])
        with pytest.raises(ValueError, match=r"holds '<\|video_1\|>' but no video was given"):
            model[0].processor_calls(["<|video_1|> no video here"])
    assert calls[0]["text"] == ("<|video_pad|> What activities or sports are being performed by the person in "
                                "the video?")
    assert len(calls[0]["videos"][0]) == NUM_FRAMES and "images" not in calls[0]
    assert calls[1]["text"] == "<|image_pad|> Understand the content of the provided document image."
    assert calls[2]["text"].startswith("Find a document image that matches the given query: ")
    assert model[0].unime_config.video_frames != NUM_FRAMES or NUM_FRAMES == 8  # restored after the block
