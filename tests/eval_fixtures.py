"""Writers for every evaluation data layout, and the model doubles the evaluation tests use.

Writers produce exactly the files the readers expect (parquet through pandas/pyarrow, images through
PIL). The doubles follow the model contract (``encode(inputs, batch_size=, show_progress_bar=)`` ->
float32 unit rows):

- :class:`ConceptModel` (the oracle): one-hot of an input's *concept*: the image file's stem up to
  the first ``_`` when there is an image, else the text's last word. Fixtures name files and
  captions so that a query and its positive share a concept and negatives do not.
- :class:`ConstantModel`: the same vector for everything, so every comparison is a tie.
- :class:`RandomModel`: a fixed random vector per distinct input (chance-level, deterministic).
- :class:`LookupModel`: explicit vectors per input key, for hand-computed cases.
- :class:`CountingModel`: wraps another model and counts how often each input is encoded.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from unime.evaluation.common import input_key

# --------------------------------------------------------------------------- model doubles


def concept(item: Any) -> str:
    if isinstance(item, dict) and item.get("image"):
        return Path(item["image"]).stem.split("_")[0]
    text = item if isinstance(item, str) else item["text"]
    return text.split()[-1].strip(".").lower()


class ConceptModel:
    """Oracle: inputs with the same concept embed identically, different concepts orthogonally."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.index: dict[str, int] = {}

    def encode(
        self, inputs: Sequence[Any], batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        for row, item in enumerate(inputs):
            out[row, self.index.setdefault(concept(item), len(self.index))] = 1.0
        return out


class ConstantModel:
    def __init__(self, dim: int = 8) -> None:
        self.vector = np.full(dim, 1.0 / np.sqrt(dim), dtype=np.float32)

    def encode(
        self, inputs: Sequence[Any], batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        return np.tile(self.vector, (len(inputs), 1))


class RandomModel:
    """A fixed random unit vector per distinct input: scores near chance, but deterministic."""

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        self.dim = dim
        self.seed = seed

    def encode(
        self, inputs: Sequence[Any], batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        rows = []
        for item in inputs:
            digest = hashlib.sha1(f"{self.seed}:{input_key(item)}".encode()).digest()
            vector = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(self.dim)
            rows.append(vector / np.linalg.norm(vector))
        return np.asarray(rows, dtype=np.float32)


class LookupModel:
    """Vectors given per input (a str text, or a dict keyed the way the evaluators key inputs)."""

    def __init__(self, table: dict[str, Sequence[float]]) -> None:
        self.table = {key: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for key, v in table.items()}

    @staticmethod
    def name(item: Any) -> str:
        if isinstance(item, dict) and "text" not in item:
            return Path(item["image"]).name
        return item if isinstance(item, str) else f"{item['text']}|{Path(item['image']).name}"

    def encode(
        self, inputs: Sequence[Any], batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        return np.stack([self.table[self.name(item)] for item in inputs])


class CountingModel:
    """Counts every input passed to the wrapped model, by canonical key."""

    def __init__(self, model: Any, fail_after_calls: int | None = None) -> None:
        self.model = model
        self.counts: Counter[str] = Counter()
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def encode(
        self, inputs: Sequence[Any], batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.counts.update(input_key(item) for item in inputs)
        return self.model.encode(inputs, batch_size=batch_size, show_progress_bar=show_progress_bar)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------- files


def write_image(path: Path, seed: int = 0, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_mmeb_dataset(data_dir: Path, name: str, rows: list[dict[str, Any]], files: int = 1) -> Path:
    """Write ``rows`` (the four MMEB columns) as ``files`` parquet shards in ``data_dir/name``."""
    folder = data_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    for shard, part in enumerate(np.array_split(np.arange(len(rows)), files)):
        frame = pd.DataFrame([rows[i] for i in part])
        frame.to_parquet(folder / f"test-{shard:05d}-of-{files:05d}.parquet", index=False)
    return folder


LABELS = ("cat", "dog", "bird", "fish", "horse")


def classification_rows(
    image_dir: Path, name: str, n: int, labels: Sequence[str] = LABELS
) -> list[dict[str, Any]]:
    """Image query + the full label set as text candidates, the true label first (MMEB classification)."""
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        relative = f"{name}/{label}_{i}.png"
        write_image(image_dir / relative, seed=i)
        others = [other for other in labels if other != label]
        rows.append(
            {
                "qry_text": "<|image_1|>\nRepresent the given image for classification",
                "qry_img_path": relative,
                "tgt_text": [label, *others],
                "tgt_img_path": [""] * len(labels),
            }
        )
    return rows


def t2i_rows(image_dir: Path, name: str, n: int, labels: Sequence[str] = LABELS) -> list[dict[str, Any]]:
    """Text query + image candidates (MMEB retrieval t2i): each label's image, the right one first."""
    paths = {}
    for j, label in enumerate(labels):
        paths[label] = f"{name}/{label}_pool.png"
        write_image(image_dir / paths[label], seed=100 + j)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        order = [label, *[other for other in labels if other != label]]
        rows.append(
            {
                "qry_text": f"Find an image that matches the given caption: a photo of a {label}",
                "qry_img_path": "",
                "tgt_text": ["<|image_1|>\nRepresent the given image."] * len(order),
                "tgt_img_path": [paths[other] for other in order],
            }
        )
    return rows


def write_mmeb_suite(root: Path) -> tuple[Path, Path]:
    """Three datasets (two of the paper's 36, one outside them); returns (data_dir, image_dir)."""
    data_dir, image_dir = root / "MMEB-eval", root / "eval_images"
    write_mmeb_dataset(data_dir, "ImageNet-1K", classification_rows(image_dir, "ImageNet-1K", 12), files=2)
    write_mmeb_dataset(data_dir, "MSCOCO_t2i", t2i_rows(image_dir, "MSCOCO_t2i", 7))
    write_mmeb_dataset(data_dir, "Custom", classification_rows(image_dir, "Custom", 4))
    return data_dir, image_dir


def karpathy_images(image_dir: Path, n: int, per_image: int = 2, split: str = "test") -> list[dict[str, Any]]:
    """Karpathy entries for n images whose captions end with the image's concept (its label)."""
    entries = []
    for i in range(n):
        label = f"thing{i}"
        write_image(image_dir / "val2014" / f"{label}_{i}.jpg", seed=i)
        sentences = [{"raw": f"caption number {k} shows a {label}", "tokens": []} for k in range(per_image)]
        entries.append(
            {"filepath": "val2014", "filename": f"{label}_{i}.jpg", "split": split, "sentences": sentences}
        )
    return entries


def write_karpathy(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}), encoding="utf-8")
    return path


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    """CSV, TSV or JSONL by suffix, columns from the first row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        pd.DataFrame(rows).to_csv(path, index=False, sep="\t" if path.suffix in (".tsv", ".txt") else ",")
    return path


def write_sharegpt4v(path: Path, pairs: list[tuple[str, str]]) -> Path:
    entries = [
        {
            "id": str(i),
            "image": image,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat do you see happening in this image?"},
                {"from": "gpt", "value": caption},
            ],
        }
        for i, (image, caption) in enumerate(pairs)
    ]
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def write_urban1k(folder: Path, captions: list[str], split_layout: bool = True) -> Path:
    """Images 1.jpg..n.jpg and captions 1.txt..n.txt, in image/ + caption/ or in one folder."""
    images = folder / "image" if split_layout else folder
    texts = folder / "caption" if split_layout else folder
    texts.mkdir(parents=True, exist_ok=True)
    for i, caption in enumerate(captions, start=1):
        write_image(images / f"{i}.jpg", seed=i)
        (texts / f"{i}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def write_sugarcrepe(data_dir: Path, image_dir: Path, splits: dict[str, list[tuple[str, str, str]]]) -> Path:
    """``splits``: name -> [(filename, caption, negative_caption)]; images written under image_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        for number, (filename, _, _) in enumerate(items):
            if not (image_dir / filename).exists():
                write_image(image_dir / filename, seed=number)
        content = {
            str(i): {"filename": f, "caption": c, "negative_caption": n} for i, (f, c, n) in enumerate(items)
        }
        (data_dir / f"{split}.json").write_text(json.dumps(content), encoding="utf-8")
    return data_dir
