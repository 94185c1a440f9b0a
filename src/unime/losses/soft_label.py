"""UniME-V2's soft-label loss: the embedder's similarity distribution over a query's candidates
matched, both ways, to a judge's distribution over the same candidates.

Gu et al. 2026 ("UniME-V2: MLLM-as-a-Judge for Universal Multimodal Embedding Learning", arXiv
2510.13515). For each query, over its own candidates only (its positive first, then its mined hard
negatives; no other query's candidates)::

    P = softmax(cos(q, c) / tau)        the embedder's distribution
    Q = softmax(judge(q, c) / tau)      the judge's (a yes-probability per pair)
    loss = (KL(Q || P) + KL(P || Q)) / 2

averaged over the queries, with tau 0.02 in the released training scripts. The released code
(``Embedding/src/loss.py``, ``SoftLabelSoftKLContrastiveLoss``) takes the log of each distribution
as ``log(p + 1e-8)`` where it is the second argument of the KL (torch's ``kl_div`` computes the
first argument's own ``p log p`` exactly); :func:`soft_label_kl` does the same with ``eps=1e-8``
and gives the exact KL with ``eps=0``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unime.losses.base import EmbeddingLoss, _check_temperature
from unime.losses.distributed import gather_rows, global_mean, world_size

__all__ = ["SoftLabelKLLoss", "soft_label_kl", "soft_label_kl_rows"]

UNIME_V2_EPS = 1e-8

UNIME_V2_CITATION = """
@misc{gu2025unimev2,
    title={UniME-V2: MLLM-as-a-Judge for Universal Multimodal Embedding Learning},
    author={Tiancheng Gu and Kaicheng Yang and Kaichen Zhang and Xiang An and Ziyong Feng and Yueyi Zhang and
            Weidong Cai and Jiankang Deng and Lidong Bing},
    year={2025},
    eprint={2510.13515},
    archivePrefix={arXiv},
    primaryClass={cs.CV}
}
"""


def _check_pair(scores: Tensor, judge_scores: Tensor) -> None:
    if scores.dim() != 2 or scores.shape[0] == 0 or scores.shape[1] < 2:
        raise ValueError(f"scores must be a [queries, candidates] matrix with at least 2 candidates (the positive "
                         f"first), got shape {tuple(scores.shape)}")
    if judge_scores.shape != scores.shape:
        raise ValueError(f"judge_scores must have the shape of scores {tuple(scores.shape)}, got "
                         f"{tuple(judge_scores.shape)}")
    if not bool(torch.isfinite(judge_scores).all()):
        raise ValueError("judge_scores holds NaN or infinite values")


def _at_least_float32(tensor: Tensor) -> torch.dtype:
    """float32 for half-precision inputs (bf16 autocast), the input's own dtype above that."""
    return torch.promote_types(tensor.dtype, torch.float32)


def soft_label_kl_rows(scores: Tensor, judge_scores: Tensor, temperature: float = 0.02, *,
                       eps: float = UNIME_V2_EPS) -> Tensor:
    """Per query, the symmetric KL between the embedder's and the judge's candidate distributions.

    ``scores`` and ``judge_scores``: ``[queries, candidates]`` (cosine similarities and judge scores,
    the positive in column 0). Returns ``[queries]``: ``(KL(Q || P) + KL(P || Q)) / 2`` with
    ``P = softmax(scores / temperature)``, ``Q = softmax(judge_scores / temperature)``, each KL's
    second distribution under ``log(. + eps)`` as in the released code. The judge side carries no
    gradient (its scores are data).
    """
    _check_temperature(temperature)
    _check_pair(scores, judge_scores)
    dtype = _at_least_float32(scores)
    p = F.softmax(scores.to(dtype) / temperature, dim=-1)
    q = F.softmax(judge_scores.detach().to(p.device, dtype) / temperature, dim=-1)
    # torch.xlogy: 0 * log 0 = 0, as kl_div computes its target's own term.
    kl_qp = (torch.xlogy(q, q) - q * torch.log(p + eps)).sum(dim=-1)
    kl_pq = (torch.xlogy(p, p) - p * torch.log(q + eps)).sum(dim=-1)
    return 0.5 * (kl_qp + kl_pq)


def soft_label_kl(scores: Tensor, judge_scores: Tensor, temperature: float = 0.02, *,
                  eps: float = UNIME_V2_EPS) -> Tensor:
    """UniME-V2's soft-label loss: the mean over queries of :func:`soft_label_kl_rows`.

    Example::

        >>> import torch
        >>> from unime.losses import soft_label_kl
        >>> scores = torch.tensor([[0.30, 0.28, 0.25]])     # cos(query, positive / negatives)
        >>> judge = torch.tensor([[0.60, 0.55, 0.50]])      # the judge's yes-probabilities
        >>> round(float(soft_label_kl(scores, judge)), 4)
        0.1968
    """
    return soft_label_kl_rows(scores, judge_scores, temperature, eps=eps).mean()


