"""``unime eval`` and ``unime plot`` through the real command line, with model doubles for ``unime.load``."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import (
    ConceptModel,
    ConstantModel,
    RandomModel,
    karpathy_images,
    write_karpathy,
    write_mmeb_suite,
    write_sugarcrepe,
)

import unime
from unime import cli
from unime.evaluation.report import compare_markdown, mmeb_markdown, read_metrics, write_results


@pytest.fixture
def run_cli(monkeypatch):
    """``run_cli(argv, model) -> exit code``; ``unime.load`` returns ``model`` whatever the path (the
    name check before loading is part of what is replaced; tests/test_model_names.py covers it)."""
    from unime import model_names

    def run(argv, model=None):
        monkeypatch.setattr(unime, "load", lambda *args, **kwargs: model)
        monkeypatch.setattr(model_names, "check_model_name", lambda *args, **kwargs: None)
        return cli.main(argv)

    return run


def test_mmeb_command_writes_json_markdown_and_resumes(run_cli, tmp_path, capsys):
    data_dir, image_dir = write_mmeb_suite(tmp_path)
    argv = [
        "eval",
        "mmeb",
        "--model",
        "oracle",
        "--data-dir",
        str(data_dir),
        "--image-dir",
        str(image_dir),
        "--output",
        str(tmp_path / "out" / "mmeb.json"),
        "--no-progress",
    ]
    assert run_cli(argv, ConceptModel()) == 0
    result = json.loads((tmp_path / "out" / "mmeb.json").read_text())
    assert result["task"] == "mmeb" and result["metrics"]["mmeb/overall/precision@1"] == 100.0
    markdown = (tmp_path / "out" / "mmeb.md").read_text()
    assert "Classification (1/10)" in markdown and "| other | - | Custom | 100.0 |" in markdown
    assert (tmp_path / "out" / "mmeb.cache" / "Custom" / "result.json").is_file()
    # Everything is cached: a model that would fail if called is never called.
    assert run_cli(argv, object()) == 0
    assert "| 100.0 |" in capsys.readouterr().out


def test_mmeb_command_records_its_protocol_and_saves_scores(run_cli, tmp_path, capsys):
    import numpy as np

    data_dir, image_dir = write_mmeb_suite(tmp_path)
    base = ["eval", "mmeb", "--model", "constant", "--data-dir", str(data_dir), "--image-dir", str(image_dir),
            "--no-progress"]
    # Default: VLM2Vec's protocol, whose argmax counts the constant model's ties with the positive as hits.
    argv = [*base, "--output", str(tmp_path / "v" / "mmeb.json"), "--save-scores", str(tmp_path / "scores")]
    assert run_cli(argv, ConstantModel()) == 0
    result = json.loads((tmp_path / "v" / "mmeb.json").read_text())
    assert result["config"]["protocol"] == {"name": "vlm2vec", "ties": "argmax", "image_resolution": "high",
                                            "max_length": None}
    assert result["metrics"]["mmeb/overall/precision@1"] == 100.0
    assert "Protocol: vlm2vec (ties argmax, image_resolution high)" in (tmp_path / "v" / "mmeb.md").read_text()
    scores = np.load(tmp_path / "scores" / "ImageNet-1K.npy")
    assert scores.dtype == np.float32 and scores.shape == (12, 5) and np.allclose(scores, 1.0)
    # The unime protocol scores ties strictly; its options are checked before any work.
    argv = [*base, "--output", str(tmp_path / "u" / "mmeb.json"), "--protocol", "unime"]
    assert run_cli(argv, ConstantModel()) == 0
    result = json.loads((tmp_path / "u" / "mmeb.json").read_text())
    assert result["config"]["protocol"] == {"name": "unime", "ties": "strict"}
    assert result["metrics"]["mmeb/overall/precision@1"] == 0.0
    assert run_cli([*argv, "--max-length", "64"], object()) == 2
    assert "belong to --protocol vlm2vec" in capsys.readouterr().err


def test_mmeb_command_reports_a_missing_image(run_cli, tmp_path, capsys):
    data_dir, image_dir = write_mmeb_suite(tmp_path)
    (image_dir / "MSCOCO_t2i" / "dog_pool.png").unlink()
    argv = [
        "eval",
        "mmeb",
        "--model",
        "m",
        "--data-dir",
        str(data_dir),
        "--image-dir",
        str(image_dir),
        "--datasets",
        "MSCOCO_t2i",
        "--output",
        str(tmp_path / "mmeb.json"),
    ]
    assert run_cli(argv, ConceptModel()) == 2
    error = capsys.readouterr().err
    assert "MMEB MSCOCO_t2i" in error and "row 0" in error and "tgt_img_path[1]" in error


def test_retrieval_sugarcrepe_sts_and_compare(run_cli, tmp_path, capsys, data_excerpts):
    path = write_karpathy(tmp_path / "dataset_flickr30k.json", karpathy_images(tmp_path / "images", 3))
    assert (
        run_cli(
            [
                "eval",
                "retrieval",
                "--model",
                "m",
                "--data",
                str(path),
                "--image-dir",
                str(tmp_path / "images"),
                "--output",
                str(tmp_path / "a.json"),
            ],
            ConceptModel(),
        )
        == 0
    )
    assert read_metrics(tmp_path / "a.json")["retrieval/flickr30k/t2i_R@1"] == 100.0
    assert (
        run_cli(
            [
                "eval",
                "retrieval",
                "--model",
                "m",
                "--data",
                str(path),
                "--image-dir",
                str(tmp_path / "images"),
                "--output",
                str(tmp_path / "b.json"),
                "--compare",
                str(tmp_path / "a.json"),
            ],
            RandomModel(),
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| Metric | a | b | Δ |" in out
    missing = [
        "eval",
        "retrieval",
        "--model",
        "m",
        "--data",
        str(path),
        "--compare",
        str(tmp_path / "none.json"),
    ]
    assert run_cli(missing, object()) == 2
    assert "none.json does not exist" in capsys.readouterr().err

    assert (
        run_cli(
            [
                "eval",
                "compare",
                str(tmp_path / "a.json"),
                str(tmp_path / "b.json"),
                "--output",
                str(tmp_path / "c.md"),
            ]
        )
        == 0
    )
    assert "retrieval/flickr30k/i2t_R@1 | 100.0 |" in (tmp_path / "c.md").read_text()

    sugar = write_sugarcrepe(
        tmp_path / "sugar", tmp_path / "coco", {"swap_att": [("cat_1.png", "a cat", "a dog")]}
    )
    assert (
        run_cli(
            [
                "eval",
                "sugarcrepe",
                "--model",
                "m",
                "--data-dir",
                str(sugar),
                "--image-dir",
                str(tmp_path / "coco"),
            ],
            ConceptModel(),
        )
        == 0
    )
    assert "| swap_att | 100.0 |" in capsys.readouterr().out

    sick = data_excerpts / "sick" / "sick_trial.jsonl"  # 12 pairs of SICK's TRIAL split
    assert (
        run_cli(
            [
                "eval",
                "sts",
                "--model",
                "m",
                "--data",
                str(sick),
                "--name",
                "sick",
                "--output",
                str(tmp_path / "s.json"),
            ],
            RandomModel(),
        )
        == 0
    )
    assert "sts/sick/spearman" in read_metrics(tmp_path / "s.json")
    assert run_cli(["eval", "sts", "--model", "m", "--data", str(sick), "--name", "a", "--name", "b"]) == 2
    assert "--name given 2 times for 1 --data" in capsys.readouterr().err


def test_result_files_and_tables(tmp_path):
    metrics = {"sts/sick/spearman": float("nan"), "sts/stsb/spearman": 81.25}
    markdown = write_results(tmp_path / "r.json", "sts", metrics, model="m")
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["sts/sick/spearman"] is None
    assert "| sick | - |" in markdown.read_text() and "| stsb | 81.2 |" in markdown.read_text()
    table = compare_markdown([("old", {"k": 50.0}), ("new", {"k": 62.5, "extra": 1.0})])
    assert "| k | 50.0 | 62.5 | +12.5 |" in table and "| extra | - | 1.0 | - |" in table
    with pytest.raises(ValueError, match="at least two"):
        compare_markdown([("one", {})])
    summary = mmeb_markdown(
        {
            "mmeb/ImageNet-1K/precision@1": 50.0,
            "mmeb/classification/precision@1": 50.0,
            "mmeb/IND/precision@1": 50.0,
            "mmeb/overall/precision@1": 50.0,
        }
    )
    assert summary.splitlines()[0].startswith(
        "| Classification (1/10) | VQA (0/10) | Retrieval (0/12) | Grounding (0/4) | IND (1/20) | OOD (0/16) | Overall (1/36) |"
    )
    (tmp_path / "bad.json").write_text('{"metrics": {"a": "x"}}')
    with pytest.raises(ValueError, match="bad.json"):
        read_metrics(tmp_path / "bad.json")


def test_plot_commands(run_cli, tmp_path, capsys):
    path = write_karpathy(tmp_path / "dataset_coco.json", karpathy_images(tmp_path / "images", 6))
    assert (
        run_cli(
            [
                "plot",
                "similarity",
                "--model",
                "a",
                "--model",
                "b",
                "--labels",
                "oracle",
                "random",
                "--retrieval-data",
                str(path),
                "--image-dir",
                str(tmp_path / "images"),
                "-n",
                "5",
                "--output",
                str(tmp_path / "sim.png"),
            ],
            ConceptModel(),
        )
        == 0
    )
    assert (tmp_path / "sim.png").stat().st_size > 1000
    assert (
        "oracle: diagonal_mean 1.000, off_diagonal_mean 0.000, gap 1.000, row_top1 1.000"
        in capsys.readouterr().out
    )
    assert (
        run_cli(
            [
                "plot",
                "similarity",
                "--model",
                "a",
                "--retrieval-data",
                str(path),
                "--image-dir",
                str(tmp_path / "images"),
                "-n",
                "50",
                "--output",
                str(tmp_path / "x.png"),
            ],
            ConceptModel(),
        )
        == 2
    )
    assert "fewer than the 50 asked for (-n)" in capsys.readouterr().err

    state = {
        "log_history": [{"step": s, "loss": 2.0 / s, "grad_norm": 10.0 / s} for s in range(1, 6)]
        + [{"step": 5, "eval_loss": 1.0}]
    }
    (tmp_path / "hard").mkdir()
    (tmp_path / "hard" / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "easy.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.01, "grad_norm": 0.001}) + "\n" for s in range(1, 6))
    )
    assert (
        run_cli(
            [
                "plot",
                "training",
                "--log",
                str(tmp_path / "hard" / "trainer_state.json"),
                "--log",
                str(tmp_path / "easy.jsonl"),
                "--output",
                str(tmp_path / "curves.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (
        run_cli(
            [
                "plot",
                "training",
                "--log",
                str(tmp_path / "easy.jsonl"),
                "--labels",
                "a",
                "b",
                "--output",
                str(tmp_path / "c.png"),
            ]
        )
        == 2
    )
