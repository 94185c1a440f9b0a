"""A custom dataset grouping (e.g. the synthetic benchmark's splits.json) replaces the paper's split."""

from __future__ import annotations

import json

import pytest

from unime.cli import CLIError
from unime.cli.eval import read_groups
from unime.evaluation.mmeb import summarize_mmeb


def test_summary_uses_the_given_groups_instead_of_the_paper_split():
    scores = {"ShapeCls-IND": 80.0, "ShapeCls-OOD": 40.0, "SynthVQA-IND": 60.0, "ImageNet-1K": 10.0}
    groups = {"ShapeCls-IND": ("classification", "IND"), "ShapeCls-OOD": ("classification", "OOD"),
              "SynthVQA-IND": ("vqa", "IND")}
    metrics = summarize_mmeb(scores, groups)
    assert metrics["mmeb/classification/precision@1"] == pytest.approx(60.0)
    assert metrics["mmeb/IND/precision@1"] == pytest.approx(70.0)
    assert metrics["mmeb/OOD/precision@1"] == pytest.approx(40.0)
    assert metrics["mmeb/overall/precision@1"] == pytest.approx(60.0)  # ImageNet-1K is outside these groups
    assert metrics["mmeb/ImageNet-1K/precision@1"] == 10.0
    assert summarize_mmeb(scores)["mmeb/overall/precision@1"] == 10.0  # the paper's split: only ImageNet-1K


def test_groups_file_is_validated(tmp_path):
    good = tmp_path / "splits.json"
    good.write_text(json.dumps({"A-IND": {"meta_task": "vqa", "split": "IND"}}))
    assert read_groups(str(good)) == {"A-IND": ("vqa", "IND")}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"A-IND": {"meta_task": "captioning", "split": "IND"}}))
    with pytest.raises(CLIError, match="'A-IND' needs meta_task"):
        read_groups(str(bad))
