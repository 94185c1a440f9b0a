"""MMEB (Massive Multimodal Embedding Benchmark, TIGER-Lab/MMEB-eval): reading, scoring, summary.

Each dataset is a folder of parquet files whose rows hold a query (``qry_text``, ``qry_img_path``)
and its own candidate list (``tgt_text``, ``tgt_img_path``, equal-length lists) with the positive at
index 0. The metric is precision@1: the query scores a hit when the positive is strictly more
similar to it than every other candidate. A tie with a negative counts as a miss, so a model that
embeds everything identically scores 0, never a lucky 100.

Candidate lists repeat a lot (a classification dataset carries the same label set on all of its
1000 rows), so a dataset is stored as a pool of distinct candidates plus, per query, the indices of
its candidates in the pool: the model then embeds each distinct input once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unime.evaluation.common import (
    IMAGE_PLACEHOLDER,
    EvalInput,
    input_key,
    make_input,
    percent,
    resolve_image,
)
from unime.evaluation.encoding import deduplicate, encode_checked

logger = logging.getLogger(__name__)

COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")

#: The paper's 36 datasets: meta-task -> (in-distribution, out-of-distribution) datasets.
MMEB_SPLITS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "classification": (
        ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397"),
        ("Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211"),
    ),
    "vqa": (
        ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W"),
        ("ScienceQA", "VizWiz", "GQA", "TextVQA"),
    ),
    "retrieval": (
        (
            "VisDial",
            "CIRR",
            "VisualNews_t2i",
            "VisualNews_i2t",
            "MSCOCO_t2i",
            "MSCOCO_i2t",
            "NIGHTS",
            "WebQA",
        ),
        ("OVEN", "FashionIQ", "EDIS", "Wiki-SS-NQ"),
    ),
    "grounding": (("MSCOCO",), ("RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")),
}

META_TASKS = tuple(MMEB_SPLITS)


def dataset_group(name: str) -> tuple[str, str] | None:
    """``(meta_task, "IND" | "OOD")`` of one of the 36 datasets, or None for any other dataset."""
    for task, (ind, ood) in MMEB_SPLITS.items():
        if name in ind:
            return task, "IND"
        if name in ood:
            return task, "OOD"
    return None


@dataclass
class MMEBDataset:
    """One MMEB dataset ready to encode.

    Attributes:
        name: the dataset's folder name, e.g. ``ImageNet-1K``.
        queries: one model input per row.
        pool: the distinct candidate inputs of the whole dataset.
        targets: per row, indices into ``pool`` of its candidates, the positive first.
    """

    name: str
    queries: list[EvalInput]
    pool: list[EvalInput]
    targets: list[np.ndarray]

    def __post_init__(self) -> None:
        if not self.queries:
            raise ValueError(f"MMEB dataset '{self.name}' has no rows")
        if len(self.targets) != len(self.queries):
            raise ValueError(
                f"MMEB dataset '{self.name}': {len(self.queries)} queries but {len(self.targets)} target lists"
            )
        for row, target in enumerate(self.targets):
            if target.size == 0 or target.min() < 0 or target.max() >= len(self.pool):
                raise ValueError(f"MMEB dataset '{self.name}' row {row}: candidate indices out of the pool")

    @classmethod
    def from_rows(
        cls, name: str, queries: Sequence[EvalInput], candidates: Sequence[Sequence[EvalInput]]
    ) -> MMEBDataset:
        """Build a dataset from per-row candidate lists (positive first), pooling equal candidates."""
        rows: dict[str, int] = {}
        pool: list[EvalInput] = []
        targets = []
        for candidate_list in candidates:
            indices = np.empty(len(candidate_list), dtype=np.int64)
            for position, item in enumerate(candidate_list):
                key = input_key(item)
                if key not in rows:
                    rows[key] = len(pool)
                    pool.append(item)
                indices[position] = rows[key]
            targets.append(indices)
        return cls(name, list(queries), pool, targets)


class _RowReader:
    """Turns (text, image path) cells into model inputs, checking each distinct image file once."""

    def __init__(self, name: str, image_dir: Path) -> None:
        self.name = name
        self.image_dir = image_dir
        self.resolved: dict[str, str] = {}

    def __call__(self, where: str, text: Any, image: Any, field: str) -> EvalInput:
        text = "" if text is None else str(text)
        image = "" if image is None else str(image)
        if IMAGE_PLACEHOLDER in text and not image:
            raise ValueError(f"MMEB {self.name}: {where}: text has {IMAGE_PLACEHOLDER} but {field} is empty")
        if not text and not image:
            raise ValueError(f"MMEB {self.name}: {where}: both the text and {field} are empty")
        path = None
        if image:
            path = self.resolved.get(image)
            if path is None:
                path = resolve_image(self.image_dir, image, f"MMEB {self.name}: {where}: {field}")
                self.resolved[image] = path
        return make_input(text, path)


def _read_parquet_rows(name: str, folder: Path) -> Iterable[tuple[str, Mapping[str, Any]]]:
    import pandas as pd

    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"MMEB {name}: no .parquet files in {folder}")
    for file in files:
        frame = pd.read_parquet(file)
        missing = [column for column in COLUMNS if column not in frame.columns]
        if missing:
            raise ValueError(
                f"MMEB {name}: {file.name}: missing column(s) {missing}; it has {list(frame.columns)}"
            )
        for row, record in enumerate(frame[list(COLUMNS)].to_dict("records")):
            yield f"{file.name} row {row}", record


def load_mmeb_dataset(
    folder: str | os.PathLike[str], image_dir: str | os.PathLike[str], name: str | None = None
) -> MMEBDataset:
    """Read one MMEB-eval dataset folder, resolving and checking every image under ``image_dir``."""
    folder, image_dir = Path(folder), Path(image_dir)
    name = name or folder.name
    if not folder.is_dir():
        raise FileNotFoundError(f"MMEB {name}: dataset folder {folder} does not exist")
    row_input = _RowReader(name, image_dir)
    queries: list[EvalInput] = []
    candidates: list[list[EvalInput]] = []
    for where, record in _read_parquet_rows(name, folder):
        texts, images = record["tgt_text"], record["tgt_img_path"]
        if texts is None or images is None or len(texts) != len(images):
            raise ValueError(
                f"MMEB {name}: {where}: tgt_text has {0 if texts is None else len(texts)} entries but "
                f"tgt_img_path has {0 if images is None else len(images)}"
            )
        if len(texts) == 0:
            raise ValueError(f"MMEB {name}: {where}: empty candidate list (tgt_text)")
        queries.append(row_input(where, record["qry_text"], record["qry_img_path"], "qry_img_path"))
        candidates.append(
            [
                row_input(where, text, image, f"tgt_img_path[{j}]")
                for j, (text, image) in enumerate(zip(texts, images, strict=True))
            ]
        )
    if not queries:
        raise ValueError(f"MMEB {name}: the parquet files in {folder} have no rows")
    return MMEBDataset.from_rows(name, queries, candidates)


def discover_mmeb(data_dir: str | os.PathLike[str], names: Sequence[str] | None = None) -> list[str]:
    """Dataset names to evaluate: ``names`` (each must be a folder) or every folder holding parquet files."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MMEB data folder {data_dir} does not exist")
    if names:
        for name in names:
            if not (data_dir / name).is_dir():
                raise FileNotFoundError(f"MMEB {name}: no folder {data_dir / name} (--datasets)")
        return list(names)
    found = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and any(p.glob("*.parquet")))
    if not found:
        raise FileNotFoundError(f"MMEB data folder {data_dir} has no dataset folders with .parquet files")
    return found


