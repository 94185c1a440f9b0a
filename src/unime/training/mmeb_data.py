"""Stage-2 training data in the MMEB-train layout, batched one data set at a time.

Layout (TIGER-Lab/MMEB-train): ``DATA/<Dataset>/*.parquet`` (or ``*.jsonl``), or one file per
data set directly in ``DATA``, with the columns ``qry``, ``qry_image_path``, ``pos_text``,
``pos_image_path`` and optionally ``neg_text``, ``neg_image_path``; image paths are relative to an
image root. Query texts carry the instruction and MMEB's ``<|image_1|>`` placeholder, which the
model maps to its backbone's image token. MMEB-V2-style video rows put a video in
``qry_video_path`` / ``pos_video_path`` / ``neg_video_path`` instead of an image: a video file or a
folder of extracted frames (image files, in name order), relative to the image root; image rows
and video rows may share a data set and so a batch (docs/video.md).

- :func:`load_mmeb_train` reads and validates the rows up front (columns, empty sides, image files
  present and readable as images), so a bad row fails before any model work, naming data set, file
  and row; with ``skip_bad_rows`` such rows are left out and counted.
- :class:`MMEBTrainCollator` turns rows into ``query`` / ``positive`` [/ ``negative``] inputs,
  decoding images there (lazily) and still naming the row when one fails.
- :class:`DatasetBatchSampler` draws every batch from one data set, as the paper does (it keeps a
  column's modality uniform), with per-data-set weights, and under DDP gives all ranks batches of
  the same data set so that the negatives are mined from one global batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.sampler import MultiDatasetDefaultBatchSampler
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from unime.choices import SAMPLING
from unime.config import MMEB_IMAGE_PLACEHOLDER
from unime.data.mmeb import CHUNK, data_files, dataset_folders, missing_columns, parquet_rows, row_label
from unime.inputs import EmbedInput, load_image
from unime.io.images import header_problem
from unime.io.jsonl import iter_jsonl, text_lines

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".parquet", ".jsonl")
COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path",
           "qry_video_path", "pos_video_path", "neg_video_path")
REQUIRED_COLUMNS = ("qry", "pos_text")
# Sides of a pair: (name used in messages and dataset columns, MMEB text column, MMEB image column).
_SIDES = (("query", "qry", "qry_image_path"), ("positive", "pos_text", "pos_image_path"),
          ("negative", "neg_text", "neg_image_path"))
_VIDEO_COLUMNS = {"query": "qry_video_path", "positive": "pos_video_path", "negative": "neg_video_path"}
#: Files of a frames folder taken as frames (the image decoder reads the format from the content).
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class BadRow(ValueError):
    """A row that cannot be trained on; the message names the data set, the file and the row."""


@dataclass(frozen=True)
class DatasetSource:
    """One MMEB-train data set: its name and the files that hold its rows."""

    name: str
    files: tuple[Path, ...]


@dataclass
class MMEBTrainData:
    """The validated rows, one ``datasets.Dataset`` per MMEB data set.

    Each dataset has the columns ``query``, ``positive``, then ``negative`` when every row has an
    explicit negative, each a ``{"text", "image"}`` struct (the image an absolute path or ""), and
    ``row`` (where the row came from, for messages).
    ``skipped`` counts the rows left out per data set (``skip_bad_rows``).
    """

    datasets: Any  # datasets.DatasetDict
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            name: {"rows": len(ds), "skipped": self.skipped.get(name, 0),
                   "explicit_negatives": "negative" in ds.column_names}
            for name, ds in self.datasets.items()
        }


def discover(data: str | Path, names: Sequence[str] | None = None, split: str | None = None) -> list[DatasetSource]:
    """The data sets under ``data``: a data file is one data set (named by its stem); a folder holds
    one data set per data file directly inside it and one per sub-folder of data files.

    ``split`` keeps, inside sub-folders, only the files whose name starts with it (the hub's
    MMEB-train folders hold ``original-*.parquet`` and ``diverse_instruction-*.parquet``). ``names``
    keeps only those data sets, in that order; a name that is not there is an error.
    """
    root = Path(data)
    if root.is_file():
        if root.suffix not in DATA_SUFFIXES:
            raise ValueError(f"--data {root}: not a .parquet or .jsonl file")
        found = {root.stem: DatasetSource(root.stem, (root,))}
    elif root.is_dir():
        found = {}
        folders = dataset_folders(root, DATA_SUFFIXES, split)
        # Files and sub-folders in one name order; a file and a folder of one name: the later wins.
        for entry in sorted([*data_files(root, DATA_SUFFIXES), *folders]):
            if entry in folders:
                found[entry.name] = DatasetSource(entry.name, folders[entry])
            else:
                found[entry.stem] = DatasetSource(entry.stem, (entry,))
        if not found:
            where = f" named {split}*" if split else ""
            raise ValueError(f"--data {root}: no .parquet or .jsonl files{where}, neither directly nor in sub-folders")
    else:
        raise FileNotFoundError(f"--data {root}: no such file or folder")
    if names is None:
        return list(found.values())
    missing = [name for name in names if name not in found]
    if missing:
        where = f" with files named {split}*" if split else ""
        raise ValueError(f"--data {root}: no data set named {', '.join(missing)}{where} (found: {', '.join(found)})")
    return [found[name] for name in names]


def _read_file(dataset: str, path: Path) -> Iterator[tuple[str, dict[str, Any] | BadRow]]:
    """(where, row) for each row of a file; a row that cannot even be parsed comes as a BadRow."""
    if path.suffix == ".parquet":
        for index, row in parquet_rows(path, f"dataset {dataset}", partial(_check_columns, dataset, path)):
            yield f"dataset {dataset}, {row_label(path, index)}", row
        return
    for number, row, error in iter_jsonl(text_lines(path)):
        where = f"dataset {dataset}, {path.name} line {number}"
        if error is not None:
            yield where, BadRow(f"{where}: not valid JSON ({error})")
            continue
        if not isinstance(row, dict):
            yield where, BadRow(f"{where}: expected a JSON object with {', '.join(REQUIRED_COLUMNS)}")
            continue
        _check_columns(dataset, path, list(row), where)
        yield where, row


def _check_columns(dataset: str, path: Path, names: list[str], where: str | None = None) -> None:
    # A column this reader does not know is a layout error, not a bad row: never skipped.
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise ValueError(f"{where or f'dataset {dataset}, {path.name}'}: unknown column(s) {', '.join(unknown)}; "
                         f"MMEB-train columns are {', '.join(COLUMNS)}")
    missing = missing_columns(REQUIRED_COLUMNS, names)
    if missing and where is None:
        raise ValueError(f"dataset {dataset}, {path.name}: missing column(s) {', '.join(missing)}")


def _side(row: dict[str, Any], text_column: str, image_column: str, where: str, image_root: Path,
          label: str) -> dict[str, str] | None:
    """``{"text", "image"}`` of one side of a row (image: absolute path or ""), with ``"video"`` (an
    absolute path) when the side has a video; None when absent."""
    video_column = _VIDEO_COLUMNS[label]
    text, image, video = row.get(text_column), row.get(image_column), row.get(video_column)
    for column, value in ((text_column, text), (image_column, image), (video_column, video)):
        if value is not None and not isinstance(value, str):
            raise BadRow(f"{where}: column {column} must be a string, got {type(value).__name__}")
    text, image, video = text or "", (image or "").strip(), (video or "").strip()
    if not text.strip() and not image and not video:
        return None
    if image and video:
        raise BadRow(f"{where}: the {label} has an image ({image_column}) and a video ({video_column}); "
                     "a side takes one of them")
    if MMEB_IMAGE_PLACEHOLDER in text and not image:
        raise BadRow(f"{where}: the {label} text refers to an image ({MMEB_IMAGE_PLACEHOLDER}) but "
                     f"{image_column} is empty")
    if image:
        path = Path(image)
        image = str(path if path.is_absolute() else image_root / path)
    side = {"text": text, "image": image}
    if video:
        path = Path(video)
        side["video"] = str(path if path.is_absolute() else image_root / path)
    return side


def _parse_row(row: dict[str, Any], where: str, image_root: Path) -> dict[str, Any]:
    """The flat training row of one MMEB-train row, or a BadRow saying what is wrong with it."""
    if "qry" not in row or "pos_text" not in row:
        raise BadRow(f"{where}: missing column(s) {', '.join(c for c in REQUIRED_COLUMNS if c not in row)}")
    parsed: dict[str, Any] = {}
    for label, text_column, image_column in _SIDES:
        side = _side(row, text_column, image_column, where, image_root, label)
        if side is None and label != "negative":
            raise BadRow(f"{where}: empty {label} (no text and no image)")
        if side is not None:
            parsed[label] = side
    parsed["row"] = where
    return parsed


def _image_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as an image (None when it can): checked up front from the header
    only (:func:`unime.io.images.header_problem`), the pixels are decoded when the row is batched."""
    return header_problem(path)


