"""Reranking with an MLLM judge (UniME-V2): the embedder's top candidates re-ordered by a judge.

UniME-V2 reports its embedder alone and with its reranker, which re-scores the embedder's top 5
candidates of each query. Here the reranker is any judge (:class:`unime.judge.Judge`): the top
``k`` candidates of each query by embedding score are ordered by the judge's yes-probability
(ties keep the embedding order), and precision@1 is read from that order. The judge sees the
query's and the candidate's text (MMEB's image placeholders removed) and images, as in
:func:`unime.judge.judge_content`. Each distinct (query, candidate) pair is judged once.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from unime.evaluation.mmeb import MMEBDataset

logger = logging.getLogger(__name__)


def _side(item: Any) -> tuple[str, Any]:
    if isinstance(item, str):
        return item, None
    return item.get("text") or "", item.get("image")


def rerank_order(judge: Any, dataset: MMEBDataset, scores: np.ndarray, top: int = 5, batch_size: int = 8,
                 cache: dict[tuple[int, int], float] | None = None) -> list[list[int]]:
    """Per query, the columns of its first ``top`` candidates by embedding score (NaN, the padding of
    shorter candidate lists, never among them), re-ordered by the judge's score (ties keep the
    embedding order)."""
    if top <= 0:
        raise ValueError(f"top must be positive, got {top}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[0] != len(dataset.queries):
        raise ValueError(f"{dataset.name}: {scores.shape[0]} score rows for {len(dataset.queries)} queries")
    cache = {} if cache is None else cache
    firsts = []
    for i, row in enumerate(scores):
        valid = min(len(dataset.targets[i]), int(np.count_nonzero(~np.isnan(row))))
        ranked = np.argsort(-np.where(np.isnan(row), -np.inf, row), kind="stable")[:min(top, valid)]
        firsts.append([int(j) for j in ranked])
    keys = [[(i, int(dataset.targets[i][j])) for j in row] for i, row in enumerate(firsts)]
    todo = sorted({key for row in keys for key in row if key not in cache})
    pairs = [(_side(dataset.queries[i]), _side(dataset.pool[c])) for i, c in todo]
    cache.update(zip(todo, judge.score(pairs, batch_size), strict=True))
    orders = []
    for row, row_keys in zip(firsts, keys, strict=True):
        judged = [cache[key] for key in row_keys]
        orders.append([row[j] for j in sorted(range(len(row)), key=lambda j: -judged[j])])
    return orders


def reranked_precision(judge: Any, dataset: MMEBDataset, scores: np.ndarray, top: int = 5,
                       batch_size: int = 8) -> float:
    """Precision@1 (x100) after the judge re-orders each query's top ``top`` candidates (the
    positive is column 0; a positive outside the top ``top`` stays a miss)."""
    orders = rerank_order(judge, dataset, scores, top, batch_size)
    value = float(np.mean([bool(order) and order[0] == 0 for order in orders]) * 100)
    logger.info("MMEB %s: reranked precision@1 %.2f (top %d)", dataset.name, value, top)
    return value
