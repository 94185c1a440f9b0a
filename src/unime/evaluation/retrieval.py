"""Zero-shot image-text retrieval: Recall@K in both directions.

Layouts read by :func:`load_retrieval`:

- Karpathy JSON (Flickr30K, MSCOCO): ``{"images": [{"filename", "filepath"?, "split",
  "sentences": [{"raw"}]}]}``, one split (``test`` by default); images at
  ``image_dir/filepath/filename``; the first 5 captions of each image, as the official UniME
  scripts cut COCO's (some COCO images have 6 or 7; Flickr30K has 5).
- CSV / TSV / JSONL with ``image`` and ``caption`` columns; rows sharing an image are grouped.
- ShareGPT4V (share-captioner JSON): a list of ``{"image", "conversations": [{"from": "human"},
  {"from": "gpt", "value": caption}]}``; the first 1000 entries by default.
- Urban1K: a folder with ``image/*.jpg`` and ``caption/*.txt`` (or both in one folder), the caption
  file sharing the image's stem.

Image-to-text counts a hit when ANY of the image's captions is in the top K; text-to-image when the
caption's image is. Ties are resolved against the model: a positive at rank r means r other items
score at least as high, so identical embeddings give R@K = 0 rather than a lucky 100.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unime.data.records import read_records, require_fields, resolve_image
from unime.evaluation.common import dataset_name, make_input, percent
from unime.evaluation.encoding import encode_unique
from unime.io.jsonl import read_json

RECALL_AT = (1, 5, 10)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Keeps the similarity block under about 64 MB of float32 whatever the dataset size.
_BLOCK_ELEMENTS = 1 << 24


@dataclass
class RetrievalDataset:
    """Images, captions and, per caption, the index of its image."""

    name: str
    images: list[str]
    captions: list[str]
    caption_image: np.ndarray

    def __post_init__(self) -> None:
        self.caption_image = np.asarray(self.caption_image, dtype=np.int64)
        if not self.images or not self.captions:
            raise ValueError(f"retrieval dataset '{self.name}' has no images or no captions")
        if self.caption_image.shape != (len(self.captions),):
            raise ValueError(f"retrieval dataset '{self.name}': caption_image needs one entry per caption")
        if self.caption_image.min() < 0 or self.caption_image.max() >= len(self.images):
            raise ValueError(f"retrieval dataset '{self.name}': caption_image points outside the images")
        without = np.setdiff1d(np.arange(len(self.images)), self.caption_image)
        if without.size:
            raise ValueError(
                f"retrieval dataset '{self.name}': image {self.images[without[0]]} has no caption"
            )

    @classmethod
    def from_pairs(cls, name: str, pairs: Sequence[tuple[str, str]]) -> RetrievalDataset:
        """Group ``(image_path, caption)`` pairs by image, images in first-seen order."""
        index: dict[str, int] = {}
        captions, owners = [], []
        for image, caption in pairs:
            owners.append(index.setdefault(image, len(index)))
            captions.append(caption)
        return cls(name, list(index), captions, np.asarray(owners, dtype=np.int64))


KARPATHY_CAPTIONS = 5


def _karpathy(path: Path, image_dir: Path, split: str, captions_per_image: int | None) -> list[tuple[str, str]]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a Karpathy JSON object {{\"images\": [...]}}")
    pairs = []
    for row, entry in enumerate(data["images"]):
        where = f"{path}: images[{row}]"
        require_fields(entry, ("filename", "split", "sentences"), where)
        _require_strings(entry, ("filename", "split"), where)
        if entry.get("filepath") is not None and not isinstance(entry["filepath"], str):
            raise ValueError(f"{where}: filepath must be a string, got {type(entry['filepath']).__name__}")
        if not isinstance(entry["sentences"], list):
            raise ValueError(f"{where}: sentences must be a list, got {type(entry['sentences']).__name__}")
        if entry["split"] != split:
            continue
        relative = os.path.join(entry.get("filepath") or "", entry["filename"])
        image = resolve_image(image_dir, relative, f"{where}: filename")
        for number, sentence in enumerate(entry["sentences"][:captions_per_image]):
            require_fields(sentence, ("raw",), f"{where}: sentences[{number}]")
            _require_strings(sentence, ("raw",), f"{where}: sentences[{number}]")
            pairs.append((image, sentence["raw"].strip()))
    if not pairs:
        raise ValueError(f"{path}: no images in split '{split}' (--split)")
    return pairs


def _require_strings(entry: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    for field in fields:
        if not isinstance(entry[field], str) or not entry[field].strip():
            raise ValueError(f"{where}: {field} must be a non-empty string, got {entry[field]!r:.80}")


def _table(path: Path, image_dir: Path) -> list[tuple[str, str]]:
    pairs = []
    for line, row in read_records(path):
        where = f"{path}: line {line}"
        require_fields(row, ("image", "caption"), where)
        _require_strings(row, ("image", "caption"), where)
        pairs.append((resolve_image(image_dir, row["image"].strip(), f"{where}: image"), row["caption"]))
    return pairs


def _sharegpt4v(path: Path, image_dir: Path, limit: int) -> list[tuple[str, str]]:
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of ShareGPT4V entries")
    pairs = []
    for row, entry in enumerate(entries[:limit]):
        where = f"{path}: entry {row}"
        require_fields(entry, ("image", "conversations"), where)
        _require_strings(entry, ("image",), where)
        turns = entry["conversations"]
        if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
            raise ValueError(f"{where}: conversations must be a list of {{\"from\", \"value\"}} objects")
        answers = [turn.get("value") for turn in turns if turn.get("from") == "gpt"]
        if not answers or not isinstance(answers[0], str) or not answers[0].strip():
            raise ValueError(f"{where}: conversations has no 'gpt' turn with a caption")
        pairs.append((resolve_image(image_dir, entry["image"], f"{where}: image"), answers[0].strip()))
    return pairs


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem)]


def _urban1k(folder: Path) -> list[tuple[str, str]]:
    image_folder, caption_folder = folder, folder
    if (folder / "image").is_dir() and (folder / "caption").is_dir():
        image_folder, caption_folder = folder / "image", folder / "caption"
    images = sorted(
        (p for p in image_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key
    )
    if not images:
        raise FileNotFoundError(f"{image_folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    pairs = []
    for image in images:
        caption_file = caption_folder / f"{image.stem}.txt"
        if not caption_file.is_file():
            raise FileNotFoundError(f"{folder}: image {image.name} has no caption file {caption_file}")
        pairs.append((str(image.resolve()), caption_file.read_text(encoding="utf-8").strip()))
    return pairs


def detect_format(path: Path) -> str:
    """``urban1k`` for a folder, ``table`` for CSV/TSV/JSONL, ``karpathy`` or ``sharegpt4v`` for JSON."""
    if path.is_dir():
        return "urban1k"
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        return "table"
    if path.suffix.lower() == ".json":
        with open(path, "rb") as handle:
            head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        return "sharegpt4v" if head.startswith(b"[") else "karpathy"
    raise ValueError(f"{path}: cannot tell the retrieval layout from the name; pass the format explicitly")


def load_retrieval(
    path: str | os.PathLike[str],
    image_dir: str | os.PathLike[str] | None = None,
    *,
    fmt: str = "auto",
    split: str = "test",
    limit: int = 1000,
    name: str | None = None,
    captions_per_image: int | None = KARPATHY_CAPTIONS,
) -> RetrievalDataset:
    """Read a retrieval dataset in any layout of the module docstring.

    ``image_dir`` defaults to the data file's folder; ``split`` and ``captions_per_image`` (the
    first N captions of each image, None: all) apply to Karpathy files and ``limit`` to
    ShareGPT4V (the paper uses its first 1000 entries).
    """
    if captions_per_image is not None and captions_per_image <= 0:
        raise ValueError(f"captions_per_image must be positive or None, got {captions_per_image}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"retrieval data {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    image_root = Path(image_dir) if image_dir is not None else path.parent
    if fmt == "karpathy":
        pairs = _karpathy(path, image_root, split, captions_per_image)
    elif fmt == "table":
        pairs = _table(path, image_root)
    elif fmt == "sharegpt4v":
        pairs = _sharegpt4v(path, image_root, limit)
    elif fmt == "urban1k":
        pairs = _urban1k(path)
    else:
        raise ValueError(f"unknown retrieval format '{fmt}' (karpathy, table, sharegpt4v, urban1k)")
    if not pairs:
        raise ValueError(f"{path}: no image-caption pairs")
    default_name = "sharegpt4v" if fmt == "sharegpt4v" else dataset_name(path)
    return RetrievalDataset.from_pairs(name or default_name, pairs)


def _ranks_text_to_image(text: np.ndarray, image: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Per caption, how many OTHER images score at least as high as its own."""
    ranks = np.empty(len(text), dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // len(image))
    for start in range(0, len(text), step):
        scores = text[start : start + step] @ image.T
        positive = scores[np.arange(len(scores)), owner[start : start + step]]
        ranks[start : start + step] = (scores >= positive[:, None]).sum(axis=1) - 1
    return ranks


def _ranks_image_to_text(text: np.ndarray, image: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Per image, how many captions of OTHER images score at least as high as its best caption."""
    ranks = np.empty(len(image), dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // len(text))
    for start in range(0, len(image), step):
        scores = image[start : start + step] @ text.T
        own = owner[None, :] == np.arange(start, start + len(scores))[:, None]
        best = np.where(own, scores, -np.inf).max(axis=1)
        ranks[start : start + step] = ((scores >= best[:, None]) & ~own).sum(axis=1)
    return ranks


def query_ranks(text_embeddings: np.ndarray, image_embeddings: np.ndarray,
                caption_image: np.ndarray) -> dict[str, np.ndarray]:
    """Per query, how many wrong items score at least as high as its positive (dot product):
    ``{"i2t": one per image, "t2i": one per caption}``. A query is a hit at K when its rank is < K."""
    return {"i2t": _ranks_image_to_text(text_embeddings, image_embeddings, caption_image),
            "t2i": _ranks_text_to_image(text_embeddings, image_embeddings, caption_image)}


def recall_from_ranks(ranks: Mapping[str, np.ndarray], ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """``{"i2t_R@k", "t2i_R@k"}`` percentages from :func:`query_ranks`' per-query ranks."""
    return {f"{direction}_R@{k}": percent(int((ranks[direction] < k).sum()), len(ranks[direction]))
            for direction in ("i2t", "t2i") for k in ks}


def recall_at_k(
    text_embeddings: np.ndarray,
    image_embeddings: np.ndarray,
    caption_image: np.ndarray,
    ks: Sequence[int] = RECALL_AT,
) -> dict[str, float]:
    """``{"i2t_R@k", "t2i_R@k"}`` percentages from caption and image embeddings (dot product)."""
    return recall_from_ranks(query_ranks(text_embeddings, image_embeddings, caption_image), ks)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """``rows`` L2-normalised in float32 (bf16 rows are only nearly unit)."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def truncated_rows(rows: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` values of each row, L2-normalised again: a Matryoshka size, as a model
    set to ``dimensions`` (``--dimensions N``) returns it from the same full-size rows."""
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions <= 0:
        raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
    if dimensions > rows.shape[1]:
        raise ValueError(f"dimensions {dimensions} exceeds the embedding size {rows.shape[1]}")
    return unit_rows(rows[:, :dimensions])


def retrieval_embeddings(
    model: Any, dataset: RetrievalDataset, batch_size: int = 32, show_progress_bar: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(captions, images)``: one row per caption and per image, as the model returns them (each
    distinct input encoded once)."""
    inputs = [make_input(None, image) for image in dataset.images] + list(dataset.captions)
    embeddings = encode_unique(model, inputs, batch_size, show_progress_bar)
    n = len(dataset.images)
    return embeddings[n:], embeddings[:n]


def retrieval_ranks(
    model: Any, dataset: RetrievalDataset, batch_size: int = 32, show_progress_bar: bool = False
) -> dict[str, np.ndarray]:
    """The model's per-query ranks on one dataset (:func:`query_ranks`, from cosine similarity):
    what R@K averages, kept per query for bootstrap intervals (:mod:`unime.evaluation.bootstrap`)."""
    text, image = retrieval_embeddings(model, dataset, batch_size, show_progress_bar)
    return query_ranks(unit_rows(text), unit_rows(image), dataset.caption_image)


def ranks_metrics(ranks: Sequence[tuple[str, Mapping[str, np.ndarray]]], prefix: str = "retrieval") -> dict[str, float]:
    """``PREFIX/<name>/i2t_R@1`` ... per ``(name, per-query ranks)`` and ``PREFIX/mean_R@1``: R@1 averaged
    over both directions and all datasets."""
    metrics: dict[str, float] = {}
    r_at_1 = []
    for name, per_query in ranks:
        scores = recall_from_ranks(per_query)
        metrics.update({f"{prefix}/{name}/{key}": value for key, value in scores.items()})
        r_at_1 += [scores["i2t_R@1"], scores["t2i_R@1"]]
    if r_at_1:
        metrics[f"{prefix}/mean_R@1"] = float(np.mean(r_at_1))
    return metrics


def evaluate_retrieval(
    model: Any, datasets: Sequence[RetrievalDataset], batch_size: int = 32, show_progress_bar: bool = False,
    dimensions: Sequence[int] | None = None,
) -> dict[str, float]:
    """R@1/5/10 both ways per dataset (``retrieval/<name>/i2t_R@1`` ...) and ``retrieval/mean_R@1``.

    ``retrieval/mean_R@1`` averages R@1 over both directions and all datasets: one number to
    select checkpoints on.

    ``dimensions``: the evaluation at each of these Matryoshka sizes instead, from embeddings computed
    once at the model's size and truncated (:func:`truncated_rows`): ``retrieval/dimensions/<N>/...``,
    each size's figures those of a run with the model set to that size.
    """
    embedded = [(dataset, *retrieval_embeddings(model, dataset, batch_size, show_progress_bar)) for dataset in datasets]
    return retrieval_metrics(embedded, dimensions)


def retrieval_metrics(embedded: Sequence[tuple[RetrievalDataset, np.ndarray, np.ndarray]],
                      dimensions: Sequence[int] | None = None) -> dict[str, float]:
    """:func:`evaluate_retrieval`'s metrics from each dataset's :func:`retrieval_embeddings`."""
    if dimensions is None:
        return ranks_metrics([(dataset.name, query_ranks(unit_rows(text), unit_rows(image), dataset.caption_image))
                              for dataset, text, image in embedded])
    metrics: dict[str, float] = {}
    for size in dimensions:
        metrics.update(ranks_metrics(
            [(dataset.name, query_ranks(unit_rows(truncated_rows(text, size)), unit_rows(truncated_rows(image, size)),
                                        dataset.caption_image)) for dataset, text, image in embedded],
            prefix=f"retrieval/dimensions/{size}"))
    return metrics
