"""`unime demo`: the whole recipe in miniature, end to end through the CLI (tiny preset)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import unime
from unime.cli import main
from unime.demo.report import demo_markdown
from unime.evaluation.bootstrap import bootstrap_interval
from unime.evaluation.retrieval import recall_from_ranks


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
    # Replace was never scored on the ablations: its column is left out, not blank.
    assert "| hard | 1.650 | 3 | 2.0 | 25.0 | 40.0 | 61.0 |" in report
    header = next(line for line in report.splitlines() if line.startswith("| Negatives |"))
    assert "Swap" in header and "Replace" not in header
    assert "![Similarity](similarity.png)" in report


def test_report_gives_retrieval_intervals_and_paired_margins():
    # 24 images, 48 captions: the base finds 3 images at R@1, stage 1+2 those 3 and 9 more; text-to-image
    # is the same for both, so its paired margin is exactly zero.
    base_i2t = np.array([0] * 3 + [7] * 21)
    t2i = np.arange(48) % 12
    ranks = {"base": {"retrieval/synth/i2t": base_i2t, "retrieval/synth/t2i": t2i},
             "stage 1+2": {"retrieval/synth/i2t": np.where(np.arange(24) < 12, 0, base_i2t), "retrieval/synth/t2i": t2i}}
    results = {name: {f"retrieval/synth/{key}": value for key, value in recall_from_ranks(
        {direction[-3:]: values for direction, values in sets.items()}).items()} for name, sets in ranks.items()}
    report = demo_markdown("tiny", results, {}, ranks=ranks)
    low, high = bootstrap_interval(base_i2t < 1)
    assert f"| base | 12.5 [{low:.1f}, {high:.1f}] |" in report and low < 12.5 < high
    assert "## Margins on the synthetic retrieval set: paired bootstrap of the R@K differences" in report
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line
            for line in report.splitlines() if line.startswith("| stage 1+2 vs base |")}
    # Nine more images found at R@1 and R@5 (37.5 points); at R@10 both find all 24.
    assert "| +37.5 [+" in rows[("stage 1+2 vs base", "I2T")] and rows[("stage 1+2 vs base", "I2T")].endswith(
        "| +0.0 [+0.0, +0.0] | higher: R@1, R@5 |")
    assert rows[("stage 1+2 vs base", "T2I")].endswith("| +0.0 [+0.0, +0.0] | +0.0 [+0.0, +0.0] | +0.0 [+0.0, +0.0] | none |")
    # Without the other models' ranks the other comparisons are named, not invented.
    assert "Not scored on this set for both models: stage 1+2 vs stage 1; stage 1+2 vs stage 2; hard vs all" in report


def test_margins_use_the_photos_where_the_preset_has_them_and_rank_every_negative_type():
    rng = np.random.default_rng(0)
    names = ("base", "stage 1", "stage 2", "stage 1+2", "stage 1+2, all negatives", "stage 1+2, random negatives",
             "stage 1+2, easy negatives")
    ranks = {name: {"retrieval/synth/i2t": rng.integers(0, 8, 8), "retrieval/synth/t2i": rng.integers(0, 8, 16),
                    "retrieval/flickr8k/i2t": rng.integers(0, 30, 50), "retrieval/flickr8k/t2i": rng.integers(0, 30, 250)}
             for name in names}
    # The full recipe finds every photo at R@1: its margin over the base excludes zero.
    ranks["stage 1+2"]["retrieval/flickr8k/i2t"] = np.zeros(50, dtype=int)
    results = {name: {f"retrieval/flickr8k/{key}": value for key, value in recall_from_ranks(
        {"i2t": sets["retrieval/flickr8k/i2t"], "t2i": sets["retrieval/flickr8k/t2i"]}).items()}
        for name, sets in ranks.items()}
    report = demo_markdown("seeing", results, {}, ranks=ranks)
    assert "## Margins on the Flickr8k dev subset" in report and "Margins on the synthetic" not in report
    labels = [line.split("|")[1].strip() for line in report.splitlines() if " vs " in line and line.startswith("|")]
    assert labels == [label for label in ("stage 1+2 vs base", "stage 1+2 vs stage 1", "stage 1+2 vs stage 2",
                                          "hard vs all (VLM2Vec) negatives", "hard vs random negatives",
                                          "hard vs easy negatives") for _ in range(2)]
    margin = next(line for line in report.splitlines() if line.startswith("| stage 1+2 vs base | I2T |"))
    assert "higher: R@1" in margin and "Not scored" not in report
    assert "| hard | nan | nan | nan | nan | 100.0 [100.0, 100.0] |" in report


def test_the_shipped_default_is_a_reference_row_of_the_photo_table_only():
    results = {"base": {"retrieval/flickr8k/i2t_R@1": 6.0, "retrieval/flickr8k/t2i_R@1": 2.4},
               "stage 1+2": {"retrieval/flickr8k/i2t_R@1": 22.0, "retrieval/flickr8k/t2i_R@1": 20.8},
               "unime-smol": {"retrieval/flickr8k/i2t_R@1": 48.0, "retrieval/flickr8k/t2i_R@1": 40.4}}
    report = demo_markdown("seeing", results, {})
    photo_rows = [line for line in report.split("## Real photos")[1].split("##")[0].splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in photo_rows[1:]] == ["base", "stage 1+2", "unime-smol (shipped, reference)"]
    assert "| unime-smol (shipped, reference) | 48.0 | - | - | 40.4 |" in report
    assert "what more training gives" in report
    # Not a row of the synthetic tables, where it was not evaluated.
    assert report.count("unime-smol (shipped, reference)") == 1


@pytest.mark.timeout(900)
def test_tiny_demo_runs_every_stage_and_writes_report_and_figures(tmp_path, capfd):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--output-dir", str(out)]) == 0
    console, errors = capfd.readouterr()
    # One line per step, and no progress bar of a model load, an encode or a save on the console.
    steps = [line for line in console.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in steps] == [f"[{i}/16" for i in range(1, 17)]
    assert all(re.search(r" \.\.\. done in \d+ s( \(\d+ warnings? in demo\.log\))?(: |$)", line) for line in steps)
    assert "evaluating stage 1 ... done" in console and "MMEB overall" in steps[2]
    for bar in ("it/s", "s/it", "%|", "Loading weights", "Writing model shards", "Batches", "'loss'"):
        assert bar not in console and bar not in errors, bar
    log = (out / "demo.log").read_text()
    assert "'loss'" in log and "Writing model shards" not in log and "Loading weights" not in log
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
    # Per-query ranks behind every R@K, and the paired margins of the main comparisons on them.
    ranks = json.loads((out / "query_ranks.json").read_text())
    assert len(ranks["stage 1+2"]["retrieval/synth/i2t"]) == 24 and len(ranks["base"]["retrieval/synth/t2i"]) == 48
    assert "## Margins on the synthetic retrieval set: paired bootstrap of the R@K differences" in report
    for comparison in ("stage 1+2 vs base", "stage 1+2 vs stage 1", "stage 1+2 vs stage 2"):
        rows = [line for line in report.splitlines() if line.startswith(f"| {comparison} |")]
        assert [row.split("|")[2].strip() for row in rows] == ["I2T", "T2I"]
        assert all(row.count("[") == 3 and row.rstrip(" |").split("|")[-1].strip() for row in rows)
    key = "retrieval/synth/i2t_R@1"
    margin = next(line for line in report.splitlines() if line.startswith("| stage 1+2 vs base | I2T |"))
    assert f"| {results['stage 1+2'][key] - results['base'][key] + 0.0:+.1f} [" in margin
    # The tiny preset scores its negative-type ablations on SugarCrepe only, and the report says so.
    assert "Not scored on this set for both models: hard vs all (VLM2Vec) negatives" in report
    base_row = next(line for line in report.splitlines() if line.startswith("| base | ") and "[" in line)
    assert f"| base | {results['base'][key]:.1f} [" in base_row
