"""Reranking with an MLLM judge (UniME-V2): the embedder's top candidates re-ordered by a judge.

UniME-V2 reports its embedder alone and with its reranker, which re-scores the embedder's top 5
candidates of each query. Here the reranker is any judge (:class:`unime.judge.Judge`): the top
``k`` candidates of each query by embedding score are ordered by the judge's yes-probability
(ties keep the embedding order), and precision@1 is read from that order. The judge sees the
query's and the candidate's text (MMEB's image placeholders removed) and images, as in
:func:`unime.judge.judge_content`. Each distinct (query, candidate) pair is judged once.

Image-text retrieval (:func:`rerank_retrieval_ranks`) is reranked the same way in both directions:
an image's top ``k`` captions by cosine (the judge's query the image alone, its candidates each
caption alone), a caption's top ``k`` images (the caption as query, each image as candidate). Ties
of cosine are broken against the positive, as :mod:`unime.evaluation.retrieval` counts ranks, so a
positive outside the top ``k`` stays at its rank, and R@K for K at or above ``k`` does not change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from unime.evaluation.mmeb import MMEBDataset
from unime.evaluation.retrieval import RetrievalDataset, unit_rows

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


def _top_candidates(queries: np.ndarray, candidates: np.ndarray, own: Any, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the columns of its first ``top`` candidates by score, a tie with a positive broken
    against it, and whether each is a positive. ``own(rows)``: the positive mask of those query rows."""
    block = max(1, (1 << 24) // max(len(candidates), 1))
    columns = np.empty((len(queries), min(top, len(candidates))), dtype=np.int64)
    positive = np.empty(columns.shape, dtype=bool)
    for start in range(0, len(queries), block):
        rows = np.arange(start, min(start + block, len(queries)))
        scores = queries[rows] @ candidates.T
        mask = own(rows)
        order = np.lexsort((mask, -scores), axis=-1)[:, :columns.shape[1]]
        columns[rows] = order
        positive[rows] = np.take_along_axis(mask, order, axis=1)
    return columns, positive


def rerank_retrieval_ranks(judge: Any, dataset: RetrievalDataset, text: np.ndarray, image: np.ndarray,
                           ranks: Mapping[str, np.ndarray], top: int = 5, batch_size: int = 8,
                           cache: dict[tuple[str, int, int], float] | None = None) -> dict[str, np.ndarray]:
    """The per-query ranks of :func:`unime.evaluation.retrieval.query_ranks` after the judge re-orders
    each query's top ``top`` candidates (module docstring): ``{"i2t": per image, "t2i": per caption}``.

    ``text`` and ``image`` are the dataset's caption and image embeddings, ``ranks`` the ranks before
    reranking. A query whose positive is among its top ``top`` gets the number of wrong candidates the
    judge puts before its first positive; any other keeps its rank (``top`` or more)."""
    if top <= 0:
        raise ValueError(f"top must be positive, got {top}")
    text, image = unit_rows(text), unit_rows(image)
    owner = dataset.caption_image
    if text.shape[0] != len(dataset.captions) or image.shape[0] != len(dataset.images):
        raise ValueError(f"{dataset.name}: {text.shape[0]} caption and {image.shape[0]} image embeddings for "
                         f"{len(dataset.captions)} captions and {len(dataset.images)} images")
    cache = {} if cache is None else cache
    sides = {"i2t": (image, text, lambda rows: owner[None, :] == rows[:, None]),
             "t2i": (text, image, lambda rows: np.arange(len(dataset.images))[None, :] == owner[rows][:, None])}
    tops = {direction: _top_candidates(queries, candidates, own, top)
            for direction, (queries, candidates, own) in sides.items()}

    def pair(direction: str, query: int, candidate: int) -> tuple[tuple[str, Any], tuple[str, Any]]:
        if direction == "i2t":
            return ("", dataset.images[query]), (dataset.captions[candidate], None)
        return (dataset.captions[query], None), ("", dataset.images[candidate])

    # Only queries with a positive in their top k can change rank: only their candidates are judged.
    todo = sorted({(direction, query, int(column)) for direction, (columns, positive) in tops.items()
                   for query in np.flatnonzero(positive.any(axis=1)) for column in columns[query]} - set(cache))
    if todo:
        cache.update(zip(todo, judge.score([pair(*key) for key in todo], batch_size), strict=True))
    out = {}
    for direction, (columns, positive) in tops.items():
        reranked = np.array(ranks[direction], dtype=np.int64, copy=True)
        for query in np.flatnonzero(positive.any(axis=1)):
            judged = [cache[(direction, int(query), int(column))] for column in columns[query]]
            order = sorted(range(len(judged)), key=lambda j: -judged[j])
            reranked[query] = next(place for place, j in enumerate(order) if positive[query, j])
        out[direction] = reranked
    return out
