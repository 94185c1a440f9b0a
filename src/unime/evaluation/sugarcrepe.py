"""SugarCrepe compositionality: does the image prefer its caption over a hard negative caption?

Each split is ``<split>.json`` = ``{id: {"filename", "caption", "negative_caption"}}`` over COCO
val2017 images. Accuracy is the share of items where cos(image, caption) > cos(image,
negative_caption), strictly: a tie is a failure. Replace, Swap and Add are the means of their splits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unime.data.records import require_fields, resolve_image
from unime.evaluation.common import make_input, percent, row_cosine
from unime.evaluation.encoding import encode_unique
from unime.io.jsonl import read_json

SPLIT_GROUPS: dict[str, tuple[str, ...]] = {
    "replace": ("replace_obj", "replace_att", "replace_rel"),
    "swap": ("swap_obj", "swap_att"),
    "add": ("add_obj", "add_att"),
}
SPLITS = tuple(split for group in SPLIT_GROUPS.values() for split in group)


@dataclass
class SugarCrepeSplit:
    """One split: per item an image path, its caption and its negative caption."""

    name: str
    images: list[str]
    captions: list[str]
    negatives: list[str]

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError(f"SugarCrepe split '{self.name}' is empty")
        if not len(self.images) == len(self.captions) == len(self.negatives):
            raise ValueError(
                f"SugarCrepe split '{self.name}': images, captions and negatives differ in length"
            )


def load_sugarcrepe_split(path: str | os.PathLike[str], image_dir: str | os.PathLike[str]) -> SugarCrepeSplit:
    """Read one ``<split>.json`` file, resolving each ``filename`` under ``image_dir``."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{id: item}}")
    images, captions, negatives = [], [], []
    resolved: dict[str, str] = {}
    for key, item in data.items():
        where = f"SugarCrepe {path.stem}: item {key}"
        require_fields(item, ("filename", "caption", "negative_caption"), where)
        for field in ("filename", "caption", "negative_caption"):
            if not isinstance(item[field], str) or not item[field].strip():
                raise ValueError(f"{where}: {field} must be a non-empty string, got {item[field]!r:.80}")
        filename = item["filename"]
        if filename not in resolved:
            resolved[filename] = resolve_image(image_dir, filename, f"{where}: filename")
        images.append(resolved[filename])
        captions.append(item["caption"])
        negatives.append(item["negative_caption"])
    return SugarCrepeSplit(path.stem, images, captions, negatives)


def load_sugarcrepe(
    data_dir: str | os.PathLike[str], image_dir: str | os.PathLike[str], splits: Sequence[str] | None = None
) -> list[SugarCrepeSplit]:
    """Read ``splits`` (default: those of the 7 present in ``data_dir``; at least one must be)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"SugarCrepe data folder {data_dir} does not exist")
    if splits:
        unknown = [split for split in splits if split not in SPLITS]
        if unknown:
            raise ValueError(f"unknown SugarCrepe split(s) {unknown}; choose from {list(SPLITS)}")
        missing = [split for split in splits if not (data_dir / f"{split}.json").is_file()]
        if missing:
            raise FileNotFoundError(f"SugarCrepe: no {', '.join(s + '.json' for s in missing)} in {data_dir}")
    else:
        splits = [split for split in SPLITS if (data_dir / f"{split}.json").is_file()]
        if not splits:
            raise FileNotFoundError(f"SugarCrepe: none of {[s + '.json' for s in SPLITS]} in {data_dir}")
    return [load_sugarcrepe_split(data_dir / f"{split}.json", image_dir) for split in splits]


def evaluate_sugarcrepe(
    model: Any, splits: Sequence[SugarCrepeSplit], batch_size: int = 32, show_progress_bar: bool = False
) -> dict[str, float]:
    """Accuracy per split (``sugarcrepe/<split>/accuracy``), per group (replace/swap/add) and their average.

    ``sugarcrepe/average/accuracy`` is the unweighted mean of the splits given.
    """
    metrics: dict[str, float] = {}
    for split in splits:
        n = len(split.images)
        inputs = [make_input(None, image) for image in split.images] + split.captions + split.negatives
        embeddings = encode_unique(model, inputs, batch_size, show_progress_bar)
        image, caption, negative = embeddings[:n], embeddings[n : 2 * n], embeddings[2 * n :]
        wins = row_cosine(image, caption) > row_cosine(image, negative)
        metrics[f"sugarcrepe/{split.name}/accuracy"] = percent(int(wins.sum()), n)
    for group, members in SPLIT_GROUPS.items():
        values = [
            metrics[f"sugarcrepe/{m}/accuracy"] for m in members if f"sugarcrepe/{m}/accuracy" in metrics
        ]
        if values:
            metrics[f"sugarcrepe/{group}/accuracy"] = float(np.mean(values))
    if splits:
        metrics["sugarcrepe/average/accuracy"] = float(
            np.mean([metrics[f"sugarcrepe/{s.name}/accuracy"] for s in splits])
        )
    return metrics
