"""Figures of the paper's analyses: cross-modal similarity matrices and training curves.

- :func:`similarity_matrices` + :func:`plot_similarity`: the cosine similarity between n images and
  their captions, one heat map per model side by side; a well-aligned model shows a sharp diagonal.
- :func:`read_training_log` + :func:`plot_training`: loss and gradient-norm curves from Hugging Face
  trainer logs, for comparing easy, random and hard negatives (hard negatives keep the loss high
  and the gradient norm orders of magnitude larger, hence the log scale).

matplotlib is imported lazily with the Agg backend, so nothing here needs a display.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unime.evaluation.common import make_input
from unime.evaluation.encoding import encode_unique
from unime.evaluation.retrieval import RetrievalDataset
from unime.io.jsonl import iter_jsonl

TRAINING_SERIES = ("loss", "grad_norm")


def first_pairs(dataset: RetrievalDataset, n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` images of a retrieval dataset, each with its first caption."""
    if n < 2:
        raise ValueError(f"a similarity matrix needs at least 2 pairs, got n={n}")
    if len(dataset.images) < n:
        raise ValueError(f"{dataset.name}: {len(dataset.images)} images, fewer than the {n} asked for (-n)")
    captions = []
    for index in range(n):
        captions.append(dataset.captions[int(np.flatnonzero(dataset.caption_image == index)[0])])
    return dataset.images[:n], captions


def similarity_matrix(
    model: Any, images: Sequence[str], captions: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Cosine similarity [n_images, n_captions] between image paths and caption texts."""
    n = len(images)
    embeddings = encode_unique(
        model, [make_input(None, image) for image in images] + list(captions), batch_size
    )
    embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return embeddings[:n] @ embeddings[n:].T


def diagonal_summary(matrix: np.ndarray) -> dict[str, float]:
    """Mean diagonal and off-diagonal similarity, their gap, and the share of rows peaking on the diagonal."""
    n = matrix.shape[0]
    diagonal = np.diag(matrix)
    off = matrix[~np.eye(n, dtype=bool)]
    return {
        "diagonal_mean": float(diagonal.mean()),
        "off_diagonal_mean": float(off.mean()),
        "gap": float(diagonal.mean() - off.mean()),
        "row_top1": float((matrix.argmax(axis=1) == np.arange(n)).mean()),
    }


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, output: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Lay out, write (making the folder) and close a figure; returns the file's path."""
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=dpi)
    _pyplot().close(figure)
    return output


def plot_similarity(matrices: Sequence[tuple[str, np.ndarray]], output: str | os.PathLike[str]) -> Path:
    """Heat maps of several models' similarity matrices side by side, each with its own colour bar."""
    if not matrices:
        raise ValueError("nothing to plot")
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(matrices), figsize=(4.6 * len(matrices), 4.2), squeeze=False)
    for axis, (label, matrix) in zip(axes[0], matrices, strict=True):
        image = axis.imshow(matrix, cmap="viridis", interpolation="nearest")
        axis.set_title(f"{label}\ngap diag - off {diagonal_summary(matrix)['gap']:.3f}", fontsize=9)
        axis.set_xlabel("caption")
        axis.set_ylabel("image")
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    return save_figure(figure, output)


@dataclass
class TrainingLog:
    """Per series (``loss``, ``grad_norm``) the (step, value) points found in a log."""

    label: str
    series: dict[str, list[tuple[int, float]]]


def read_log_entries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The log dicts of a ``trainer_state.json`` (its ``log_history``) or of a JSONL training log."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".jsonl":
        state = json.loads(text)
        if not isinstance(state, dict) or "log_history" not in state:
            raise ValueError(f"{path}: no 'log_history' (expected a trainer_state.json or a .jsonl log)")
        return state["log_history"]
    entries = []
    for number, entry, error in iter_jsonl(text.splitlines()):
        if error is not None:
            raise ValueError(f"{path}: line {number}: invalid JSON ({error})")
        entries.append(entry)
    return entries


def read_training_log(path: str | os.PathLike[str], label: str | None = None) -> TrainingLog:
    """Read a ``trainer_state.json`` (its ``log_history``) or a JSONL of log dicts with ``step``."""
    path = Path(path)
    entries = read_log_entries(path)
    series: dict[str, list[tuple[int, float]]] = {name: [] for name in TRAINING_SERIES}
    for number, entry in enumerate(entries):
        for name in TRAINING_SERIES:
            if name in entry and entry[name] is not None:
                if "step" not in entry:
                    raise ValueError(f"{path}: entry {number} has '{name}' but no 'step'")
                series[name].append((int(entry["step"]), float(entry[name])))
    if not any(series.values()):
        raise ValueError(f"{path}: no entries with {' or '.join(TRAINING_SERIES)}")
    return TrainingLog(label or path.parent.name or path.stem, series)


def plot_training(logs: Sequence[TrainingLog], output: str | os.PathLike[str]) -> Path:
    """Loss (linear) and gradient norm (log scale) against step, one line per log."""
    if not logs:
        raise ValueError("nothing to plot")
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(TRAINING_SERIES), figsize=(10, 3.8))
    for axis, name in zip(axes, TRAINING_SERIES, strict=True):
        for log in logs:
            if log.series[name]:
                steps, values = zip(*log.series[name], strict=True)
                axis.plot(steps, values, label=log.label, linewidth=1.2)
        axis.set_xlabel("step")
        axis.set_ylabel(name)
        if name == "grad_norm" and any(v > 0 for log in logs for _, v in log.series[name]):
            axis.set_yscale("log")
        axis.legend(fontsize=8)
    return save_figure(figure, output)