def _images(row: dict[str, Any]) -> list[str]:
    return [row[label]["image"] for label, _, _ in _SIDES if label in row and row[label]["image"]]


def _videos(row: dict[str, Any]) -> list[str]:
    return [row[label]["video"] for label, _, _ in _SIDES if label in row and row[label].get("video")]


def frame_files(folder: Path) -> list[str]:
    """The frames of a frames folder: its image files (:data:`FRAME_SUFFIXES`) in name order."""
    return [str(path) for path in sorted(folder.iterdir()) if path.suffix.lower() in FRAME_SUFFIXES
            and path.is_file()]


def _video_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as a video (None when it can), checked up front without decoding:
    a file that exists, or a folder that holds frames. Frames are decoded when the row is batched."""
    video = Path(path)
    if video.is_dir():
        return None if frame_files(video) else f"video frames folder {video} holds no image files"
    return None if video.is_file() else f"video file not found: {video}"


def _check_images(rows: list[dict[str, Any]], workers: int = 8) -> list[str | None]:
    """One problem (or None) per row, reading image headers on a few threads (it is I/O bound)."""
    paths = sorted({path for row in rows for path in _images(row)})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = dict(zip(paths, pool.map(_image_problem, paths), strict=True))
    videos = {path: _video_problem(path) for row in rows for path in _videos(row)}
    result: list[str | None] = []
    for row in rows:
        found = [problems[path] for path in _images(row) if problems[path]]
        found += [videos[path] for path in _videos(row) if videos[path]]
        result.append(f"{row['row']}: {found[0]}" if found else None)
    return result


def _load_source(source: DatasetSource, image_root: Path, max_rows: int | None,
                 skip_bad_rows: bool) -> tuple[list[dict[str, Any]], int, str | None]:
    """The first ``max_rows`` good rows of a data set, how many bad rows were skipped, and the
    problem of the first one skipped.

    Rows are checked in chunks (image headers on threads); within a chunk the problems are reported
    in file order, so the error names the first bad row.
    """
    kept: list[dict[str, Any]] = []
    skipped = 0
    first_problem: str | None = None
    pending: list[dict[str, Any] | BadRow] = []

    def flush() -> None:
        nonlocal skipped, first_problem
        rows = [row for row in pending if not isinstance(row, BadRow)]
        problems = iter(_check_images(rows))
        for row in pending:
            problem = str(row) if isinstance(row, BadRow) else next(problems)
            if problem is None:
                kept.append(row)
            elif not skip_bad_rows:
                raise BadRow(problem)
            else:
                skipped += 1
                first_problem = first_problem or problem
                logger.warning("skipping %s", problem)
        pending.clear()

    def wanted() -> int:
        # Rows past the cap are never examined: a bad row there neither fails nor counts.
        return CHUNK if max_rows is None else min(CHUNK, max_rows - len(kept))

    for path in source.files:
        for where, raw in _read_file(source.name, path):
            if wanted() <= 0:
                break
            try:
                pending.append(raw if isinstance(raw, BadRow) else _parse_row(raw, where, image_root))
            except BadRow as error:
                pending.append(error)
            if len(pending) >= wanted():
                flush()
        flush()
    return kept, skipped, first_problem


def _columns(name: str, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Column lists of a data set; explicit negatives only when every row has one (a batch cannot
    hold a negative column with holes)."""
    with_negative = sum("negative" in row for row in rows)
    keys = ["query", "positive"]
    if with_negative == len(rows):
        keys.append("negative")
    elif with_negative:
        logger.warning("dataset %s: %d of %d rows have an explicit negative; explicit negatives are not "
                       "used for this data set", name, with_negative, len(rows))
    if any(_videos(row) for row in rows):
        # One struct type per column: every side of a data set with videos has the "video" field.
        rows = [{**row, **{key: {"video": "", **row[key]} for key in keys}} for row in rows]
    return {key: [row[key] for row in rows] for key in [*keys, "row"]}


