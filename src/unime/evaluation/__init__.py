"""Pure evaluators (MMEB, image-text retrieval, SugarCrepe, STS) and what surrounds them.

An evaluator is ``evaluate_x(model, datasets, batch_size=...) -> dict[str, float]`` with flat keys
(``mmeb/ImageNet-1K/precision@1``, ``retrieval/flickr30k/i2t_R@1``, ``sugarcrepe/swap_obj/accuracy``,
``sts/sick/spearman``); every value is a percentage. Readers (``load_x``) build the dataset objects,
:mod:`unime.evaluation.runner` adds caching and resumption, :mod:`unime.evaluation.report` writes
JSON and markdown, :mod:`unime.evaluation.st_evaluators` wraps the evaluators for the trainer, and
:mod:`unime.evaluation.bootstrap` puts confidence intervals on scores from their per-query hits
(``retrieval_ranks`` keeps them for R@K).

Names are imported on first use, so ``import unime.evaluation`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate_mmeb": "mmeb",
    "load_mmeb": "mmeb",
    "load_mmeb_dataset": "mmeb",
    "summarize_mmeb": "mmeb",
    "MMEBDataset": "mmeb",
    "MMEBProtocol": "mmeb",
    "candidate_scores": "mmeb",
    "evaluate_retrieval": "retrieval",
    "load_retrieval": "retrieval",
    "RetrievalDataset": "retrieval",
    "retrieval_ranks": "retrieval",
    "recall_from_ranks": "retrieval",
    "retrieval_embeddings": "retrieval",
    "retrieval_metrics": "retrieval",
    "truncated_rows": "retrieval",
    "rerank_retrieval_ranks": "rerank",
    "bootstrap_interval": "bootstrap",
    "paired_bootstrap_interval": "bootstrap",
    "evaluate_sugarcrepe": "sugarcrepe",
    "load_sugarcrepe": "sugarcrepe",
    "SugarCrepeSplit": "sugarcrepe",
    "evaluate_sts": "sts",
    "load_sts": "sts",
    "STSDataset": "sts",
    "CachedEncoder": "encoding",
    "encode_unique": "encoding",
    "run_mmeb": "runner",
    "run_mmeb_dimensions": "runner",
    "write_results": "report",
    "compare_files": "report",
    "MMEBEvaluator": "st_evaluators",
    "RetrievalEvaluator": "st_evaluators",
    "SugarCrepeEvaluator": "st_evaluators",
    "STSEvaluator": "st_evaluators",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'unime.evaluation' has no attribute '{name}'")
    return getattr(importlib.import_module(f"unime.evaluation.{_EXPORTS[name]}"), name)
