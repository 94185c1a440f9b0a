"""MMEB-V2 (VLM2Vec-V2's benchmark): its YAML configs, its data saved offline, its scoring.

MMEB-V2 has 78 sets in three groups (:data:`MMEB_V2_SETS`): **image** (the 36 MMEB sets),
**video** (classification, QA, retrieval, moment retrieval) and **visdoc** (visual document
retrieval: ViDoRe v1 and v2, VisRAG, out-of-domain). VLM2Vec-V2's ``eval.py`` reads one YAML file
per group; each entry names its ``dataset_parser``, its data roots and its ``eval_type``. This
module reads those YAML files (:func:`read_config`), reads each set from the layout of
docs/evaluation.md ("MMEB-V2"), and scores it the way ``eval.py`` does:

- the candidates of a set are keyed by name (a label, a video id, a corpus id, ...); a name seen
  twice keeps its first input, as VLM2Vec-V2's ``generate_cand_dataset`` does, and the pool is
  ordered as that function orders it (the rows' candidates first, then the corpus);
- ``eval_type: global`` ranks each query against the whole pool, ``local`` against its own
  candidates; the ranking is ``numpy.argsort(-scores)`` of the dot products of the embeddings as
  the model returns them (no renormalisation), as in ``eval.py``;
- hit@k: 1 when one of the query's labels is among the top k names (:func:`hit_at_k`);
  NDCG@k, linear gain, the relevance of each label from the qrels (:func:`ndcg_at_k`). Image and
  video sets report hit@1, visdoc sets NDCG@5 (``ndcg_linear@5`` in VLM2Vec-V2's score files);
  every score here is a percentage.

Inputs are rendered as VLM2Vec-V2's parsers write them (``process_input_text``: the instruction,
a space, the text; a video or image token and a space in front), with ``<|image_1|>`` and
``<|video_1|>`` standing for the backbone's bare tokens (:mod:`unime.formats`,
:func:`v2_input_format`). Videos are lists of pre-extracted frames sampled as VLM2Vec-V2 samples
them (:func:`v2_sample_frames`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unime.config import MMEB_IMAGE_PLACEHOLDER, MMEB_VIDEO_PLACEHOLDER
from unime.evaluation.common import EvalInput, input_key

logger = logging.getLogger(__name__)

GROUPS = ("image", "video", "visdoc")

#: The 78 sets of MMEB-V2 by group, named as the keys of VLM2Vec-V2's YAML files and score reports.
MMEB_V2_SETS: dict[str, tuple[str, ...]] = {
    "image": (
        "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A", "ImageNet-R",
        "ObjectNet", "Country211", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
        "ScienceQA", "VizWiz", "GQA", "TextVQA", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
        "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "MSCOCO",
        "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing",
    ),
    "video": (
        "K700", "SmthSmthV2", "HMDB51", "UCF101", "Breakfast",
        "MVBench", "Video-MME", "NExTQA", "EgoSchema", "ActivityNetQA",
        "DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2",
        "QVHighlight", "Charades-STA", "MomentSeeker",
    ),
    "visdoc": (
        "ViDoRe_arxivqa", "ViDoRe_docvqa", "ViDoRe_infovqa", "ViDoRe_tabfquad", "ViDoRe_tatdqa",
        "ViDoRe_shiftproject", "ViDoRe_syntheticDocQA_artificial_intelligence", "ViDoRe_syntheticDocQA_energy",
        "ViDoRe_syntheticDocQA_government_reports", "ViDoRe_syntheticDocQA_healthcare_industry",
        "ViDoRe_esg_reports_human_labeled_v2", "ViDoRe_biomedical_lectures_v2_multilingual",
        "ViDoRe_economics_reports_v2_multilingual", "ViDoRe_esg_reports_v2_multilingual",
        "VisRAG_ArxivQA", "VisRAG_ChartQA", "VisRAG_MP-DocVQA", "VisRAG_SlideVQA", "VisRAG_InfoVQA", "VisRAG_PlotQA",
        "ViDoSeek-page", "ViDoSeek-doc", "MMLongBench-page", "MMLongBench-doc",
    ),
}
#: The metric each group reports, as VLM2Vec-V2's score files name it.
GROUP_METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}

#: The parsers read here, by group.
PARSERS: dict[str, str] = {
    **{name: "image" for name in ("image_cls", "image_qa", "image_t2i", "image_i2t", "image_i2i_vg")},
    **{name: "video" for name in ("video_classification", "ssv2", "msrvtt", "msvd", "didemo", "vatex")},
    **{name: "visdoc" for name in ("vidore", "visrag")},
}
#: VLM2Vec-V2's parsers that are known but not read here: their sets are listed as not run.
UNSUPPORTED_PARSERS: dict[str, str] = {
    **{name: "video" for name in ("videomme", "mvbench", "nextqa", "egoschema", "activitynetqa", "youcook2",
                                  "moment_retrieval", "momentseeker")},
    "gui": "image",
}

#: Instructions of VLM2Vec-V2's parsers (``src/data/eval_dataset/*.py``).
VISDOC_QUERY_INSTRUCTION = "Find a document image that matches the given query:"
VISDOC_TARGET_INSTRUCTION = "Understand the content of the provided document image."
VIDEO_TARGET_INSTRUCTION = "Understand the content of the provided video."
VIDEO_RETRIEVAL_INSTRUCTIONS = {
    "msrvtt": "Find a video that contains the following visual content:",
    "msvd": "Find the video snippet that corresponds to the given summary:",
    "didemo": "Find a video that includes the following described scenes:",
    "vatex": "Select a video that fits the description provided:",
}
#: Query instruction of each video classification set, by its ``dataset_name``.
VIDEO_CLASSIFICATION_INSTRUCTIONS = {
    "Kinetics-700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",
}
#: ViDoRe v2 sets read in one language only (VLM2Vec-V2 filters the queries on ``language``).
VISDOC_LANGUAGE = {
    "ViDoRe_biomedical_lectures_v2": "english",
    "ViDoRe_economics_reports_v2": "english",
    "ViDoRe_esg_reports_v2": "english",
}

#: The class names of a video classification set, one a line, beside its parquet data.
LABELS_FILE = "labels.txt"
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: VLM2Vec-V2's Qwen2-VL process function: an image with a side under 28 px is resized to 56 x 56.
SMALL_IMAGE_SIDE, SMALL_IMAGE_RESIZE = 28, 56


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class SetConfig:
    """One entry of a VLM2Vec-V2 YAML config: ``name`` is its key; ``options`` the entry as written."""

    name: str
    parser: str
    group: str
    options: Mapping[str, Any]
    source: str

    @property
    def supported(self) -> bool:
        return self.parser in PARSERS

    @property
    def dataset_name(self) -> str:
        return str(self.options.get("dataset_name") or self.name)

    @property
    def eval_type(self) -> str:
        return str(self.options.get("eval_type", "global"))

    def where(self) -> str:
        return f"{self.source}: entry '{self.name}'"

    def option(self, key: str, kind: type = str, default: Any = None) -> Any:
        value = self.options.get(key, default)
        if value is None or value == "None":
            return default
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.where()}: {key} must be {kind.__name__}, got {value!r}") from None


def read_config(path: str | os.PathLike[str]) -> list[SetConfig]:
    """The entries of one VLM2Vec-V2 YAML config (``image.yaml``, ``video.yaml``, ``visdoc.yaml``), in
    file order. An entry without a known ``dataset_parser`` is an error naming the file and the entry."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MMEB-V2 config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a mapping of set name -> entry, got {type(raw).__name__}")
    entries = []
    known = sorted({*PARSERS, *UNSUPPORTED_PARSERS})
    for name, options in raw.items():
        where = f"{path}: entry '{name}'"
        if not isinstance(options, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(options).__name__}")
        parser = options.get("dataset_parser")
        if not parser:
            raise ValueError(f"{where}: no dataset_parser")
        group = PARSERS.get(parser) or UNSUPPORTED_PARSERS.get(parser)
        if group is None:
            raise ValueError(f"{where}: unknown dataset_parser '{parser}'; known parsers: {', '.join(known)}")
        eval_type = options.get("eval_type", "global")
        if eval_type not in ("global", "local"):
            raise ValueError(f"{where}: eval_type must be global or local, got {eval_type!r}")
        entries.append(SetConfig(str(name), str(parser), group, dict(options), str(path)))
    return entries


