"""The one cross-device gather of the losses, and the loss-scaling rule that goes with it.

Every UniME loss computes the loss of its *local* rows against the *global* batch: the candidate
columns are gathered from all ranks, the rows stay local. Two things make that exactly equal to one
process holding the whole batch:

1. :func:`gather_with_grad` keeps the autograd graph of the local shard, and its backward sums the
   gradients that every rank's loss puts on each shard and routes them to the rank that owns it.
2. :func:`global_mean` scales the local sum of row losses so that DDP's gradient averaging yields
   the gradient of the mean over the global batch (the rule is stated there, once).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor

from unime.environment import rank_and_world_size


def _distributed() -> bool:
    return world_size() > 1


def world_size() -> int:
    """The number of processes sharing the batch (1 when torch.distributed is not initialised)."""
    return rank_and_world_size(environment=False)[1]


def gather_with_grad(tensor: Tensor) -> tuple[Tensor, int]:
    """Concatenate ``tensor`` from every rank along dim 0, keeping gradients, and say where ours lies.

    Returns ``(global_tensor, offset)``: ``global_tensor`` holds rank 0's rows, then rank 1's, and so
    on; ``global_tensor[offset : offset + len(tensor)]`` are this rank's rows. Without an initialised
    process group (or with one rank) it returns ``(tensor, 0)`` unchanged.

    Gradient semantics: the backward pass is the adjoint of the gather. Every rank back-propagates its
    own loss into the whole ``global_tensor``; the gradients on each shard are summed over the ranks
    and delivered to the rank that owns the shard. So the local rows receive the gradient of
    ``sum over ranks of that rank's loss``, including the part that flows through this rank's own
    loss (the official UniME example gathers with ``torch.distributed.all_gather``, which cuts the
    graph of the local shard and loses that part).

    This wraps sentence-transformers' ``all_gather_with_grad`` (``torch.distributed.nn.all_gather``,
    whose backward is a reduce-scatter with SUM, emulated by an all-to-all on gloo). That helper needs
    the same number of rows on every rank; ranks may differ here (a short last batch), so the row
    counts are exchanged first, shorter shards are zero-padded for the collective and the padding is
    cut away again (the cut rows get no gradient, so none reaches the padding).
    """
    if not _distributed():
        return tensor, 0
    from sentence_transformers.util import all_gather_with_grad

    rank = rank_and_world_size(environment=False)[0]
    counts, padded = _pad_to_longest(tensor)
    longest = padded.shape[0]
    with warnings.catch_warnings():
        # torch marks torch.distributed.nn.all_gather as deprecated in favour of the functional
        # collectives; the replacement has no gradient-routing backward, so the warning is noise here.
        warnings.filterwarnings(
            "ignore", message=r"torch\.distributed\.nn\.functional\.all_gather", category=FutureWarning
        )
        gathered = all_gather_with_grad(padded)
    if longest * len(counts) != gathered.shape[0]:
        raise RuntimeError(f"gather_with_grad: expected {longest * len(counts)} rows, got {gathered.shape[0]}")
    return _unpad(gathered, counts, longest), sum(counts[:rank])


def gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, without gradient (e.g. integer content ids).

    Row counts may differ between ranks; the order is rank 0's rows, then rank 1's, as in
    :func:`gather_with_grad`. Without an initialised process group it returns ``tensor``.
    """
    if not _distributed():
        return tensor
    counts, padded = _pad_to_longest(tensor)
    shards = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(shards, padded.contiguous())
    return _unpad(torch.cat(shards), counts, padded.shape[0])


def _pad_to_longest(tensor: Tensor) -> tuple[list[int], Tensor]:
    """Every rank's row count, and ``tensor`` zero-padded to the longest (collectives need equal shapes)."""
    count = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    counts_list = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts_list, count)
    counts = [int(c.item()) for c in counts_list]
    longest = max(counts)
    if tensor.shape[0] < longest:
        padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, padding], dim=0)
    return counts, tensor


def _unpad(gathered: Tensor, counts: list[int], longest: int) -> Tensor:
    if all(c == longest for c in counts):
        return gathered
    return torch.cat([gathered[r * longest : r * longest + c] for r, c in enumerate(counts)])


def global_mean(row_losses: Tensor, global_rows: int, ranks: int) -> Tensor:
    """The local share of the mean loss over the global batch: ``sum(row_losses) * ranks / global_rows``.

    The loss-scaling rule for world size W. When the candidates were gathered (``ranks = W``), each
    rank returns ``W / N`` times the sum of the losses of its own rows, N being the number of rows
    over all ranks. DDP averages parameter gradients over the W ranks, and :func:`gather_with_grad`
    sums the gradients every rank's loss puts on a shard, so the parameters receive
    ``(1 / W) * sum over ranks of d(W / N * local sum) = d(mean over the N rows)``: two ranks with
    half the batch each train exactly like one rank with the whole batch. With equal shards this is
    the plain mean of the local rows, and the mean of the W reported losses is the global loss.
    Without gathering (``ranks = 1``, ``global_rows`` = the local rows) every rank is its own batch
    and the result is the local mean, which DDP averages. Gradient accumulation is left to the
    trainer, which divides by the number of accumulation steps.
    """
    if global_rows <= 0 or ranks <= 0:
        raise ValueError(
            f"global_mean: global_rows and ranks must be positive, got {global_rows} and {ranks}"
        )
    return row_losses.sum() * (ranks / global_rows)
