"""The UniME losses: pure functions on embeddings, and the sentence-transformers losses built on them.

- :func:`similarity_kl` / :class:`SimilarityKLLoss`: stage 1, textual knowledge distillation.
- :func:`hard_negative_infonce` / :class:`HardNegativeInfoNCELoss`: stage 2, InfoNCE with false-negative
  filtering and hard-negative mining (:func:`mine_negatives`).
- :func:`soft_label_kl` / :class:`SoftLabelKLLoss`: UniME-V2's soft-label loss (judge scores as targets).
- :func:`gather_with_grad`: the one cross-device gather the losses use.
"""

from __future__ import annotations

from unime.losses.distributed import gather_with_grad, global_mean
from unime.losses.hard_negative import (
    NEGATIVE_MODES,
    HardNegativeInfoNCELoss,
    MiningResult,
    hard_negative_infonce,
    mine_negatives,
    mining_statistics,
)
from unime.losses.similarity_kl import DIRECTIONS, LITERAL_FORM, SimilarityKLLoss, similarity_kl
from unime.losses.soft_label import SoftLabelKLLoss, soft_label_kl, soft_label_kl_rows

__all__ = [
    "DIRECTIONS",
    "LITERAL_FORM",
    "NEGATIVE_MODES",
    "HardNegativeInfoNCELoss",
    "MiningResult",
    "SimilarityKLLoss",
    "SoftLabelKLLoss",
    "gather_with_grad",
    "global_mean",
    "hard_negative_infonce",
    "mine_negatives",
    "mining_statistics",
    "similarity_kl",
    "soft_label_kl",
    "soft_label_kl_rows",
]
