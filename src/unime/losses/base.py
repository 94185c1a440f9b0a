"""What both UniME loss classes share: argument checks and the plain / GradCache dispatch.

A subclass sets its own options, says which column counts it takes (``check_columns``) and
computes the loss of this rank's rows from one embedding matrix per column (``compute``); running
the model, GradCache (``mini_batch_size``) and the citation are handled here once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin, has_static_embedding_input
from torch import Tensor, nn

UNIME_CITATION = """
@misc{gu2025unime,
    title={Breaking the Modality Barrier: Universal Embedding Learning with Multimodal LLMs},
    author={Tiancheng Gu and Kaicheng Yang and Ziyong Feng and Xingjun Wang and Yanzhao Zhang and
            Dingkun Long and Yingda Chen and Weidong Cai and Jiankang Deng},
    year={2025},
    eprint={2504.17432},
    archivePrefix={arXiv},
    primaryClass={cs.CV}
}
"""


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")


def _check_mini_batch_size(mini_batch_size: int | None) -> None:
    if mini_batch_size is not None and (not isinstance(mini_batch_size, int) or mini_batch_size <= 0):
        raise ValueError(f"mini_batch_size must be a positive integer or None, got {mini_batch_size!r}")


def _has_static_embedding(model: nn.Module) -> bool:
    """Whether ``model`` is a SentenceTransformer embedding through a StaticEmbedding (no batch axis)."""
    from sentence_transformers import SentenceTransformer

    return isinstance(getattr(model, "_orig_mod", model), SentenceTransformer) and has_static_embedding_input(
        model
    )


class EmbeddingLoss(CachedLossMixin, nn.Module):
    """Base of the sentence-transformers loss classes: checks, model call and GradCache dispatch."""

    def __init__(
        self, model: nn.Module, temperature: float, mini_batch_size: int | None, gather_across_devices: bool
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        _check_mini_batch_size(mini_batch_size)
        if mini_batch_size is not None and _has_static_embedding(model):
            raise ValueError(
                "mini_batch_size needs a model whose inputs split along the batch (not StaticEmbedding)"
            )
        self.model = model
        self.temperature = float(temperature)
        self.mini_batch_size = mini_batch_size  # type: ignore[assignment]
        self.gather_across_devices = bool(gather_across_devices)
        # The trainer asks this to know whether the backward pass re-embeds the inputs.
        self.uses_gradient_cache = mini_batch_size is not None

    def check_columns(self, count: int) -> None:
        """Raise a ValueError when the dataset gives a number of text columns the loss cannot use."""
        raise NotImplementedError

    def compute(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """The loss of this rank's rows from one embedding matrix per column."""
        raise NotImplementedError

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        self.check_columns(len(features))
        if self.mini_batch_size is not None:
            return self.forward_cached(features, labels)
        return self.compute([self.model(feature)["sentence_embedding"] for feature in features], labels)

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        """The GradCache step (2): the loss over the whole batch from the per-mini-batch embeddings."""
        loss = self.compute([torch.cat(column) for column in reps], labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    @property
    def citation(self) -> str:
        return UNIME_CITATION