def load_mmeb_train(
    data: str | Path,
    image_root: str | Path,
    *,
    datasets: Sequence[str] | None = None,
    split: str | None = None,
    max_rows_per_dataset: int | None = 50_000,
    skip_bad_rows: bool = False,
    explicit_negatives: bool = True,
) -> MMEBTrainData:
    """Read and validate MMEB-train data sets (see the module docstring and :func:`discover`).

    Each data set keeps its first ``max_rows_per_dataset`` good rows (the paper caps MMEB-train at
    50k pairs per data set). A row is bad when a column holds a non-string, its query or positive is
    empty (no text and no image), its text has ``<|image_1|>`` but no image path, or an image file
    is missing or not an image; the error names data set, file and row, unless ``skip_bad_rows``.
    An unknown column or a data set without rows is always an error.
    """
    from datasets import Dataset, DatasetDict

    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--image-root {root}: no such folder")
    if max_rows_per_dataset is not None and max_rows_per_dataset <= 0:
        raise ValueError(f"max_rows_per_dataset must be positive, got {max_rows_per_dataset}")
    loaded: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    for source in discover(data, datasets, split):
        rows, skipped[source.name], first_problem = _load_source(source, root, max_rows_per_dataset, skip_bad_rows)
        if not rows:
            reason = (f" (all {skipped[source.name]} rows were bad; the first: {first_problem})"
                      if skipped[source.name] else "")
            raise ValueError(f"dataset {source.name} ({', '.join(str(f) for f in source.files)}) has no rows{reason}")
        if not explicit_negatives:
            rows = [{k: v for k, v in row.items() if k != "negative"} for row in rows]
        loaded[source.name] = Dataset.from_dict(_columns(source.name, rows))
        if skipped[source.name]:
            logger.warning("dataset %s: skipped %d bad rows", source.name, skipped[source.name])
    result = MMEBTrainData(DatasetDict(loaded), skipped)
    logger.info("MMEB-train data: %s", ", ".join(f"{k} {v['rows']}" for k, v in result.summary().items()))
    return result