class SoftLabelKLLoss(EmbeddingLoss):
    """UniME-V2's soft-label loss (:func:`soft_label_kl`) as a sentence-transformers loss, optionally
    added to UniME's hard-negative InfoNCE on the same embeddings.

    Dataset columns: (query, positive, negative_1, ..., negative_k) and a ``label`` column holding,
    per row, the judge's scores of (positive, negative_1, ..., negative_k): ``[batch, 1 + k]``
    floats. Each query is scored against its own candidates only, as in UniME-V2's training.

    ``infonce_weight`` > 0 adds ``infonce_weight`` times UniME's stage-2 loss
    (:func:`unime.losses.hard_negative.hard_negative_infonce`: the batch's positives and every row's
    negatives as the pool, false negatives filtered, the ``num_hard_negatives`` hardest kept), so
    both objectives train from one embedding pass (``unime tune --loss both``).

    ``mini_batch_size`` runs on sentence-transformers' GradCache engine; the loss of each query
    depends on its own rows only, so ranks need no gathered candidates: with torch.distributed each
    rank returns its share of the global mean (:func:`unime.losses.distributed.global_mean`), and two
    ranks with half the batch each train like one rank with the whole batch. ``last_stats`` holds the
    batch's mean KL and, with the InfoNCE term, its value.
    """

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.02,
        infonce_weight: float = 0.0,
        infonce_temperature: float = 0.02,
        num_hard_negatives: int = 8,
        false_negative_margin: float = 0.1,
        mini_batch_size: int | None = None,
        gather_across_devices: bool = True,
        eps: float = UNIME_V2_EPS,
    ) -> None:
        super().__init__(model, temperature, mini_batch_size, gather_across_devices)
        if not (isinstance(infonce_weight, (int, float)) and infonce_weight >= 0):
            raise ValueError(f"infonce_weight must be a non-negative number, got {infonce_weight!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.infonce_weight = float(infonce_weight)
        self.eps = float(eps)
        self.infonce = None
        if self.infonce_weight > 0:
            from unime.losses.hard_negative import HardNegativeInfoNCELoss

            self.infonce = HardNegativeInfoNCELoss(
                model, temperature=infonce_temperature, num_hard_negatives=num_hard_negatives,
                false_negative_margin=false_negative_margin, gather_across_devices=gather_across_devices,
                exclude_duplicates=False)
        self.last_stats: dict[str, float] = {}

    def check_columns(self, count: int) -> None:
        if count < 3:
            raise ValueError(f"SoftLabelKLLoss needs the columns (query, positive, negative_1[, ...]) and the judge "
                             f"scores as labels, got {count} columns")

    def compute(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        dtype = _at_least_float32(embeddings[0])
        query = F.normalize(embeddings[0].to(dtype), dim=-1)
        candidates = F.normalize(torch.stack([column.to(dtype) for column in embeddings[1:]], dim=1), dim=-1)
        if labels is None:
            raise ValueError("SoftLabelKLLoss needs the judge scores of every row's candidates as its label column")
        judge = labels.to(query.device)
        if judge.dim() != 2 or judge.shape != candidates.shape[:2]:
            raise ValueError(f"SoftLabelKLLoss: the label column must hold one judge score per candidate, "
                             f"[{candidates.shape[0]}, {candidates.shape[1]}], got {tuple(judge.shape)}")
        scores = torch.einsum("bd,bkd->bk", query, candidates)
        rows = soft_label_kl_rows(scores, judge, self.temperature, eps=self.eps)
        ranks = world_size() if self.gather_across_devices else 1
        global_rows = rows.shape[0]
        if ranks > 1:
            global_rows = int(gather_rows(torch.tensor([rows.shape[0]], device=rows.device)).sum())
        loss = global_mean(rows, global_rows, ranks)
        self.last_stats = {"soft_label_kl": float(rows.detach().mean())}
        if self.infonce is not None:
            infonce = self.infonce.compute(embeddings)
            self.last_stats["infonce"] = float(infonce.detach())
            loss = loss + self.infonce_weight * infonce
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        config = {"temperature": self.temperature, "infonce_weight": self.infonce_weight, "eps": self.eps,
                  "mini_batch_size": self.mini_batch_size, "gather_across_devices": self.gather_across_devices}
        if self.infonce is not None:
            config.update(infonce_temperature=self.infonce.temperature,
                          num_hard_negatives=self.infonce.num_hard_negatives,
                          false_negative_margin=self.infonce.false_negative_margin)
        return config

    @property
    def citation(self) -> str:
        return UNIME_V2_CITATION