# --------------------------------------------------------------------------- sets


@dataclass
class V2Set:
    """One MMEB-V2 set ready to encode and score.

    Attributes:
        name: the YAML key.
        group: ``image``, ``video`` or ``visdoc``.
        queries: one input per query.
        candidates: the candidate pool, name -> input, in VLM2Vec-V2's order.
        labels: per query, the names of its relevant candidates.
        relevance: per query, the qrels score of each label (visdoc), else None (binary).
        local: per query, the names it is ranked against (``eval_type: local``); None: the whole pool.
        frames: frames per video (None for a set without video).
    """

    name: str
    group: str
    queries: list[EvalInput]
    candidates: dict[str, EvalInput]
    labels: list[list[str]]
    relevance: list[list[float] | None]
    local: list[list[str]] | None = None
    frames: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.queries:
            raise ValueError(f"MMEB-V2 {self.name}: no queries")
        if not self.candidates:
            raise ValueError(f"MMEB-V2 {self.name}: no candidates")

    @property
    def metric(self) -> str:
        return GROUP_METRIC[self.group]


class _Pool:
    """Candidates keyed by name, first input kept, in insertion order (``generate_cand_dataset``)."""

    def __init__(self) -> None:
        self.items: dict[str, EvalInput] = {}

    def add(self, name: str, item: EvalInput) -> None:
        self.items.setdefault(name, item)


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def v2_sample_frames(total: int, frames: int) -> list[int]:
    """Indices of the frames VLM2Vec-V2 takes from ``total`` saved frames: all of them when there are
    at most ``frames``, else ``numpy.linspace(0, total - 1, frames, dtype=int)`` (truncated, not rounded)."""
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")
    if total <= frames:
        return list(range(total))
    return [int(i) for i in np.linspace(0, total - 1, frames, dtype=int)]