@dataclass
class MMEBTrainCollator(SentenceTransformerDataCollator):
    """Turns flat MMEB-train rows into the ``query``, ``positive`` [, ``negative``] inputs of the loss.

    Images are decoded here, so a file that broke after :func:`load_mmeb_train` checked its header
    still fails naming its data set and row; with ``skip_bad_rows`` the row leaves the batch and is
    counted in ``skipped`` (and the log) instead. Inputs are :class:`~unime.inputs.EmbedInput`, which
    the model renders in its joint prompt (``<|image_1|>`` becomes the backbone's image token).
    The ``label`` of each row holds the :func:`content_id` of its positive (and of its explicit
    negative), which the loss uses to keep copies of a positive out of its negatives.
    """

    skip_bad_rows: bool = False
    #: Frames sampled from each video (the model's ``video_frames``): videos are decoded here, naming
    #: the row; None leaves the file or the frame list to the model, which decodes it when embedding.
    video_frames: int | None = None
    skipped: int = field(default=0, init=False)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = []
        for feature in features:
            try:
                rows.append(self.inputs(feature) if self.video_frames is None
                            else self.inputs(feature, self.video_frames))
            except (FileNotFoundError, ValueError) as error:
                if not self.skip_bad_rows:
                    raise
                self.skipped += 1
                logger.warning("skipping %s (%d rows skipped while batching so far)", error, self.skipped)
        if not rows:
            raise ValueError(f"every row of a batch was bad (from {features[0].get('row', '?')})")
        return super().__call__(rows)

    @staticmethod
    def inputs(feature: dict[str, Any], video_frames: int | None = None) -> dict[str, Any]:
        where = feature.get("row", "row")
        result: dict[str, Any] = {}
        if "dataset_name" in feature:
            result["dataset_name"] = feature["dataset_name"]
        ids = []
        for label, _, _ in _SIDES:
            if label in feature:
                side = feature[label]
                image = load_image(side["image"], where) if side["image"] else None
                video = _row_video(side.get("video"), video_frames, f"{where}, {label}")
                result[label] = EmbedInput(text=side["text"] or None, image=image, video=video)
                if label != "query":
                    ids.append(content_id(side["text"], side["image"] or side.get("video")))
        result["label"] = ids
        return result