def load_mmeb(
    data_dir: str | os.PathLike[str], image_dir: str | os.PathLike[str], names: Sequence[str] | None = None
) -> list[MMEBDataset]:
    """Read the MMEB-eval datasets ``names`` (default: all found) from ``data_dir``."""
    return [
        load_mmeb_dataset(Path(data_dir) / name, image_dir, name) for name in discover_mmeb(data_dir, names)
    ]


def precision_at_1(
    query_embeddings: np.ndarray, pool_embeddings: np.ndarray, targets: Sequence[np.ndarray]
) -> float:
    """Percentage of queries whose positive (index 0 of its targets) beats every other candidate strictly."""
    if len(query_embeddings) != len(targets):
        raise ValueError(f"{len(query_embeddings)} query embeddings for {len(targets)} candidate lists")
    hits = 0
    for query, target in zip(query_embeddings, targets, strict=True):
        scores = pool_embeddings[target] @ query
        hits += bool(scores.size == 1 or scores[0] > scores[1:].max())
    return percent(hits, len(targets))


def score_mmeb_dataset(
    model: Any, dataset: MMEBDataset, batch_size: int = 32, show_progress_bar: bool = False
) -> float:
    """Precision@1 (percent) of ``model`` on one dataset, each distinct input embedded once."""
    unique, inverse = deduplicate([*dataset.queries, *dataset.pool])
    embeddings = encode_checked(model, unique, batch_size, show_progress_bar)
    n = len(dataset.queries)
    return precision_at_1(embeddings[inverse[:n]], embeddings[inverse[n:]], dataset.targets)


def summarize_mmeb(
    scores: Mapping[str, float], groups: Mapping[str, tuple[str, str]] | None = None
) -> dict[str, float]:
    """The paper's table from per-dataset precision@1: per-dataset keys plus meta-task, IND, OOD, overall.

    Aggregates are unweighted means over the datasets of the 36 present in ``scores``; other
    datasets keep their own key and stay out of every mean. ``groups`` (dataset -> (meta-task,
    "IND" | "OOD")) replaces the paper's split, e.g. for the synthetic benchmark's ``splits.json``.
    """
    metrics = {f"mmeb/{name}/precision@1": float(value) for name, value in scores.items()}
    means: dict[str, list[float]] = {}
    for name, value in scores.items():
        group = dataset_group(name) if groups is None else groups.get(name)
        if group is None:
            continue
        for key in (group[0], group[1], "overall"):
            means.setdefault(key, []).append(float(value))
    for key in (*META_TASKS, "IND", "OOD", "overall"):
        if key in means:
            metrics[f"mmeb/{key}/precision@1"] = float(np.mean(means[key]))
    return metrics


def evaluate_mmeb(
    model: Any,
    datasets: Sequence[MMEBDataset],
    batch_size: int = 32,
    show_progress_bar: bool = False,
    groups: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, float]:
    """Precision@1 of ``model`` on each dataset plus the paper's aggregates (see :func:`summarize_mmeb`)."""
    scores = {}
    for dataset in datasets:
        scores[dataset.name] = score_mmeb_dataset(model, dataset, batch_size, show_progress_bar)
        logger.info("MMEB %s: precision@1 %.2f", dataset.name, scores[dataset.name])
    return summarize_mmeb(scores, groups)
