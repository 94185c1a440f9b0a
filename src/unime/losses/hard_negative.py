"""Stage 2 of UniME: InfoNCE over each query's positive and its mined hard negatives.

For every query the candidate pool (all positives of the batch, plus any explicit negatives) is
scored by cosine similarity; candidates that score clearly above the query's own positive are
dropped as likely false negatives, candidates known to hold the same content as the positive (when
the data gives content ids) are excluded, and the k most similar survivors become the negatives of
an InfoNCE with temperature. :func:`mine_negatives` is the selection alone, shared by the loss and the
statistics the trainer logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unime.choices import NEGATIVE_MODES
from unime.losses.base import EmbeddingLoss, _check_temperature
from unime.losses.distributed import gather_rows, gather_with_grad, global_mean, world_size
from unime.losses.similarity_kl import _check_matrix


@dataclass(frozen=True)
class MiningResult:
    """The negatives chosen for each query row of a score matrix [n, m].

    ``selected`` [n, m] bool: the candidates used as negatives. ``dropped`` [n, m] bool: the
    candidates removed by the similarity-margin filter (never selected). ``duplicates`` [n, m]
    bool: the candidates excluded because they hold the same content as the row's positive (never
    selected, not counted in ``dropped``). ``indices`` [n, k] long: the selected columns of each
    row in the order they were chosen (most similar first for "hard", least similar first for
    "easy"), padded with -1 where a row has fewer than k survivors.
    """

    selected: Tensor
    dropped: Tensor
    indices: Tensor
    duplicates: Tensor


def _check_mining_options(num_negatives: int, false_negative_margin: float, negatives: str) -> None:
    if negatives not in NEGATIVE_MODES:
        raise ValueError(f"negatives must be one of {', '.join(NEGATIVE_MODES)}; got {negatives!r}")
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
        raise ValueError(
            f"num_hard_negatives (num_negatives) must be a positive integer, got {num_negatives!r}"
        )
    if not isinstance(false_negative_margin, (int, float)) or math.isnan(false_negative_margin):
        raise ValueError(
            f"false_negative_margin must be a number (math.inf disables the filter), got {false_negative_margin!r}"
        )


def mine_negatives(
    scores: Tensor,
    positive_index: Tensor,
    num_negatives: int = 8,
    false_negative_margin: float = 0.1,
    negatives: str = "hard",
    generator: torch.Generator | None = None,
    same_as_positive: Tensor | None = None,
) -> MiningResult:
    """Choose the negatives of each row of ``scores`` [n, m]; row i's positive is column ``positive_index[i]``.

    0. Duplicates: where ``same_as_positive[i, j]`` is True (candidate j holds exactly the content of
       row i's positive, e.g. the same class label in another row of the batch), j is never a
       negative of row i, in every mode including "all". Its similarity equals the positive's, so
       the margin filter below cannot catch it, and a negative identical to the positive puts a
       floor of ln(k + 1) under the loss that no model can go below.
    1. False-negative filter: candidate j (not the positive) is dropped for row i when
       ``scores[i, j] > scores[i, positive_index[i]] + false_negative_margin`` (strictly greater: a
       candidate exactly at the threshold survives).
    2. Among the survivors, ``negatives`` picks up to ``num_negatives``: "hard" the most similar,
       "easy" the least similar, "random" uniformly (drawn from ``generator``). A row with fewer
       survivors gets only its survivors, never the positive or a dropped candidate.
    3. ``negatives="all"`` skips both steps: every candidate but the positive is selected and none
       dropped (plain in-batch InfoNCE, the VLM2Vec baseline); ``num_negatives`` is then unused.

    Ties are broken deterministically by the lower column index (a stable sort), for "hard" and
    "easy" alike. The scores are read without gradient: mining is a discrete choice.
    """
    _check_mining_options(num_negatives, false_negative_margin, negatives)
    _check_matrix("scores", scores)
    n, m = scores.shape
    if positive_index.shape != (n,) or positive_index.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"positive_index must be an integer tensor of shape [{n}], got {tuple(positive_index.shape)}"
        )
    if n and (int(positive_index.min()) < 0 or int(positive_index.max()) >= m):
        raise ValueError(f"positive_index must lie in [0, {m}), got values up to {int(positive_index.max())}")
    if same_as_positive is not None and (same_as_positive.shape != (n, m) or same_as_positive.dtype != torch.bool):
        raise ValueError(
            f"same_as_positive must be a bool tensor of shape [{n}, {m}], got "
            f"{same_as_positive.dtype} {tuple(same_as_positive.shape)}"
        )
    scores = scores.detach()
    rows = torch.arange(n, device=scores.device)
    positive_index = positive_index.to(scores.device)
    is_positive = torch.zeros_like(scores, dtype=torch.bool)
    is_positive[rows, positive_index] = True
    duplicates = torch.zeros_like(is_positive)
    if same_as_positive is not None:
        duplicates = same_as_positive.to(scores.device) & ~is_positive
    if negatives == "all":
        selected = ~(is_positive | duplicates)
        columns = torch.arange(m, device=scores.device).expand(n, m)
        # Chosen columns first, in column order; -1 pads rows that lost candidates to duplicates.
        order = torch.sort((~selected).to(torch.int8), dim=1, stable=True).indices[:, : m - 1]
        indices = torch.where(torch.gather(selected, 1, order), torch.gather(columns, 1, order), -1)
        return MiningResult(selected=selected, dropped=torch.zeros_like(is_positive), indices=indices,
                            duplicates=duplicates)

    threshold = scores[rows, positive_index] + false_negative_margin
    dropped = (scores > threshold[:, None]) & ~is_positive & ~duplicates
    eligible = ~(dropped | is_positive | duplicates)
    if negatives == "hard":
        key = scores
    elif negatives == "easy":
        key = -scores
    else:
        device = generator.device if generator is not None else scores.device
        key = torch.rand(scores.shape, generator=generator, device=device).to(scores.device)
    # -inf sorts the ineligible columns last; only the first min(k, survivors) columns are kept,
    # so a -inf entry is never chosen (the official example's topk could pick them).
    key = key.masked_fill(~eligible, -math.inf)
    k = min(num_negatives, m)
    top = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    valid = torch.arange(k, device=scores.device)[None, :] < eligible.sum(dim=1, keepdim=True)
    selected = torch.zeros_like(is_positive).scatter_(1, top, valid)
    return MiningResult(selected=selected, dropped=dropped, indices=torch.where(valid, top, -1),
                        duplicates=duplicates)


def _cosine_scores(query: Tensor, pool: Tensor) -> Tensor:
    dtype = torch.promote_types(query.dtype, torch.float32)
    # At least float32, also inside an autocast region: the scores are divided by tau = 0.02.
    with torch.autocast(query.device.type, enabled=False):
        return F.normalize(query.to(dtype), dim=-1) @ F.normalize(pool.to(dtype), dim=-1).T


def hard_negative_infonce_rows(
    query: Tensor,
    pool: Tensor,
    positive_index: Tensor,
    temperature: float,
    num_negatives: int,
    false_negative_margin: float,
    negatives: str,
    generator: torch.Generator | None = None,
    pool_ids: Tensor | None = None,
    same_as_positive: Tensor | None = None,
) -> tuple[Tensor, MiningResult, Tensor]:
    """Per-row InfoNCE of ``query`` [n, d] against its positive and mined negatives in ``pool`` [m, d].

    Returns ``(row_losses [n], mining, scores [n, m])``. Row i's loss is
    ``-log(exp(S_ip / tau) / (exp(S_ip / tau) + sum_{j selected} exp(S_ij / tau)))`` with
    ``p = positive_index[i]`` and S the cosine similarities. ``pool_ids`` [m] (integer content ids
    of the pool rows) excludes the candidates with the positive's id (see :func:`same_content`);
    ``same_as_positive`` [n, m] (bool) gives that exclusion directly, per row (a caption bank: the
    other captions of the query's own image). The shared kernel of :func:`hard_negative_infonce` and :class:`HardNegativeInfoNCELoss`; inputs
    are not validated here.
    """
    scores = _cosine_scores(query, pool)
    same = same_as_positive
    if pool_ids is not None:
        same = same_content(pool_ids, positive_index) if same is None else same | same_content(pool_ids, positive_index)
    mining = mine_negatives(
        scores, positive_index, num_negatives, false_negative_margin, negatives, generator, same
    )
    rows = torch.arange(query.shape[0], device=scores.device)
    in_softmax = mining.selected.clone()
    in_softmax[rows, positive_index] = True
    logits = (scores / temperature).masked_fill(~in_softmax, -math.inf)
    row_losses = torch.logsumexp(logits, dim=1) - logits[rows, positive_index]
    return row_losses, mining, scores


def same_content(pool_ids: Tensor, positive_index: Tensor) -> Tensor:
    """``[n, m]`` bool: pool row j has the same content id as row i's positive (``pool_ids[positive_index[i]]``)."""
    pool_ids = pool_ids.to(positive_index.device)
    return pool_ids[None, :] == pool_ids[positive_index][:, None]


def mining_statistics(scores: Tensor, mining: MiningResult, positive_index: Tensor) -> dict[str, float]:
    """What the trainer logs about a mining step.

    ``false_negative_rate``: share of the (non-positive) candidates dropped by the margin filter;
    ``duplicate_rate``: share of the candidates excluded as copies of the positive;
    ``negative_similarity``: mean cosine similarity of the chosen negatives (NaN when none was
    chosen); ``positive_similarity``: mean cosine similarity of the positives.
    """
    scores = scores.detach()
    n, m = scores.shape
    candidates = n * (m - 1)
    rows = torch.arange(n, device=scores.device)
    return {
        "false_negative_rate": float(mining.dropped.sum()) / candidates if candidates else 0.0,
        "duplicate_rate": float(mining.duplicates.sum()) / candidates if candidates else 0.0,
        "negative_similarity": float(scores[mining.selected].mean())
        if bool(mining.selected.any())
        else math.nan,
        "positive_similarity": float(scores[rows, positive_index].mean()),
    }


def hard_negative_infonce(
    query: Tensor,
    candidates: Tensor,
    temperature: float = 0.02,
    num_hard_negatives: int = 8,
    false_negative_margin: float = 0.1,
    *,
    negatives: str = "hard",
    extra_candidates: Tensor | None = None,
    generator: torch.Generator | None = None,
    candidate_ids: Tensor | None = None,
) -> Tensor:
    """Mean InfoNCE of each query against its positive and its hard negatives (UniME stage 2).

    Gu et al. 2025 ("Breaking the Modality Barrier", arXiv 2504.17432, Sec. 3.2). ``query`` [B, d]
    and ``candidates`` [B, d]: ``candidates[i]`` is the positive of query i and every other row is a
    candidate negative; ``extra_candidates`` [M, d] (explicit negatives from the data) join the pool.
    Rows are L2-normalised here (a no-op on unit embeddings), so ``S = q c^T`` is the cosine
    similarity. For each query (see :func:`mine_negatives`): candidates with
    ``S[i, j] > S[i, i] + false_negative_margin`` are dropped as likely false negatives, the
    ``num_hard_negatives`` most similar survivors are its negatives, and::

        loss_i = -log( exp(S[i, i] / tau) / (exp(S[i, i] / tau) + sum_l exp(S[i, n_l] / tau)) )

    averaged over the queries. Official values: tau 0.02, k 8, margin 0.1. ``negatives`` selects
    "hard" (default), "easy", "random" (from ``generator``) or "all" (no filter, the whole pool: plain
    in-batch InfoNCE). ``candidate_ids`` [B + M] (integer content ids of the candidates, then of the
    extra candidates) excludes, for query i, every candidate whose id equals its positive's: an
    identical copy of the positive is not a negative. A query whose candidates were all dropped has
    loss 0.

    Example::

        >>> import torch
        >>> from unime.losses import hard_negative_infonce
        >>> query, positive = torch.randn(16, 32), torch.randn(16, 32)
        >>> loss = hard_negative_infonce(query, positive, num_hard_negatives=4)
        >>> loss.shape
        torch.Size([])
    """
    _check_temperature(temperature)
    _check_mining_options(num_hard_negatives, false_negative_margin, negatives)
    _check_matrix("query", query)
    _check_matrix("candidates", candidates)
    if query.shape != candidates.shape or query.shape[0] == 0:
        raise ValueError(
            f"query and candidates must have the same non-empty shape [B, d], got {tuple(query.shape)} "
            f"and {tuple(candidates.shape)}"
        )
    pool = candidates
    if extra_candidates is not None:
        _check_matrix("extra_candidates", extra_candidates)
        if extra_candidates.shape[1] != query.shape[1]:
            raise ValueError(
                f"extra_candidates has dim {extra_candidates.shape[1]}, query has dim {query.shape[1]}"
            )
        pool = torch.cat([candidates, extra_candidates.to(candidates.device, candidates.dtype)])
    if candidate_ids is not None and (candidate_ids.shape != (pool.shape[0],) or candidate_ids.is_floating_point()):
        raise ValueError(
            f"candidate_ids must be an integer tensor of shape [{pool.shape[0]}] (candidates, then extra "
            f"candidates), got {candidate_ids.dtype} {tuple(candidate_ids.shape)}"
        )
    positive_index = torch.arange(query.shape[0], device=query.device)
    row_losses, _, _ = hard_negative_infonce_rows(
        query,
        pool,
        positive_index,
        temperature,
        num_hard_negatives,
        false_negative_margin,
        negatives,
        generator,
        candidate_ids,
    )
    return row_losses.mean()


class HardNegativeInfoNCELoss(EmbeddingLoss):
    """The UniME stage-2 loss (:func:`hard_negative_infonce`) as a sentence-transformers loss.

    Dataset columns: (query, positive) or (query, positive, negative_1, ..., negative_n), and
    optionally a ``label`` column of integer content ids: one per row (of its positive) or one per
    candidate column (positive, negative_1, ...). With ids and ``exclude_duplicates`` (the default),
    a candidate whose id equals a query's positive id is never that query's negative (MMEB-train's
    classification and VQA sets repeat the same answer text across rows; see :func:`mine_negatives`).
    :class:`unime.training.mmeb_data.MMEBTrainCollator` fills the column from the text and image
    path of each side. The candidate pool is every positive of the batch followed by every explicit
    negative. With
    torch.distributed initialised and ``gather_across_devices``, the pool is gathered from all ranks
    with the local shard's gradient kept, the negatives are mined from the global batch and each
    rank's positives sit at its offset in the pool (scaling rule:
    :func:`unime.losses.distributed.global_mean`). ``mini_batch_size`` runs the loss on
    sentence-transformers' GradCache engine (``CachedLossMixin``).

    After each forward, ``last_stats`` holds ``false_negative_rate``, ``duplicate_rate``,
    ``negative_similarity`` and ``positive_similarity`` of this rank's queries (see :func:`mining_statistics`), and
    ``last_mining`` the :class:`MiningResult` (column indices into the global pool).

    Example::

        >>> from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
        >>> from unime.losses import HardNegativeInfoNCELoss
        >>> model = SentenceTransformer("path/to/stage1-model")  # doctest: +SKIP
        >>> loss = HardNegativeInfoNCELoss(model, mini_batch_size=4)  # doctest: +SKIP
        >>> SentenceTransformerTrainer(model=model, train_dataset=pairs, loss=loss).train()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.02,
        num_hard_negatives: int = 8,
        false_negative_margin: float = 0.1,
        negatives: str = "hard",
        mini_batch_size: int | None = None,
        gather_across_devices: bool = True,
        exclude_duplicates: bool = True,
    ) -> None:
        super().__init__(model, temperature, mini_batch_size, gather_across_devices)
        _check_mining_options(num_hard_negatives, false_negative_margin, negatives)
        self.num_hard_negatives = num_hard_negatives
        self.false_negative_margin = float(false_negative_margin)
        self.negatives = negatives
        self.exclude_duplicates = bool(exclude_duplicates)
        self.last_stats: dict[str, float] = {}
        self.last_mining: MiningResult | None = None

    def check_columns(self, count: int) -> None:
        if count < 2:
            raise ValueError(f"HardNegativeInfoNCELoss needs the columns (query, positive[, negative ...]), got {count}")

    def compute(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """The loss of this rank's queries from the embeddings of each column (query first)."""
        query = embeddings[0]
        ranks = world_size() if self.gather_across_devices else 1
        columns, offset = [], 0
        for position, column in enumerate(embeddings[1:]):
            gathered, column_offset = gather_with_grad(column) if ranks > 1 else (column, 0)
            offset = column_offset if position == 0 else offset
            columns.append(gathered)
        global_rows = columns[0].shape[0]
        positive_index = offset + torch.arange(query.shape[0], device=query.device)
        pool_ids = None
        if labels is not None and self.exclude_duplicates:
            pool_ids = self._pool_ids(labels, len(columns), query.shape[0], ranks)
        row_losses, mining, scores = hard_negative_infonce_rows(
            query,
            torch.cat(columns),
            positive_index,
            self.temperature,
            self.num_hard_negatives,
            self.false_negative_margin,
            self.negatives,
            pool_ids=pool_ids,
        )
        self.last_mining = mining
        self.last_stats = mining_statistics(scores, mining, positive_index)
        return global_mean(row_losses, global_rows, ranks)

    @staticmethod
    def _pool_ids(labels: Tensor, columns: int, rows: int, ranks: int) -> Tensor:
        """Content ids in pool order (column by column, each gathered over ranks); an explicit
        negative's id is unknown (-1) when the labels give one id per row."""
        if (labels.is_floating_point() or labels.dim() not in (1, 2) or labels.shape[0] != rows
                or bool((labels < 0).any())):
            raise ValueError(
                f"HardNegativeInfoNCELoss: the label column must hold non-negative integer content ids, one per "
                f"row or one per candidate column, got {labels.dtype} {tuple(labels.shape)} for {rows} rows"
            )
        if labels.dim() == 1:
            # The explicit negatives' ids are unknown: -1 never equals a positive's id.
            ids = [labels] + [torch.full_like(labels, -1) for _ in range(columns - 1)]
        elif labels.shape[1] == columns:
            ids = list(labels.unbind(dim=1))
        else:
            raise ValueError(
                f"HardNegativeInfoNCELoss: the label column has {labels.shape[1]} ids per row but the batch has "
                f"{columns} candidate columns"
            )
        return torch.cat([gather_rows(column.contiguous()) if ranks > 1 else column for column in ids])

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "num_hard_negatives": self.num_hard_negatives,
            "false_negative_margin": self.false_negative_margin,
            "negatives": self.negatives,
            "exclude_duplicates": self.exclude_duplicates,
            "mini_batch_size": self.mini_batch_size,
            "gather_across_devices": self.gather_across_devices,
        }
