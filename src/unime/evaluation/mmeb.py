"""MMEB (Massive Multimodal Embedding Benchmark, TIGER-Lab/MMEB-eval): reading, scoring, summary.

Each dataset is a folder of parquet files whose rows hold a query (``qry_text``, ``qry_img_path``)
and its own candidate list (``tgt_text``, ``tgt_img_path``, equal-length lists) with the positive at
index 0. The metric is precision@1 over the cosine similarities of each query with its own
candidates, computed from embeddings normalised again in float32. Two tie rules
(:data:`TIE_RULES`): ``argmax`` (VLM2Vec's ``np.argmax``: the first maximum wins, so a tie with
the positive at index 0 is a hit) and ``strict`` (the positive must beat every other candidate
strictly: a model that embeds everything identically scores 0, never a lucky 100).

How the inputs reach the model is the :class:`MMEBProtocol`: ``vlm2vec`` (VLM2Vec v1 ``eval.py``,
which produced UniME's MMEB numbers: raw text, bare image token, square image resize, per-backbone
``max_len``, ``argmax``) or ``unime`` (the model's own prompts, ``strict``).

Candidate lists repeat a lot (a classification dataset carries the same label set on all of its
1000 rows), so a dataset is stored as a pool of distinct candidates plus, per query, the indices of
its candidates in the pool: the model then embeds each distinct input once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from unime.config import MMEB_IMAGE_PLACEHOLDER
from unime.data.mmeb import data_files, dataset_folders, missing_columns, parquet_rows, row_label
from unime.data.records import resolve_image
from unime.evaluation.common import EvalInput, input_key, make_input, percent
from unime.evaluation.encoding import deduplicate, encode_checked

logger = logging.getLogger(__name__)

COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")

PROTOCOLS = ("vlm2vec", "unime")
#: ``argmax``: VLM2Vec's rule (first maximum wins: a tie with the positive is a hit);
#: ``strict``: the positive must beat every other candidate (a tie is a miss).
TIE_RULES = ("argmax", "strict")

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


@dataclass(frozen=True)
class MMEBProtocol:
    """How MMEB inputs reach the model and how ties are scored.

    Attributes:
        name: ``"vlm2vec"`` (VLM2Vec v1 ``eval.py``: :func:`unime.formats.vlm2vec_format`) or
            ``"unime"`` (the model's saved prompts and mode, the processor's own image size).
        image_resolution: VLM2Vec's ``--image_resolution`` (``high`` 1344, ``mid`` 672, ``low``
            128, ``none``: only images above 1344 px are resized); ``vlm2vec`` only.
        max_length: token limit per sequence; None: the backbone's VLM2Vec ``--max_len``
            (Phi-3.5-V 256, LLaVA-1.6 4096, none otherwise); ``vlm2vec`` only.
        ties: :data:`TIE_RULES`; None: ``argmax`` for ``vlm2vec``, ``strict`` for ``unime``.
    """

    name: str = "vlm2vec"
    image_resolution: str = "high"
    max_length: int | None = None
    ties: str | None = None

    def __post_init__(self) -> None:
        from unime.formats import IMAGE_RESOLUTIONS

        if self.name not in PROTOCOLS:
            raise ValueError(f"MMEB protocol must be one of {', '.join(PROTOCOLS)}, got {self.name!r}")
        if self.image_resolution not in IMAGE_RESOLUTIONS:
            raise ValueError(f"image_resolution must be one of {', '.join(IMAGE_RESOLUTIONS)}, "
                             f"got {self.image_resolution!r}")
        if self.ties is not None and self.ties not in TIE_RULES:
            raise ValueError(f"ties must be one of {', '.join(TIE_RULES)}, got {self.ties!r}")
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"max_length must be positive, got {self.max_length}")

    @property
    def tie_rule(self) -> str:
        return self.ties or ("argmax" if self.name == "vlm2vec" else "strict")

    def input_format(self, family: str) -> Any:
        """The :class:`unime.formats.InputFormat` of this protocol for a backbone family."""
        from unime.formats import PROMPTED, vlm2vec_format

        if self.name == "unime":
            return PROMPTED
        return vlm2vec_format(family, self.image_resolution, self.max_length)

    def describe(self, model: Any = None) -> dict[str, Any]:
        """A JSON record of the protocol; with a unime model, the input format it resolves to."""
        record: dict[str, Any] = {"name": self.name, "ties": self.tie_rule}
        if self.name == "vlm2vec":
            record.update(image_resolution=self.image_resolution, max_length=self.max_length)
        target = _unime_model(model)
        if target is not None:
            record["family"] = target.backbone.family
            record["input_format"] = self.input_format(target.backbone.family).describe()
            record["mode"] = "joint" if self.name == "vlm2vec" else target.unime_config.mode
        return record


def _unime_model(model: Any) -> Any:
    """The UniME model inside ``model`` (itself, or the model a CachedEncoder wraps), else None."""
    from unime.evaluation.encoding import CachedEncoder

    if isinstance(model, CachedEncoder):
        model = model.model
    return model if hasattr(model, "using_format") and hasattr(model, "backbone") else None


@contextlib.contextmanager
def using_protocol(model: Any, protocol: MMEBProtocol | None) -> Iterator[None]:
    """Render inputs in ``protocol``'s format while the block runs. A model that is not a unime
    model (any sentence-transformers model, the test doubles) gets the inputs as they are."""
    target = _unime_model(model)
    if protocol is None or target is None:
        if protocol is not None and protocol.name == "vlm2vec":
            logger.info("not a unime model: MMEB inputs go to its encode() as they are")
        yield
        return
    buffers = vlm2vec_buffers(target) if protocol.name == "vlm2vec" else contextlib.nullcontext()
    with target.using_format(protocol.input_format(target.backbone.family)), buffers:
        yield


@contextlib.contextmanager
def vlm2vec_buffers(model: Any) -> Iterator[None]:
    """Rotary arithmetic in the weights' half precision while the block runs, as VLM2Vec v1 computes
    it in bf16 (on a GPU as on a CPU):

    - floating-point buffers are rounded as its ``model.to(dtype=torch.bfloat16)`` leaves them: the
      RoPE frequencies (``inv_freq``), and with them every position's angle. A model loaded in bf16
      by transformers keeps those buffers in float32.
    - the Qwen2-VL / Qwen2.5-VL vision towers' angles are formed in bf16, as VLM2Vec's vendored tower
      does (``torch.outer`` of a bf16 position and a bf16 frequency, then ``cos``/``sin`` in bf16),
      where transformers multiplies in float32 (:func:`_half_precision_vision_rotary`).

    Each moves the scores by up to a few 1e-3 on the same inputs. A float32 model is left as it is;
    everything is restored afterwards."""
    import torch

    dtype = getattr(model, "dtype", None)
    if dtype not in (torch.bfloat16, torch.float16):
        yield
        return
    saved = []
    rotaries = []
    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                saved.append((module, name, buffer))
                module._buffers[name] = buffer.to(dtype)
        if _is_axial_vision_rotary(module):
            rotaries.append(module)
            module.forward = _half_precision_vision_rotary(module, dtype)
    try:
        yield
    finally:
        for module, name, buffer in saved:
            module._buffers[name] = buffer
        for module in rotaries:
            del module.forward  # the class's forward again


def _is_axial_vision_rotary(module: Any) -> bool:
    """The axial 2-D rotary of a Qwen2-VL-style vision tower (transformers' ``Qwen2VLVision-`` and
    ``Qwen2_5_VLVisionRotaryEmbedding``)."""
    return (type(module).__name__.endswith("VisionRotaryEmbedding") and hasattr(module, "inv_freq")
            and hasattr(module, "recomposition_frequencies"))


def _half_precision_vision_rotary(module: Any, dtype: Any) -> Any:
    """``module``'s forward with the angles formed and their cos / sin taken in ``dtype``, as VLM2Vec's
    vendored Qwen2-VL vision tower computes them once its model is cast to bf16 (the product of a
    position and a frequency is rounded, then its cosine): same layout as transformers' forward."""
    import torch

    @torch.no_grad()
    def forward(x: Any, position_ids: Any) -> tuple[Any, Any]:
        freqs = position_ids[..., None].to(dtype) * module.inv_freq.to(device=x.device, dtype=dtype)
        scaling = module.attention_scaling
        cos, sin = freqs.cos(), freqs.sin()
        if scaling != 1.0:
            cos, sin = cos * scaling, sin * scaling
        return module.recomposition_frequencies(cos), module.recomposition_frequencies(sin)

    return forward


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
        text_field = "qry_text" if field == "qry_img_path" else field.replace("tgt_img_path", "tgt_text")
        for column, value in ((text_field, text), (field, image)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"MMEB {self.name}: {where}: {column} must be a string, got {type(value).__name__}")
        text = "" if text is None else text
        image = "" if image is None else image
        if MMEB_IMAGE_PLACEHOLDER in text and not image:
            raise ValueError(f"MMEB {self.name}: {where}: text has {MMEB_IMAGE_PLACEHOLDER} but {field} is empty")
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
    files = data_files(folder, any_entry=True)
    if not files:
        raise FileNotFoundError(f"MMEB {name}: no .parquet files in {folder}")
    for file in files:
        for row, record in parquet_rows(file, f"MMEB {name}", partial(_check_columns, name, file),
                                        columns=COLUMNS, decode="pandas"):
            yield row_label(file, row), record