def frame_paths(folder: Path, frames: int, where: str) -> list[str]:
    """The ``frames`` frames of one video's folder that VLM2Vec-V2 samples (image files in natural
    name order, :func:`v2_sample_frames`). A missing folder, an empty one, or one with fewer frames than
    asked (the model samples a fixed count) is an error naming ``where``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: frames folder {folder} does not exist (extract the video's frames "
                                "into it, docs/evaluation.md)")
    names = sorted((p.name for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS), key=_natural_key)
    if len(names) < frames:
        raise ValueError(f"{where}: frames folder {folder} has {len(names)} frames, fewer than the {frames} "
                         "sampled (num_frames)")
    return [str(folder / names[i]) for i in v2_sample_frames(len(names), frames)]


def _read_table(folder: Path, where: str) -> list[dict[str, Any]]:
    """Rows of the parquet files (or one .parquet file) at ``folder``, in file then row order."""
    import pyarrow.parquet as pq

    if folder.is_file():
        files = [folder]
    elif folder.with_suffix(".parquet").is_file():
        files = [folder.with_suffix(".parquet")]
    elif folder.is_dir():
        files = sorted(p for p in folder.rglob("*.parquet") if p.is_file())
    else:
        files = []
    if not files:
        raise FileNotFoundError(f"{where}: no parquet data at {folder} (docs/evaluation.md, 'MMEB-V2')")
    rows: list[dict[str, Any]] = []
    for file in files:
        rows.extend(pq.read_table(file).to_pylist())
    return rows


def _need(row: Mapping[str, Any], columns: Sequence[str], where: str) -> None:
    missing = [column for column in columns if column not in row]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; the row has {sorted(row)}")


def _sample(rows: list[dict[str, Any]], config: SetConfig) -> list[dict[str, Any]]:
    """``num_sample_per_subset``: the first N rows (VLM2Vec-V2's ``sample_dataset``)."""
    limit = config.option("num_sample_per_subset", int)
    return rows[:limit] if limit is not None and limit < len(rows) else rows


def _text_input(text: str) -> EvalInput:
    return text


def _video_input(text: str, frames: list[str]) -> EvalInput:
    return {"text": text, "video": frames}  # type: ignore[dict-item]


def _prompt(instruction: str, text: str | None = None, video: bool = False, image: bool = False) -> str:
    """VLM2Vec-V2's ``process_input_text`` with placeholders for the backbone's bare tokens."""
    prompt = instruction if not text else f"{instruction} {text}"
    if video:
        prompt = f"{MMEB_VIDEO_PLACEHOLDER} {prompt}"
    if image:
        prompt = f"{MMEB_IMAGE_PLACEHOLDER} {prompt}"
    return prompt


@dataclass(frozen=True)
class Layout:
    """Where the data of a run lies: ``data_dir`` (the roots of the YAML entries are relative to it),
    ``hf_dir`` (each set's hub data saved as parquet, ``<hf_dir>/<dataset_name>``) and ``mmeb_dir``
    (MMEB-eval's parquet folders, for the image group)."""

    data_dir: Path
    hf_dir: Path
    mmeb_dir: Path

    @classmethod
    def under(cls, data_dir: str | os.PathLike[str], hf_dir: str | os.PathLike[str] | None = None,
              mmeb_dir: str | os.PathLike[str] | None = None) -> Layout:
        root = Path(data_dir)
        return cls(root, Path(hf_dir) if hf_dir else root / "hf", Path(mmeb_dir) if mmeb_dir else root / "MMEB-eval")

    def root(self, config: SetConfig, key: str) -> Path:
        value = config.options.get(key)
        if not value:
            raise ValueError(f"{config.where()}: no {key}")
        return self.data_dir / str(value)


def load_set(config: SetConfig, layout: Layout) -> V2Set:
    """Read one set of a supported parser; errors name the set, the file and the row."""
    if not config.supported:
        raise ValueError(f"{config.where()}: dataset_parser '{config.parser}' is not supported by unime")
    if config.group == "image":
        return _load_image(config, layout)
    if config.group == "visdoc":
        return _load_visdoc(config, layout)
    return _load_video(config, layout)


def _load_image(config: SetConfig, layout: Layout) -> V2Set:
    """An image set from MMEB-eval's parquet folder (``<mmeb_dir>/<dataset_name>``), images under the
    entry's ``image_root``; each row's own candidates (``eval_type: local``), the positive first."""
    from unime.evaluation.mmeb import load_mmeb_dataset

    folder = layout.mmeb_dir / config.dataset_name
    image_root = layout.root(config, "image_root")
    dataset = load_mmeb_dataset(folder, image_root, config.name)
    limit = config.option("num_sample_per_subset", int)
    count = len(dataset.queries) if limit is None else min(limit, len(dataset.queries))
    names = [input_key(item) for item in dataset.pool]
    pool = _Pool()
    local, labels = [], []
    for target in dataset.targets[:count]:
        row = [names[i] for i in target]
        for i in target:
            pool.add(names[i], dataset.pool[i])
        local.append(row)
        labels.append([row[0]])
    if config.eval_type != "local":
        local = None
    return V2Set(config.name, "image", dataset.queries[:count], pool.items, labels, [None] * count, local)


def _load_video(config: SetConfig, layout: Layout) -> V2Set:
    parser, name = config.parser, config.dataset_name
    frames = config.option("num_frames", int, 8)
    frame_root = layout.root(config, "frame_root")
    where = f"MMEB-V2 {config.name}"
    rows = _sample(_read_table(layout.hf_dir / name, where), config)
    pool = _Pool()
    queries: list[EvalInput] = []
    labels: list[list[str]] = []
    local: list[list[str]] = []
    missing_label = 0
    for index, row in enumerate(rows):
        at = f"{where}: row {index}"
        if parser in ("video_classification", "ssv2"):
            _need(row, ["video_id", "pos_text"] + (["neg_text"] if parser == "ssv2" else []), at)
            instruction = VIDEO_CLASSIFICATION_INSTRUCTIONS.get(name)
            if instruction is None:
                raise ValueError(f"{config.where()}: no classification instruction for dataset_name '{name}'; "
                                 f"known: {', '.join(VIDEO_CLASSIFICATION_INSTRUCTIONS)}")
            video = frame_paths(frame_root / str(row["video_id"]), frames, at)
            queries.append(_video_input(_prompt(instruction, video=True), video))
            label = str(row["pos_text"])
            names = [str(text) for text in row["neg_text"]] if parser == "ssv2" else [label]
            if not names:
                raise ValueError(f"{at}: empty candidate list (neg_text)")
            missing_label += label not in names
            for text in names:
                pool.add(text, _text_input(text))
            labels.append([label])
            local.append(names)
        else:
            instruction = VIDEO_RETRIEVAL_INSTRUCTIONS[parser]
            if parser == "msrvtt":
                _need(row, ["video_id", "caption"], at)
                video_name, caption = str(row["video_id"]), row["caption"]
            elif parser == "msvd":
                _need(row, ["video_id", "caption"], at)
                video_name, caption = str(row["video_id"]), row["caption"][0]
            elif parser == "didemo":
                _need(row, ["video", "caption"], at)
                video_name, caption = os.path.splitext(os.path.basename(str(row["video"])))[0], row["caption"]
            else:  # vatex
                _need(row, ["videoID", "enCap"], at)
                video_name, caption = str(row["videoID"]), row["enCap"][0]
            queries.append(_text_input(_prompt(instruction, str(caption))))
            video = frame_paths(frame_root / video_name, frames, at)
            pool.add(video_name, _video_input(_prompt(VIDEO_TARGET_INSTRUCTION, video=True), video))
            labels.append([video_name])
            local.append([video_name])
    notes: dict[str, Any] = {}
    if parser == "video_classification":
        # The corpus of every class name (VLM2Vec-V2 keeps them in its code): labels.txt beside the data.
        labels_file = layout.hf_dir / name / LABELS_FILE
        if labels_file.is_file():
            for label in _read_labels(labels_file):
                pool.add(label, _text_input(label))
            notes["label_corpus"] = str(labels_file)
        else:
            notes["label_corpus"] = "labels of the rows only (no labels.txt)"
            logger.warning("%s: no %s: the candidate pool holds the labels of the rows only", where, labels_file)
    if missing_label:
        notes["rows_with_label_not_among_candidates"] = missing_label
    return V2Set(config.name, "video", queries, pool.items, labels, [None] * len(queries),
                 local if config.eval_type == "local" else None, frames, notes)


def _read_labels(path: Path) -> list[str]:
    labels = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    labels = [label for label in labels if label.strip()]
    if not labels:
        raise ValueError(f"{path}: no labels (one class name a line)")
    return labels


def visrag_file_name(name: str) -> str:
    """VLM2Vec-V2's file name of a VisRAG page: the name's stem cut to 50 characters, ``_``, the first 8
    hex digits of the name's MD5, the extension."""
    base, ext = os.path.splitext(name)
    return base[:50] + "_" + hashlib.md5(name.encode("utf-8")).hexdigest()[:8] + ext


def _page_path(config: SetConfig, image_root: Path, corpus_id: str) -> Path:
    if config.parser == "visrag":
        return image_root / visrag_file_name(corpus_id)
    return image_root / f"{corpus_id}.png"


def _image_bytes(cell: Any) -> bytes | None:
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    return cell if isinstance(cell, (bytes, bytearray)) and cell else None


def _load_visdoc(config: SetConfig, layout: Layout) -> V2Set:
    """A visual document set in the BEIR layout (``queries``, ``corpus``, ``qrels`` under
    ``<hf_dir>/<dataset_name>``), page images at ``<image_root>/<corpus-id>.png`` (VisRAG: its
    shortened name). A page missing there is written from the corpus's ``image`` bytes, as VLM2Vec-V2
    does; missing both ways it is an error naming the set and the row."""
    from PIL import Image

    where = f"MMEB-V2 {config.name}"
    base = layout.hf_dir / config.dataset_name
    image_root = layout.root(config, "image_root")
    queries_rows = _read_table(base / "queries", f"{where} queries")
    corpus_rows = _read_table(base / "corpus", f"{where} corpus")
    qrels_rows = _read_table(base / "qrels", f"{where} qrels")
    language = VISDOC_LANGUAGE.get(config.dataset_name)
    if language is not None:
        queries_rows = [row for row in queries_rows if row.get("language") == language]
    queries_rows = _sample(queries_rows, config)
    qrels: dict[str, dict[str, float]] = {}
    for index, row in enumerate(qrels_rows):
        _need(row, ["query-id", "corpus-id", "score"], f"{where} qrels row {index}")
        if row["score"] > 0:  # VLM2Vec-V2's load_qrels_mapping: positive scores, the highest kept
            docs = qrels.setdefault(str(row["query-id"]), {})
            docs[str(row["corpus-id"])] = max(docs.get(str(row["corpus-id"]), 0), row["score"])
    pages: dict[str, str] = {}
    target = _prompt(VISDOC_TARGET_INSTRUCTION, image=True)
    for index, row in enumerate(corpus_rows):
        at = f"{where} corpus row {index}"
        _need(row, ["corpus-id"], at)
        corpus_id = str(row["corpus-id"])
        path = _page_path(config, image_root, corpus_id)
        if not path.is_file():
            data = _image_bytes(row.get("image"))
            if data is None:
                raise FileNotFoundError(f"{at}: page image {path} not found and the row has no image bytes")
            from unime.io.integrity import atomic_path

            path.parent.mkdir(parents=True, exist_ok=True)
            # Renamed into place: processes of one torchrun reading the same set never see half a page.
            with atomic_path(path) as partial:
                image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
                Image.open(io.BytesIO(data)).save(partial, format=image_format)
        pages[corpus_id] = str(path)
    pool = _Pool()
    queries: list[EvalInput] = []
    labels: list[list[str]] = []
    relevance: list[list[float] | None] = []
    for index, row in enumerate(queries_rows):
        at = f"{where} queries row {index}"
        _need(row, ["query-id", "query"], at)
        relevant = qrels.get(str(row["query-id"]))
        if not relevant:
            raise ValueError(f"{at}: query-id {row['query-id']!r} has no relevant page in the qrels")
        for corpus_id in relevant:
            path = pages.get(corpus_id) or str(_page_path(config, image_root, corpus_id))
            if not Path(path).is_file():
                raise FileNotFoundError(f"{at}: page image {path} of corpus-id {corpus_id!r} not found")
            pool.add(corpus_id, {"text": target, "image": path})
        queries.append(_text_input(_prompt(VISDOC_QUERY_INSTRUCTION, str(row["query"]))))
        labels.append(list(relevant))
        relevance.append([float(score) for score in relevant.values()])
    for corpus_id, path in pages.items():
        pool.add(corpus_id, {"text": target, "image": path})
    return V2Set(config.name, "visdoc", queries, pool.items, labels, relevance,
                 None if config.eval_type == "global" else [list(names) for names in labels])


# --------------------------------------------------------------------------- scoring


def rank_names(query_embeddings: np.ndarray, names: Sequence[str], pool_embeddings: np.ndarray,
               local: Sequence[Sequence[str]] | None) -> list[list[str]]:
    """Per query, candidate names best first: ``numpy.argsort(-scores)`` of the dot products, over the
    whole pool (``local`` None) or over each query's own names, as VLM2Vec-V2's ``eval.py`` ranks."""
    queries = np.asarray(query_embeddings, dtype=np.float32)
    pool = np.asarray(pool_embeddings, dtype=np.float32)
    if local is None:
        order = np.argsort(-np.dot(queries, pool.T), axis=1)
        return [[names[i] for i in row] for row in order]
    where = {name: i for i, name in enumerate(names)}
    ranked = []
    for query, own in zip(queries, local, strict=True):
        candidates = pool[[where[name] for name in own]]
        ranked.append([own[i] for i in np.argsort(-np.dot(query, candidates.T))])
    return ranked


def hit_at_k(prediction: Sequence[str], labels: Sequence[str], k: int) -> float:
    """1.0 when one of ``labels`` is among the first ``k`` predictions."""
    if not labels or k <= 0:
        return 0.0
    return 1.0 if set(prediction[:k]) & set(labels) else 0.0


def ndcg_at_k(prediction: Sequence[str], labels: Sequence[str], k: int,
              relevance: Sequence[float] | None = None) -> float:
    """NDCG@k with linear gain (``rel / log2(rank + 1)``): binary relevance without ``relevance``, else
    each label's own score; the ideal ranking is the labels' scores sorted, cut at k."""
    if relevance is None:
        wanted = set(labels)
        gains = [1.0 if item in wanted else 0.0 for item in prediction[:k]]
        ideal = [1.0] * min(len(wanted), k)
    else:
        if len(relevance) != len(labels):
            raise ValueError(f"{len(labels)} labels but {len(relevance)} relevance scores")
        scores = dict(zip(labels, relevance, strict=True))
        gains = [float(scores.get(item, 0.0)) for item in prediction[:k]]
        ideal = sorted(scores.values(), reverse=True)[:k]

    def dcg(values: Sequence[float]) -> float:
        return float(sum(value / math.log2(rank + 2) for rank, value in enumerate(values)))

    best = dcg(ideal) if ideal else 1.0
    return dcg(gains) / best if best > 0 else 0.0


def set_metric(ranked: Sequence[Sequence[str]], labels: Sequence[Sequence[str]],
               relevance: Sequence[Sequence[float] | None], metric: str) -> float:
    """``hit@K`` or ``ndcg_linear@K`` averaged over the queries, as a percentage."""
    name, _, k_text = metric.partition("@")
    k = int(k_text)
    if name == "hit":
        values = [hit_at_k(p, y, k) for p, y in zip(ranked, labels, strict=True)]
    elif name == "ndcg_linear":
        values = [ndcg_at_k(p, y, k, r) for p, y, r in zip(ranked, labels, relevance, strict=True)]
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return 100.0 * float(np.mean(values))


def set_embeddings(model: Any, dataset: V2Set, batch_size: int = 16,
                   show_progress_bar: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Query and pool embeddings of one set, each distinct input encoded once."""
    from unime.evaluation.encoding import deduplicate, encode_checked

    items = [*dataset.queries, *dataset.candidates.values()]
    unique, inverse = deduplicate(items)
    with video_frames(model, dataset.frames):
        embeddings = encode_checked(model, unique, batch_size, show_progress_bar)[inverse]
    n = len(dataset.queries)
    return embeddings[:n], embeddings[n:]


def score_set(model: Any, dataset: V2Set, batch_size: int = 16, show_progress_bar: bool = False) -> float:
    """The set's metric (:attr:`V2Set.metric`, a percentage) for ``model``."""
    queries, pool = set_embeddings(model, dataset, batch_size, show_progress_bar)
    ranked = rank_names(queries, list(dataset.candidates), pool, dataset.local)
    return set_metric(ranked, dataset.labels, dataset.relevance, dataset.metric)


# --------------------------------------------------------------------------- protocol


def _unime_model(model: Any) -> Any:
    from unime.evaluation.mmeb import _unime_model as unwrap

    return unwrap(model)


@contextlib.contextmanager
def video_frames(model: Any, frames: int | None) -> Iterator[None]:
    """The model's ``video_frames`` set to ``frames`` while the block runs (a set's ``num_frames``)."""
    target = _unime_model(model)
    if frames is None or target is None or target.unime_config.video_frames == frames:
        yield
        return
    saved = target.unime_config.video_frames
    target.update_config(video_frames=frames)
    try:
        yield
    finally:
        target.update_config(video_frames=saved)


@dataclass(frozen=True)
class SmallImageResize:
    """VLM2Vec-V2's Qwen2-VL rule: an image with a side under ``side`` px is resized to ``size`` x
    ``size``; any other image is left to the processor."""

    side: int = SMALL_IMAGE_SIDE
    size: int = SMALL_IMAGE_RESIZE

    def __call__(self, image: Any) -> Any:
        if image.size[0] < self.side or image.size[1] < self.side:
            return image.resize((self.size, self.size))
        return image

    def describe(self) -> str:
        return f"{self.size}x{self.size} when a side is under {self.side} px"


def v2_input_format(family: str) -> Any:
    """VLM2Vec-V2's ``eval.py`` inputs for a backbone family: the raw text (no chat template), no
    resize by resolution (its default ``image_resolution`` is unset: the processor sizes each image),
    the small-image rule of :class:`SmallImageResize`, no truncation (``max_len`` unset), padding on
    the tokenizer's side, image files read as stored."""
    from unime.formats import InputFormat

    return InputFormat(style="raw", image_resize=SmallImageResize(), max_length=None, padding_side="tokenizer",
                       sequential_positions=family in ("qwen2_vl", "qwen2_5_vl"), exif_orientation=False)


def describe_protocol(model: Any = None) -> dict[str, Any]:
    """A JSON record of how the sets are rendered and scored, for the report and the cache identity."""
    record: dict[str, Any] = {
        "name": "vlm2vec-v2",
        "ranking": "numpy.argsort(-dot(query, candidates)) on the embeddings as returned",
        "metrics": dict(GROUP_METRIC),
        "instruction_placement": "instruction, space, text; a video or image token and a space in front",
        "image_resolution": "none (the processor's own pixel bounds); sides under 28 px resized to 56x56",
        "frames": "natural name order, numpy.linspace(0, n - 1, num_frames, dtype=int); num_frames per set",
        "candidate_pools": "global: every candidate name of the set (rows first, then corpus); local: the row's",
    }
    target = _unime_model(model)
    if target is not None:
        family = target.backbone.family
        record["family"] = family
        record["input_format"] = v2_input_format(family).describe()
    return record


@contextlib.contextmanager
def using_v2_protocol(model: Any) -> Iterator[None]:
    """Render inputs in :func:`v2_input_format` while the block runs (a unime model; others as they are)."""
    from unime.evaluation.mmeb import vlm2vec_buffers

    target = _unime_model(model)
    if target is None:
        yield
        return
    with target.using_format(v2_input_format(target.backbone.family)), vlm2vec_buffers(target):
        yield


# --------------------------------------------------------------------------- summary


def summarize(scores: Mapping[str, float], groups: Mapping[str, str]) -> dict[str, float]:
    """Per-set keys ``mmeb_v2/<group>/<set>/<metric>`` plus each group's mean over the sets present
    (``mmeb_v2/<group>/mean``) and the mean over all sets present (``mmeb_v2/all/mean``)."""
    metrics: dict[str, float] = {}
    means: dict[str, list[float]] = {}
    for name, value in scores.items():
        group = groups[name]
        metrics[f"mmeb_v2/{group}/{name}/{GROUP_METRIC[group]}"] = float(value)
        means.setdefault(group, []).append(float(value))
    for group in GROUPS:
        if group in means:
            metrics[f"mmeb_v2/{group}/mean"] = float(np.mean(means[group]))
    if means:
        metrics["mmeb_v2/all/mean"] = float(np.mean([v for values in means.values() for v in values]))
    return metrics


def table_markdown(scores: Mapping[str, float], groups: Mapping[str, str],
                   not_run: Mapping[str, str] | None = None) -> str:
    """The 78-set table (group, set, metric, score; ``-`` where not run) with the three group means."""
    not_run = dict(not_run or {})
    lines = ["| group | set | metric | score |", "| --- | --- | --- | --- |"]
    listed = set()
    for group in GROUPS:
        names = list(MMEB_V2_SETS[group]) + sorted(n for n, g in groups.items()
                                                   if g == group and n not in MMEB_V2_SETS[group])
        for name in names:
            listed.add(name)
            value = f"{scores[name]:.2f}" if name in scores else ("not run: " + not_run[name] if name in not_run
                                                                   else "-")
            lines.append(f"| {group} | {name} | {GROUP_METRIC[group]} | {value} |")
    lines.append("")
    lines.append("| group | sets scored | mean |")
    lines.append("| --- | --- | --- |")
    summary = summarize(scores, groups)
    for group in GROUPS:
        count = sum(1 for name in scores if groups[name] == group)
        key = f"mmeb_v2/{group}/mean"
        lines.append(f"| {group} | {count}/{len(MMEB_V2_SETS[group])} | "
                     f"{summary[key]:.2f} |" if key in summary else f"| {group} | 0/{len(MMEB_V2_SETS[group])} | - |")
    if "mmeb_v2/all/mean" in summary:
        lines.append(f"| all | {len(scores)}/78 | {summary['mmeb_v2/all/mean']:.2f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- resumable runs


def set_fingerprint(identity: str, dataset: V2Set, config: SetConfig) -> str:
    """Identifies (model and protocol, the set's entry, its inputs, labels and relevance): a stored
    score is reused only when all match."""
    blob = json.dumps({
        "model": identity,
        "entry": {key: str(value) for key, value in sorted(config.options.items())},
        "queries": [input_key(item) for item in dataset.queries],
        "candidates": [[name, input_key(item)] for name, item in dataset.candidates.items()],
        "labels": dataset.labels, "relevance": dataset.relevance, "local": dataset.local,
    }, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


@dataclass
class V2Run:
    """What :func:`run_mmeb_v2` found: scores by set, each set's group, the sets not run and why, notes."""

    scores: dict[str, float] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return summarize(self.scores, self.groups)


def select_sets(configs: Sequence[SetConfig], names: Sequence[str] | None) -> list[SetConfig]:
    """``names`` (each must be an entry of the configs) or every entry; a name twice is an error."""
    by_name: dict[str, SetConfig] = {}
    for config in configs:
        if config.name in by_name:
            raise ValueError(f"{config.where()}: set '{config.name}' is also in {by_name[config.name].source}")
        by_name[config.name] = config
    if not names:
        return list(by_name.values())
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"--sets: {', '.join(unknown)} not in the configs (entries: {', '.join(by_name)})")
    return [by_name[name] for name in names]


def run_mmeb_v2(
    model: Any,
    configs: Sequence[SetConfig],
    layout: Layout,
    cache_dir: str | os.PathLike[str],
    *,
    model_id: str = "",
    batch_size: int = 16,
    chunk_size: int = 1024,
    overwrite: bool = False,
    show_progress_bar: bool = False,
) -> V2Run:
    """Evaluate ``model`` on the sets of ``configs``, resumable: each set's embeddings are cached in
    ``<cache_dir>/<set>/`` (chunk by chunk, :class:`~unime.evaluation.encoding.CachedEncoder`) and its
    score in ``<cache_dir>/<set>/result.json`` once known; a second run reuses both. Under ``torchrun``
    every rank encodes its shard of each chunk and only rank 0 writes. Sets of parsers unime does not
    read are listed in :attr:`V2Run.not_run`."""
    import shutil

    from unime.evaluation.encoding import CachedEncoder, is_main_process
    from unime.evaluation.runner import RESULT_FILE, _barrier, cache_identity
    from unime.io.integrity import write_json_atomic

    cache_dir = Path(cache_dir)
    identity = f"{cache_identity(model_id, None, model)} {json.dumps(describe_protocol(model), sort_keys=True)}"
    run = V2Run()
    for config in configs:
        run.groups[config.name] = config.group
        if not config.supported:
            run.not_run[config.name] = f"dataset_parser '{config.parser}' not read by unime"
            logger.warning("MMEB-V2 %s: %s", config.name, run.not_run[config.name])
            continue
        store = cache_dir / config.name
        if overwrite and store.exists() and is_main_process():
            shutil.rmtree(store)
        _barrier()
        dataset = load_set(config, layout)
        set_identity = f"{identity} frames={dataset.frames}"
        fingerprint = set_fingerprint(set_identity, dataset, config)
        result = store / RESULT_FILE
        if result.is_file():
            stored = json.loads(result.read_text(encoding="utf-8"))
            if stored.get("fingerprint") == fingerprint:
                run.scores[config.name] = float(stored["score"])
                run.notes[config.name] = stored.get("notes", {})
                logger.info("MMEB-V2 %s: %s %.2f (from %s)", config.name, dataset.metric, run.scores[config.name],
                            store)
                continue
        encoder = CachedEncoder(model, store, model_id=set_identity, chunk_size=chunk_size)
        with using_v2_protocol(model):
            run.scores[config.name] = score_set(encoder, dataset, batch_size, show_progress_bar)
        notes = {"queries": len(dataset.queries), "candidates": len(dataset.candidates),
                 "eval_type": config.eval_type, "frames": dataset.frames, **dataset.notes}
        run.notes[config.name] = notes
        logger.info("MMEB-V2 %s: %s %.2f (%d queries, %d candidates, %d inputs encoded here)", config.name,
                    dataset.metric, run.scores[config.name], len(dataset.queries), len(dataset.candidates),
                    encoder.encoded)
        if is_main_process():
            store.mkdir(parents=True, exist_ok=True)
            write_json_atomic(result, {"set": config.name, "group": config.group, "metric": dataset.metric,
                                       "score": run.scores[config.name], "fingerprint": fingerprint,
                                       "notes": notes})
    return run


def metrics_table(metrics: Mapping[str, float | None]) -> str:
    """:func:`table_markdown` from the flat metrics of a result file (``mmeb_v2/<group>/<set>/<metric>``)."""
    scores: dict[str, float] = {}
    groups: dict[str, str] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "mmeb_v2" and parts[1] in GROUPS and value is not None:
            scores[parts[2]], groups[parts[2]] = float(value), parts[1]
    return table_markdown(scores, groups)
