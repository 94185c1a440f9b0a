"""Judge-based hard-negative mining (UniME-V2): retrieve, judge, filter, sample.

UniME-V2 (arXiv 2510.13515, Sec. 3) mines each training query's negatives in three steps:

1. **Retrieve** the top ``N`` (50) candidates of the query from the pool of training targets with an
   existing embedder (theirs: VLM2Vec; here any unime model), the positive (and copies of it) left out.
2. **Judge** every (query, candidate) pair and the (query, positive) pair with an MLLM
   (:mod:`unime.judge`): a yes-probability each.
3. **Filter and sample**: a candidate whose judge score exceeds the positive's minus ``beta`` (0.01)
   is a false negative and is dropped; of the rest, ``k`` (8) are kept by cyclic sampling, so that
   successive rounds (``cycle`` 0, 1, ...) take different negatives: the survivors in order of judge
   score, hardest first, and round ``c`` takes the ``k`` starting at ``c * k``, wrapping around; a
   query with fewer than ``k`` survivors repeats them (the paper fills short lists by copying).

Each step writes its file beside the output, so a stopped run resumes where it was: the candidates
(``OUT.candidates.json``, a judge file without scores), their scores (``OUT.scored.json``, by
:func:`unime.judge.judge_file`, itself resumable) and the mined rows (``OUT``, a judge file with
``k`` hard negatives a row and their scores, ready for ``unime tune --loss unime-v2``).

The paper also names a retrieval-similarity threshold ``delta`` on the candidates without its
value or direction being clear from the text; ``max_similarity`` leaves out candidates whose
retrieval cosine is at or above it (near-copies of the query's target), and is off by default.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unime.io.integrity import write_json_atomic
from unime.judge import Judge, JudgeRow, judge_file, read_judge_file, resolve_image

__all__ = ["cyclic_sample", "mine", "retrieve_candidates", "select_negatives"]

logger = logging.getLogger(__name__)


def cyclic_sample(items: Sequence[Any], keep: int, cycle: int = 0) -> list[Any]:
    """``keep`` items starting at ``cycle * keep``, wrapping around ``items`` (repeating them when
    there are fewer than ``keep``); empty when ``items`` is."""
    if keep <= 0 or cycle < 0:
        raise ValueError(f"keep must be positive and cycle non-negative, got {keep} and {cycle}")
    if not items:
        return []
    start = (cycle * keep) % len(items)
    return [items[(start + i) % len(items)] for i in range(keep)]


def select_negatives(positive_score: float, candidates: Sequence[tuple[str, str]], scores: Sequence[float], *,
                     keep: int = 8, beta: float = 0.01, cycle: int = 0) -> tuple[list[tuple[str, str]], list[float], int]:
    """UniME-V2's filter and sampling for one query: drop candidates scoring above
    ``positive_score - beta`` (false negatives), order the rest by judge score (hardest first; ties
    keep retrieval order), take ``keep`` by :func:`cyclic_sample`. Returns the negatives, their
    scores and how many were dropped as false negatives."""
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    threshold = positive_score - beta
    survivors = [(s, i) for i, s in enumerate(scores) if s <= threshold]
    survivors.sort(key=lambda pair: (-pair[0], pair[1]))
    chosen = cyclic_sample(survivors, keep, cycle)
    return [candidates[i] for _, i in chosen], [s for s, _ in chosen], len(scores) - len(survivors)


def _content(side: tuple[str, str]) -> tuple[str, str]:
    return (side[0] or "", side[1] or "")


def _encode_shared(model: Any, inputs: list[Any], batch_size: int) -> np.ndarray:
    """Unit embeddings of ``inputs``: in one process all of them; in a torch.distributed group each rank
    a contiguous share, then every rank gets all rows."""
    from unime.environment import rank_and_world_size

    rank, world = rank_and_world_size(environment=False)
    if world <= 1:
        return np.asarray(model.encode(inputs, batch_size=batch_size, normalize_embeddings=True), dtype=np.float32)
    import math

    from unime.environment import all_gather_rows

    per_rank = math.ceil(len(inputs) / world)
    share = inputs[rank * per_rank:(rank + 1) * per_rank]
    local = (np.asarray(model.encode(share, batch_size=batch_size, normalize_embeddings=True), dtype=np.float32)
             if share else np.zeros((0, 0), dtype=np.float32))
    return all_gather_rows(local, len(inputs), per_rank)


def retrieve_candidates(model: Any, rows: Sequence[JudgeRow], *, top_n: int = 50, image_root: str | Path | None = None,
                        max_similarity: float | None = None, batch_size: int = 32) -> list[JudgeRow]:
    """Each row with its top ``top_n`` candidates from the pool of all rows' positives (distinct by
    text and image), by the cosine of ``model``'s embeddings; the row's own positive and copies of
    it are never candidates. ``max_similarity``: leave out candidates at or above that cosine. In a
    torch.distributed group the embedding is split between the ranks, and every rank gets every row."""
    from unime.inputs import EmbedInput

    if top_n <= 0:
        raise ValueError(f"top_n must be positive, got {top_n}")
    root = Path(image_root) if image_root is not None else None
    pool: dict[tuple[str, str], int] = {}
    for row in rows:
        pool.setdefault(_content(row.positive), len(pool))
    pool_items = list(pool)

    def embed_input(side: tuple[str, str]) -> EmbedInput:
        return EmbedInput(text=side[0] or None, image=resolve_image(side[1], root))

    queries = _encode_shared(model, [embed_input(row.query) for row in rows], batch_size)
    targets = _encode_shared(model, [embed_input(item) for item in pool_items], batch_size)
    similarity = np.asarray(queries, dtype=np.float32) @ np.asarray(targets, dtype=np.float32).T
    out = []
    for i, row in enumerate(rows):
        scores = similarity[i].copy()
        scores[pool[_content(row.positive)]] = -np.inf
        if max_similarity is not None:
            scores[scores >= max_similarity] = -np.inf
        order = [int(j) for j in np.argsort(-scores, kind="stable")[:top_n] if np.isfinite(scores[j])]
        out.append(JudgeRow(row.query, row.positive, [pool_items[j] for j in order]))
    return out


def mine(retriever: str | Path | Any, judge: str | Path | Judge, data: str | Path, output: str | Path, *,
         image_root: str | Path | None = None, top_n: int = 50, keep: int = 8, beta: float = 0.01, cycle: int = 0,
         max_similarity: float | None = None, batch_size: int = 32, judge_batch_size: int = 8,
         overwrite: bool = False, trust_remote_code: bool = False, device: str | None = None) -> Path:
    """The whole mining run (module docstring) from the rows of ``data`` (a judge file; its hard
    negatives, if any, are ignored) to ``output``; resumable through the files beside the output.
    ``device``: where the models compute (default: the retriever's loader's choice; the judge where
    it was loaded).

    In a torch.distributed group (``torchrun``) every rank calls it: the embedding and the judging are
    split between the ranks (:func:`retrieve_candidates`, :func:`unime.judge.judge_file`), rank 0 writes
    each file, the same bytes as one process, and the other ranks return once their share is judged."""
    from unime.environment import rank_and_world_size

    output = Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists (overwrite to replace it)")
    if keep <= 0:
        raise ValueError(f"keep must be positive, got {keep}")
    rows = read_judge_file(data)
    rank = rank_and_world_size(environment=False)[0]
    candidates_path = output.with_name(output.stem + ".candidates.json")
    scored_path = output.with_name(output.stem + ".scored.json")
    if candidates_path.exists():
        logger.info("mine: candidates from %s", candidates_path)
        candidate_rows = read_judge_file(candidates_path)
        if [(r.query, r.positive) for r in candidate_rows] != [(r.query, r.positive) for r in rows]:
            raise ValueError(f"{candidates_path}: candidates of other rows than {data}; delete it to retrieve again")
    else:
        from unime.modeling import load_model

        model = retriever if not isinstance(retriever, (str, Path)) else load_model(
            str(retriever), trust_remote_code=trust_remote_code, device=device)
        candidate_rows = retrieve_candidates(model, rows, top_n=top_n, image_root=image_root,
                                             max_similarity=max_similarity, batch_size=batch_size)
        del model  # the judge needs the memory
        if rank == 0:
            write_json_atomic(candidates_path, [row.to_json() for row in candidate_rows])
            logger.info("mine: %d rows, up to %d candidates each -> %s", len(rows), top_n, candidates_path)
    if not scored_path.exists():
        judge_model = judge if not isinstance(judge, (str, Path)) else Judge(
            judge, trust_remote_code=trust_remote_code, device=device)
        judge_file(judge_model, candidates_path, scored_path, image_root=image_root, batch_size=judge_batch_size,
                   rows=candidate_rows)
    if rank != 0:
        return output
    scored = read_judge_file(scored_path)
    mined, dropped, short = [], 0, 0
    for row in scored:
        negatives, scores, false = select_negatives(row.positive_score, row.negatives, row.negative_scores,
                                                    keep=keep, beta=beta, cycle=cycle)
        dropped += false
        if not negatives:
            short += 1
            logger.warning("mine: no negative left for query %r (every candidate judged a false negative)",
                           (row.query[0] or row.query[1])[:60])
            continue
        mined.append(JudgeRow(row.query, row.positive, negatives, row.positive_score, scores))
    write_json_atomic(output, [row.to_json() for row in mined])
    total = sum(len(row.negatives) for row in scored)
    logger.info("mine: %d of %d candidates dropped as false negatives (beta %.3g); %d rows written, %d without "
                "negatives left out", dropped, total, beta, len(mined), short)
    return output