def _check_columns(name: str, file: Path, names: list[str]) -> None:
    missing = missing_columns(COLUMNS, names)
    if missing:
        raise ValueError(f"MMEB {name}: {file.name}: missing column(s) {missing}; it has {names}")


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
        for column, value in (("tgt_text", texts), ("tgt_img_path", images)):
            if value is not None and (isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__")):
                raise ValueError(f"MMEB {name}: {where}: {column} must be a list, got {type(value).__name__}")
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
    found = [folder.name for folder in dataset_folders(data_dir, any_entry=True)]
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


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows normalised again in float32: bf16-normalised embeddings have norms 0.997 to 1.003."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def candidate_scores(
    query_embeddings: np.ndarray, pool_embeddings: np.ndarray, targets: Sequence[np.ndarray]
) -> np.ndarray:
    """``[queries, candidates]`` float32: row i holds the cosine of query i with each of its own
    candidates, in the data's order (the positive first); rows of a dataset whose candidate lists
    differ in length are padded with NaN."""
    if len(query_embeddings) != len(targets):
        raise ValueError(f"{len(query_embeddings)} query embeddings for {len(targets)} candidate lists")
    queries, pool = _unit_rows(query_embeddings), _unit_rows(pool_embeddings)
    width = max(len(target) for target in targets)
    scores = np.full((len(targets), width), np.nan, dtype=np.float32)
    for row, (query, target) in enumerate(zip(queries, targets, strict=True)):
        scores[row, : len(target)] = pool[target] @ query
    return scores


