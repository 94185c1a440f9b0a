"""Shared pieces of the evaluation readers: model inputs, image paths and small table readers.

Every reader turns a row into the model contract's input (docs/design.md): a ``str`` for a text
alone, a dict ``{"image": path}`` for an image alone, and ``{"text": ..., "image": path}`` for
both. Images are passed as PATHS so the model decodes them lazily, once per unique input, and every
path is checked when the data is read so that a missing file fails before any encoding starts,
with a message naming the dataset, the row and the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from unime.inputs import EmbedInput

#: One input of the model contract as the evaluators build it (images always as paths).
EvalInput = str | dict[str, str]


def make_input(text: str | None, image: str | None) -> EvalInput:
    """Build a model input from an optional text and an optional resolved image path.

    A text alone stays a plain string so that text-only evaluations (STS) also run on any
    sentence-transformers model, not only on UniME models.
    """
    text = text or None
    image = image or None
    if text is None and image is None:
        raise ValueError("an input needs a text, an image or both")
    if image is None:
        return text  # type: ignore[return-value]
    if text is None:
        return {"image": image}
    return {"text": text, "image": image}




def input_key(item: EvalInput) -> str:
    """A canonical string for an input: two inputs with the same key embed identically. An
    :class:`unime.inputs.EmbedInput` (what ``unime encode`` hands the model) keys as its dict."""
    if isinstance(item, EmbedInput):
        item = {name: value for name in ("text", "image", "instruction", "video")
                if (value := getattr(item, name)) is not None}
    if isinstance(item, str):
        return json.dumps(["t", item], ensure_ascii=False)
    if isinstance(item, dict):
        unknown = set(item) - {"text", "image", "instruction", "video"}
        if unknown:
            raise ValueError(f"input has unknown fields {sorted(unknown)}; expected text/image/instruction/video")
        values = [item.get(field) for field in ("text", "image", "instruction")]
        if not all(value is None or isinstance(value, str) for value in values):
            raise TypeError("evaluation inputs must hold strings (texts and image PATHS), not decoded images")
        video = item.get("video")
        if video is None:
            return json.dumps(["d", *values], ensure_ascii=False)
        # A video: its file's path or its frames' paths (keys of inputs without one are unchanged).
        frames = [video] if isinstance(video, str) else list(video) if isinstance(video, (list, tuple)) else None
        if not frames or not all(isinstance(frame, str) for frame in frames):
            raise TypeError("an evaluation video must be a file path or a list of frame PATHS")
        return json.dumps(["d", *values, ["v", video] if isinstance(video, str) else ["f", *frames]],
                          ensure_ascii=False)
    raise TypeError(f"unsupported evaluation input of type {type(item).__name__}")


def dataset_name(path: str | os.PathLike[str]) -> str:
    """A short lowercase name for a data file: its stem without a ``dataset_`` prefix."""
    stem = Path(path).name if Path(path).is_dir() else Path(path).stem
    stem = stem.lower()
    return stem[len("dataset_") :] if stem.startswith("dataset_") else stem






def percent(hits: int | float, total: int) -> float:
    """``100 * hits / total``: every score in this package is a percentage, as in the paper."""
    if total <= 0:
        raise ValueError("cannot score an empty dataset")
    return 100.0 * float(hits) / float(total)


def row_cosine(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [n, d] arrays: the contract promises unit rows, this does not rely on it."""
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    return (left * right).sum(axis=1) / np.maximum(norms, 1e-12)
