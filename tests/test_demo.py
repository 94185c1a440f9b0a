"""`unime demo`: the whole recipe in miniature, end to end through the CLI (tiny preset)."""

from __future__ import annotations

import json

import pytest

import unime
from unime.cli import main
from unime.demo_report import demo_markdown


def test_demo_refuses_a_non_empty_output_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["demo", "--preset", "tiny", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_report_tables_hold_the_measured_numbers(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"step": i, "loss": 2.0 - 0.1 * i, "grad_norm": 3.0,
                                         "false_negative_rate": 0.02, "duplicate_rate": 0.25}) for i in range(1, 5)))
    results = {"base": {"mmeb/overall/precision@1": 12.5, "sugarcrepe/swap/accuracy": 50.0},
               "stage 1+2": {"mmeb/overall/precision@1": 40.0, "sugarcrepe/swap/accuracy": 61.0}}
    sizes = {"eval_queries": 8, "retrieval_images": 24, "sugarcrepe_per_split": 16}
    report = demo_markdown("tiny", results, {"Similarity": "similarity.png"}, {"stage 1+2": log}, sizes)
    assert "one query moves a data set's precision@1 by 12.5 points" in report and "chance R@1 4.2" in report
    assert "| base | - | - | - | - | - | - | 12.5 |" in report
    assert "| hard | 1.650 | 3 | 2.0 | 25.0 | 40.0 | - | 61.0 |" in report
    assert "![Similarity](similarity.png)" in report


@pytest.mark.timeout(900)
def test_tiny_demo_runs_every_stage_and_writes_report_and_figures(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    expected = {"base", "stage 1", "stage 2", "stage 1+2", "stage 1+2, all negatives",
                "stage 1+2, random negatives", "stage 1+2, easy negatives"}
    assert set(results) == expected
    for name in ("base", "stage 1", "stage 2", "stage 1+2"):
        assert "mmeb/overall/precision@1" in results[name] and "sts/synth/spearman" in results[name]
        assert "retrieval/synth/i2t_R@1" in results[name] and "sugarcrepe/swap/accuracy" in results[name]
    assert unime.load(str(out / "stage12")).unime_config.stages == ["distill", "tune"]
    assert unime.load(str(out / "stage2")).unime_config.stages == ["tune"]
    for run in ("stage12", "stage12-easynegatives", "stage12-randomnegatives", "stage12-allnegatives"):
        lines = (out / run / "training_log.jsonl").read_text().splitlines()
        assert any("grad_norm" in line and "false_negative_rate" in line for line in lines)
    for name, metrics in results.items():
        for key, value in metrics.items():
            low = -100.0 if key.endswith("spearman") else 0.0
            assert low <= value <= 100.0, (name, key, value)
        for direction in ("i2t", "t2i"):
            recalls = [metrics.get(f"retrieval/synth/{direction}_R@{k}") for k in (1, 5, 10)]
            if None not in recalls:
                assert recalls == sorted(recalls), (name, direction, recalls)
    # Training changed the model: its scores are not the base model's.
    assert any(results["stage 1+2"][k] != v for k, v in results["base"].items())
    report = (out / "report.md").read_text()
    assert "## MMEB-style precision@1" in report and "nan" not in report
    # The report shows the numbers of results.json, in the row of their model.
    row = next(line for line in report.splitlines() if line.startswith("| stage 1+2 |"))
    assert f"{results['stage 1+2']['mmeb/overall/precision@1']:.1f}" in row
    assert (out / "similarity.png").stat().st_size > 0 and (out / "negatives.png").stat().st_size > 0