def precision_from_scores(scores: np.ndarray, ties: str = "strict") -> float:
    """Precision@1 (percent) from :func:`candidate_scores` (positive in column 0, NaN padding)."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {', '.join(TIE_RULES)}, got {ties!r}")
    hits = 0
    for row in scores:
        row = row[~np.isnan(row)]
        if ties == "argmax":
            hits += bool(np.argmax(row) == 0)
        else:
            hits += bool(row.size == 1 or row[0] > row[1:].max())
    return percent(hits, len(scores))


def precision_at_1(
    query_embeddings: np.ndarray, pool_embeddings: np.ndarray, targets: Sequence[np.ndarray], ties: str = "strict"
) -> float:
    """Percentage of queries whose positive (index 0 of its targets) wins under the ``ties`` rule."""
    return precision_from_scores(candidate_scores(query_embeddings, pool_embeddings, targets), ties)


def mmeb_dataset_scores(
    model: Any, dataset: MMEBDataset, batch_size: int = 32, show_progress_bar: bool = False
) -> np.ndarray:
    """:func:`candidate_scores` of ``model`` on one dataset, each distinct input embedded once."""
    unique, inverse = deduplicate([*dataset.queries, *dataset.pool])
    embeddings = encode_checked(model, unique, batch_size, show_progress_bar)
    n = len(dataset.queries)
    return candidate_scores(embeddings[inverse[:n]], embeddings[inverse[n:]], dataset.targets)


def score_mmeb_dataset(
    model: Any,
    dataset: MMEBDataset,
    batch_size: int = 32,
    show_progress_bar: bool = False,
    ties: str = "strict",
) -> float:
    """Precision@1 (percent) of ``model`` on one dataset, each distinct input embedded once. The
    inputs go to ``model.encode`` as they are: apply a protocol around it (:func:`using_protocol`)."""
    return precision_from_scores(mmeb_dataset_scores(model, dataset, batch_size, show_progress_bar), ties)


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
    protocol: MMEBProtocol | None = None,
) -> dict[str, float]:
    """Precision@1 of ``model`` on each dataset plus the paper's aggregates (see :func:`summarize_mmeb`).

    ``protocol`` None: the model's current input format and the ``strict`` tie rule (what the
    function always did); ``unime eval mmeb`` passes ``MMEBProtocol("vlm2vec")`` by default.
    """
    scores = {}
    ties = protocol.tie_rule if protocol is not None else "strict"
    with using_protocol(model, protocol):
        for dataset in datasets:
            scores[dataset.name] = score_mmeb_dataset(model, dataset, batch_size, show_progress_bar, ties)
            logger.info("MMEB %s: precision@1 %.2f", dataset.name, scores[dataset.name])
    return summarize_mmeb(scores, groups)
