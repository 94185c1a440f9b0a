"""A search index over embedded texts and photos: FAISS vectors with their items beside them.

An index is a folder::

    index.faiss      the vectors (FAISS's own file format; inner product, the embeddings are unit rows)
    items.jsonl      one line per vector, in vector order: id, kind, text, image, instruction, meta
    manifest.json    written last: model, sizes, index type and parameters, each file's size and SHA-256

:func:`build_index` writes the folder under a staging name beside the target and renames it into
place when complete, so a reader sees a whole index or none; :func:`open_index` checks the manifest
and both files against it (size, SHA-256, vector count, width) and names the file that does not match.

Three index types (``kind``): ``flat`` (exact inner product, every vector compared), ``hnsw`` (a
graph, approximate, no training) and ``ivf`` (inverted lists over k-means cells, approximate, trained
on the vectors). ``auto`` takes ``flat`` below :data:`AUTO_EXACT_LIMIT` vectors and ``hnsw`` from
there: the figures behind that size are in docs/performance.md ("Index and search").
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unime.io.integrity import check_file, file_entry, write_json_atomic

FORMAT = "unime-index"
VERSION = 1
KINDS = ("auto", "flat", "hnsw", "ivf")
TARGETS = ("all", "images", "texts")
# Below this many vectors ``auto`` builds an exact index: an exact search of 100,000 vectors of 576
# values answers one query in a few milliseconds on 2 CPU cores (docs/performance.md), faster than a
# user notices, and an approximate index only pays for itself past that.
AUTO_EXACT_LIMIT = 200_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
IVF_NPROBE = 16
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_ROW_KEYS = frozenset({"id", "text", "image", "instruction", "meta"})


class IndexFileError(ValueError):
    """An index folder that cannot be used: the message names the file and what is wrong."""


def _faiss() -> Any:
    import logging

    # FAISS's loader logs each CPU-specific build it could not load before the one it does (at INFO).
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "the index needs FAISS: pip install 'unime[index]' (the faiss-cpu package)"
        ) from None
    return faiss


@dataclass(frozen=True)
class Item:
    """One indexed entry: what was embedded, under a caller's id, with free-form metadata."""

    id: str
    text: str | None = None
    image: str | None = None
    instruction: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.image is not None and self.text is not None:
            return "image+text"
        return "image" if self.image is not None else "text"

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "kind": self.kind}
        for key in ("text", "image", "instruction"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        if self.meta:
            row["meta"] = self.meta
        return row

    def embed_input(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ("text", "image", "instruction") if getattr(self, key) is not None}


def read_items(path: str | os.PathLike[str]) -> list[Item]:
    """Rows ``{"id", "text", "image", "instruction", "meta"}`` of a JSON Lines file, every one checked
    before any model work: an unknown key, a row with neither text nor image, a missing image file or
    a repeated id is an error naming the file and line. Image paths are relative to the file's folder;
    a row without an id gets its line number."""
    from unime.io.jsonl import iter_jsonl, text_lines

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: file not found")
    items: list[Item] = []
    for number, row, error in iter_jsonl(text_lines(path)):
        where = f"{path} line {number}"
        if error is not None:
            raise ValueError(f"{where}: not valid JSON ({error})")
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with text / image / instruction / id / meta")
        unknown = set(row) - _ROW_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_ROW_KEYS)} "
                             "(put anything else under 'meta')")
        for key in ("text", "image", "instruction"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise ValueError(f"{where}: '{key}' must be a string, got {type(row[key]).__name__}")
        text = row.get("text") or None
        image = row.get("image") or None
        if text is None and image is None:
            raise ValueError(f"{where}: a row needs a 'text' or an 'image'")
        if image is not None:
            resolved = Path(image) if Path(image).is_absolute() else path.parent / image
            if not resolved.is_file():
                raise FileNotFoundError(f"{where}: image file not found: {resolved}")
            image = str(resolved.resolve())
        meta = row.get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError(f"{where}: 'meta' must be an object, got {type(meta).__name__}")
        identifier = row.get("id", str(number))
        if not isinstance(identifier, (str, int)) or isinstance(identifier, bool):
            raise ValueError(f"{where}: 'id' must be a string or an integer, got {type(identifier).__name__}")
        items.append(Item(str(identifier), text, image, row.get("instruction"), meta))
    if not items:
        raise ValueError(f"{path}: no rows to index")
    return items


def folder_items(folder: str | os.PathLike[str]) -> list[Item]:
    """Every image file under ``folder`` (recursively, sorted), with its path relative to the folder as id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder}: not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [Item(p.relative_to(folder).as_posix(), image=str(p.resolve())) for p in paths]


def bulk_items(folder: str | os.PathLike[str]) -> tuple[list[Item], np.ndarray, dict[str, Any]]:
    """The items, vectors and manifest of a finished bulk job (``unime encode --engine``): the rows come
    from the input file its manifest names, which must be unchanged since the job read it."""
    from unime.bulk import read_embeddings, read_input_rows
    from unime.io.integrity import check_file
    from unime.io.jsonl import read_json

    folder = Path(folder)
    ids, vectors = read_embeddings(folder)
    manifest = read_json(folder / "manifest.json")
    source = Path(manifest["input"]["path"])
    check_file(source, manifest["input"], f"it changed after {folder} was embedded from it; embed it again")
    rows = read_input_rows(source)
    if [str(i) for i in rows.ids] != [str(i) for i in ids]:
        raise ValueError(f"{folder}: its ids differ from the rows of {source}")
    items = []
    for identifier, row in zip(ids, rows.inputs, strict=True):
        image = str(Path(row.image).resolve()) if isinstance(row.image, (str, os.PathLike)) else None
        items.append(Item(str(identifier), text=row.text, image=image, instruction=row.instruction))
    return items, vectors, manifest


def check_unique_ids(items: Sequence[Item]) -> None:
    seen: dict[str, int] = {}
    for position, item in enumerate(items):
        if item.id in seen:
            raise ValueError(f"id {item.id!r} appears twice (items {seen[item.id] + 1} and {position + 1}); "
                             "ids must be unique")
        seen[item.id] = position


def choose_kind(kind: str, count: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "auto":
        return "flat" if count < AUTO_EXACT_LIMIT else "hnsw"
    return kind


def make_faiss_index(vectors: np.ndarray, kind: str, *, nlist: int | None = None) -> tuple[Any, dict[str, Any]]:
    """A FAISS inner-product index of type ``kind`` holding ``vectors`` (rows in order, ids 0..n-1),
    with the parameters to record."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, width = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(width)
        params: dict[str, Any] = {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(width, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
    elif kind == "ivf":
        # About 4 sqrt(n) cells, each trained from at least 39 vectors (FAISS warns below that).
        nlist = nlist or max(1, min(int(4 * math.sqrt(count)), count // 39))
        quantizer = faiss.IndexFlatIP(width)
        index = faiss.IndexIVFFlat(quantizer, width, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        params = {"nlist": nlist, "nprobe": min(IVF_NPROBE, nlist)}
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(vectors)
    return index, params


def build_index(
    model: Any,
    items: Sequence[Item],
    output: str | os.PathLike[str],
    *,
    model_name: str,
    kind: str = "auto",
    batch_size: int = 16,
    overwrite: bool = False,
    show_progress_bar: bool = True,
) -> Path:
    """Embed ``items`` with ``model`` and write the index folder ``output`` (atomically).

    ``model_name`` (a folder or hub id) is recorded in the manifest: ``unime search`` loads it to embed
    queries. A model truncated to Matryoshka ``dimensions`` is recorded as such, and queries are
    truncated alike."""
    check_unique_ids(items)
    output = Path(output)
    check_output(output, overwrite)
    kind = choose_kind(kind, len(items))
    started = time.perf_counter()
    vectors = np.asarray(
        model.encode([item.embed_input() for item in items], batch_size=batch_size,
                     show_progress_bar=show_progress_bar), dtype=np.float32)
    embed_seconds = time.perf_counter() - started
    return write_index(vectors, items, output, kind=kind, model_name=model_name, mode=_model_mode(model),
                       truncated_to=getattr(model, "dimensions", None), overwrite=overwrite,
                       embed_seconds=embed_seconds)


def write_index(
    vectors: np.ndarray,
    items: Sequence[Item],
    output: str | os.PathLike[str],
    *,
    kind: str = "auto",
    model_name: str,
    mode: str | None = None,
    truncated_to: int | None = None,
    overwrite: bool = False,
    embed_seconds: float | None = None,
) -> Path:
    """Write an index folder from vectors already computed (one unit row per item, in item order)."""
    faiss = _faiss()
    if vectors.ndim != 2 or len(vectors) != len(items):
        raise ValueError(f"{len(items)} items but vectors of shape {tuple(vectors.shape)}")
    check_unique_ids(items)
    kind = choose_kind(kind, len(items))
    output = Path(output)
    check_output(output, overwrite)
    staging = output.with_name(f".{output.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        started = time.perf_counter()
        index, params = make_faiss_index(vectors, kind)
        build_seconds = time.perf_counter() - started
        faiss.write_index(index, str(staging / "index.faiss"))
        with open(staging / "items.jsonl", "w", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
        counts: dict[str, int] = {}
        for item in items:
            counts[item.kind] = counts.get(item.kind, 0) + 1
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model": model_name,
            "mode": mode,
            "count": len(items),
            "dimensions": int(vectors.shape[1]),
            "truncated_to": truncated_to,
            "kinds": counts,
            "index": {"kind": kind, **params},
            "metric": "inner product of unit vectors (cosine)",
            "seconds": {"build": round(build_seconds, 3),
                        **({"embed": round(embed_seconds, 3)} if embed_seconds is not None else {})},
            "files": {name: file_entry(staging / name) for name in ("index.faiss", "items.jsonl")},
        }
        write_json_atomic(staging / "manifest.json", manifest)
        _replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ValueError(f"--output {output} exists and is not empty (use --overwrite)")


def _replace_folder(staging: Path, output: Path) -> None:
    """Move the finished staging folder to ``output``; an older index there is removed only after."""
    if output.exists():
        old = output.with_name(f".{output.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        output.rename(old)
        staging.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(output)


def _model_mode(model: Any) -> str | None:
    try:
        config = model.unime_config
    except AttributeError:  # a plain encoder (tests, wrappers) has no UniME configuration
        return None
    return getattr(config, "mode", None)


@dataclass(frozen=True)
class Hit:
    """One search result: the item, its rank (1 = best) and its cosine similarity to the query."""

    rank: int
    score: float
    position: int
    item: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, **self.item}


class SearchIndex:
    """An opened, checked index folder (:func:`open_index`)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], index: Any, items: list[dict[str, Any]]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.index = index
        self.items = items
        self._positions = {
            "images": np.array([i for i, item in enumerate(items) if "image" in item], dtype=np.int64),
            "texts": np.array([i for i, item in enumerate(items) if "image" not in item], dtype=np.int64),
        }

    def __len__(self) -> int:
        return len(self.items)

    @property
    def dimensions(self) -> int:
        return int(self.manifest["dimensions"])

    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    def count(self, target: str = "all") -> int:
        return len(self.items) if target == "all" else len(self._positions[target])

    def search(self, queries: np.ndarray, k: int = 10, target: str = "all",
               exclude: Iterable[int] | None = None) -> list[list[Hit]]:
        """The ``k`` best items for each query row, best first. ``target`` keeps only items with an
        image (``images``) or only texts (``texts``); ``exclude`` drops item positions (e.g. the
        query photo itself when searching image to image)."""
        faiss = _faiss()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dimensions:
            raise ValueError(
                f"the query embeddings have {queries.shape[1]} values but the index at {self.folder} holds "
                f"{self.dimensions}: embed queries with the index's model ({self.model}) at its size")
        allowed = None if target == "all" else self._positions[target]
        excluded = set(exclude or ())
        if excluded:
            base = np.arange(len(self.items), dtype=np.int64) if allowed is None else allowed
            allowed = base[~np.isin(base, np.fromiter(excluded, dtype=np.int64))]
        if allowed is not None and len(allowed) == 0:
            return [[] for _ in queries]
        k = min(k, len(self.items) if allowed is None else len(allowed))
        params = self._search_params(faiss, allowed)
        scores, positions = _search(faiss, self.index, queries, k, params)
        results = []
        for row_scores, row_positions in zip(scores, positions, strict=True):
            hits = [Hit(rank, float(score), int(position), self.items[int(position)])
                    for rank, (score, position) in enumerate(
                        ((s, p) for s, p in zip(row_scores, row_positions, strict=True) if p >= 0), start=1)]
            results.append(hits)
        return results

    def _search_params(self, faiss: Any, allowed: np.ndarray | None) -> Any:
        selector = faiss.IDSelectorBatch(allowed) if allowed is not None else None
        settings = self.manifest["index"]
        if settings["kind"] == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=int(settings.get("ef_search", HNSW_EF_SEARCH)))
        elif settings["kind"] == "ivf":
            params = faiss.SearchParametersIVF(nprobe=int(settings.get("nprobe", IVF_NPROBE)))
        elif selector is None:
            return None
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
            params._selector = selector  # keep the selector alive as long as the parameters
        return params

    def position_of(self, identifier: str) -> int:
        for position, item in enumerate(self.items):
            if item["id"] == identifier:
                return position
        raise KeyError(f"no item with id {identifier!r} in the index at {self.folder}")


# Below this many queries a search runs on one thread: FAISS's threads cost more to start than a few
# queries take (one query over 10,000 vectors: 16 ms on 2 threads, 0.8 ms on one; docs/performance.md).
FEW_QUERIES = 20


def _search(faiss: Any, index: Any, queries: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
    threads = faiss.omp_get_max_threads()
    if len(queries) >= FEW_QUERIES or threads == 1:
        return index.search(queries, k, params=params)
    # Process-wide, as OpenMP's setting is: a concurrent search may run on one thread too, never wrongly.
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k, params=params)
    finally:
        faiss.omp_set_num_threads(threads)


def open_index(folder: str | os.PathLike[str]) -> SearchIndex:
    """Open an index folder, checking the manifest and both files against each other first."""
    faiss = _faiss()
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no index folder there")
    if not manifest_path.is_file():
        raise IndexFileError(f"{manifest_path}: missing (not an index folder, or its build did not finish)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IndexFileError(f"{manifest_path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFileError(f"{manifest_path}: not a unime index manifest")
    if manifest.get("version") != VERSION:
        raise IndexFileError(f"{manifest_path}: index format version {manifest.get('version')}; "
                          f"this unime reads version {VERSION}")
    advice = "rebuild the index with unime index"
    for name in ("index.faiss", "items.jsonl"):
        entry = manifest.get("files", {}).get(name)
        if not isinstance(entry, dict):
            raise IndexFileError(f"{manifest_path}: does not list {name}")
        check_file(folder / name, entry, advice)
    index = faiss.read_index(str(folder / "index.faiss"))
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    count, width = int(manifest["count"]), int(manifest["dimensions"])
    if index.ntotal != count:
        raise IndexFileError(f"{folder / 'index.faiss'}: {index.ntotal} vectors, the manifest says {count}")
    if index.d != width:
        raise IndexFileError(f"{folder / 'index.faiss'}: vectors of {index.d} values, the manifest says {width}")
    if len(items) != count:
        raise IndexFileError(f"{folder / 'items.jsonl'}: {len(items)} items, the manifest says {count}")
    return SearchIndex(folder, manifest, index, items)