def _row_video(path: str | None, frames: int | None, where: str) -> Any:
    """A side's video for :class:`~unime.inputs.EmbedInput`: the frames of a frames folder or a video
    file, sampled to ``frames`` here (errors name the row and the file); with ``frames`` None, the
    frame list or the file path as they are. None without a video."""
    if not path:
        return None
    folder = Path(path)
    video: Any = frame_files(folder) if folder.is_dir() else path
    if frames is None:
        return video
    from unime.io.video import load_video

    return load_video(video, frames, where)


def content_id(text: str | None, image: str | None) -> int:
    """A 63-bit id of one side's content (its text and image path): equal content, equal id."""
    digest = hashlib.blake2b(f"{text or ''}\0{image or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


class DatasetBatchSampler(MultiDatasetDefaultBatchSampler):
    """Batches drawn one data set at a time, ``group`` consecutive batches from the same data set.

    Under DDP the dataloader hands batch ``i`` to rank ``i % W``; with ``group = W`` the W per-rank
    batches of a step come from one data set, so the global batch is uniform (same columns on every
    rank, which the cross-device gather needs, and one data set's negatives, as in the paper).

    ``strategy``: ``"proportional"`` (each data set contributes about ``weight x`` its number of
    batch groups per epoch, in a random order; weight 1 everywhere is sentence-transformers'
    PROPORTIONAL, and a weight above 1 cycles the data set again) or ``"round_robin"`` (one group
    from each data set in turn until the smallest is exhausted; no weights). The order depends
    only on ``seed + epoch``, so a resumed run sees the same batches.
    """

    def __init__(self, dataset: Any, batch_samplers: list[Any], generator: torch.Generator | None = None,
                 seed: int = 0, *, weights: Sequence[float] | None = None, strategy: str = "proportional",
                 group: int = 1) -> None:
        super().__init__(dataset, batch_samplers, generator, seed)
        if strategy not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {strategy!r}")
        if group < 1:
            raise ValueError(f"group must be positive, got {group}")
        weights = list(weights) if weights is not None else [1.0] * len(batch_samplers)
        if len(weights) != len(batch_samplers) or any(not w > 0 for w in weights):
            raise ValueError(f"need one positive weight per data set, got {weights}")
        if strategy == "round_robin" and any(w != 1.0 for w in weights):
            raise ValueError("dataset weights need sampling 'proportional'")
        self.weights, self.strategy, self.group = weights, strategy, group

    def _groups(self) -> list[int]:
        """Batch groups each data set contributes per epoch."""
        full = [len(sampler) // self.group for sampler in self.batch_samplers]
        if self.strategy == "round_robin":
            return [min(full)] * len(full)
        return [round(w * n) for w, n in zip(self.weights, full, strict=True)]

    def __iter__(self) -> Iterator[list[int]]:
        if self.generator is not None and self.seed is not None:
            self.generator.manual_seed(self.seed + self.epoch)
        offsets = [0, *accumulate(len(d) for d in self.dataset.datasets)]
        counts = self._groups()
        if self.strategy == "round_robin":
            order = [d for _ in range(counts[0]) for d in range(len(counts))]
        else:
            order = [d for d, count in enumerate(counts) for _ in range(count)]
            order = [order[i] for i in torch.randperm(len(order), generator=self.generator).tolist()]
        streams = [_cycle(sampler) for sampler in self.batch_samplers]
        for d in order:
            for _ in range(self.group):
                yield [index + offsets[d] for index in next(streams[d])]

    def __len__(self) -> int:
        return sum(self._groups()) * self.group


def _cycle(sampler: Any) -> Iterator[list[int]]:
    # A data set weighted above 1 runs through its (reshuffled) batches again.
    while True:
        yield from iter(sampler)


def batch_sampler_factory(names: Sequence[str], weights: dict[str, float] | None, strategy: str,
                          group: int) -> Any:
    """The ``multi_dataset_batch_sampler`` argument for the trainer: builds a DatasetBatchSampler
    with the weights of ``names`` (the DatasetDict's order; unlisted data sets weigh 1)."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"dataset_weights: no data set named {', '.join(unknown)} (data sets: {', '.join(names)})")
    ordered = [float(weights.get(name, 1.0)) for name in names]
    bad = [f"{n}={w}" for n, w in zip(names, ordered, strict=True) if not (w > 0 and math.isfinite(w))]
    if bad:
        raise ValueError(f"dataset_weights must be positive numbers, got {', '.join(bad)}")
    # A partial, not a closure: the trainer pickles its arguments into every checkpoint.
    return partial(DatasetBatchSampler, weights=ordered, strategy=strategy, group=group)
