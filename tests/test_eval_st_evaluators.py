"""The sentence-transformers evaluator wrappers and the mteb adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_fixtures import ConceptModel, RandomModel, karpathy_images, write_karpathy, write_mmeb_suite

from unime.evaluation.mmeb import load_mmeb
from unime.evaluation.mteb_wrapper import MTEBEncoder
from unime.evaluation.retrieval import load_retrieval
from unime.evaluation.st_evaluators import LOG_FILE, MMEBEvaluator, RetrievalEvaluator, STSEvaluator
from unime.evaluation.sts import STSDataset


def test_mmeb_evaluator_reports_primary_metric_and_logs(tmp_path):
    datasets = load_mmeb(*write_mmeb_suite(tmp_path))
    evaluator = MMEBEvaluator(datasets, batch_size=4)
    metrics = evaluator(ConceptModel(), output_path=str(tmp_path), epoch=1, steps=10)
    assert (
        evaluator.primary_metric == "mmeb/overall/precision@1" and metrics[evaluator.primary_metric] == 100.0
    )
    logged = json.loads((tmp_path / LOG_FILE).read_text().splitlines()[0])
    assert logged["steps"] == 10 and logged["metrics"]["mmeb/Custom/precision@1"] == 100.0
    outside = MMEBEvaluator([d for d in datasets if d.name == "Custom"])
    assert outside.primary_metric == "mmeb/Custom/precision@1"


def test_named_evaluators_prefix_keys_and_primary_metric(tmp_path):
    path = write_karpathy(tmp_path / "dataset_coco.json", karpathy_images(tmp_path / "images", 3))
    evaluator = RetrievalEvaluator([load_retrieval(path, tmp_path / "images")], name="val")
    metrics = evaluator(RandomModel())
    assert evaluator.primary_metric == "val_retrieval/mean_R@1" and evaluator.primary_metric in metrics
    sts = STSEvaluator([STSDataset("pairs", ["a b", "c d", "e f"], ["a", "c", "x"], [3.0, 2.0, 1.0])])
    assert set(sts(RandomModel())) == {"sts/pairs/spearman"}
    with pytest.raises(ValueError, match="at least one dataset"):
        STSEvaluator([])


def test_mteb_adapter_turns_batches_into_contract_inputs(images):
    seen = []

    class Recorder:
        def encode(self, inputs, batch_size=32, show_progress_bar=False):
            seen.extend(inputs)
            return np.eye(len(inputs), 4, dtype=np.float32)

    class Task:
        name = "Flickr30kT2IRetrieval"

    adapter = MTEBEncoder(Recorder(), instructions={"Flickr30kT2IRetrieval": "Find the image."})
    batches = [{"text": ["a dog", "a cat"]}, {"image": [images[0], [images[1]]], "text": ["", "caption"]}]
    out = adapter.encode(
        batches, task_metadata=Task(), hf_split="test", hf_subset="default", prompt_type="query"
    )
    assert out.shape == (4, 4)
    assert seen[0] == {"text": "a dog", "instruction": "Find the image."}
    assert seen[2] == {"image": images[0], "instruction": "Find the image."}
    assert seen[3] == {"text": "caption", "image": images[1], "instruction": "Find the image."}
    adapter.encode([{"text": ["x"]}], task_metadata=Task(), prompt_type="passage")
    assert seen[-1] == {"text": "x"}
    assert np.allclose(adapter.similarity(out, out), np.eye(4)) and np.allclose(
        adapter.similarity_pairwise(out, out), 1
    )
    with pytest.raises(ValueError, match="2 images"):
        adapter.encode([{"image": [[images[0], images[1]]]}], task_metadata=Task())


def test_mteb_adapter_satisfies_the_protocol():
    from mteb.models import EncoderProtocol

    assert isinstance(MTEBEncoder(ConceptModel()), EncoderProtocol)
