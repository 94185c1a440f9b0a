"""Resumable MMEB runs: per-dataset results and embeddings cached beside the report.

The pure evaluator (:func:`unime.evaluation.mmeb.score_mmeb_dataset`) knows nothing of files. This
module wraps the model in a :class:`~unime.evaluation.encoding.CachedEncoder` per dataset (its
embeddings land in ``<cache>/<dataset>/chunk-*.safetensors``), stores each dataset's score in
``<cache>/<dataset>/result.json`` once it is known, and on a second run skips finished datasets and
re-encodes nothing already cached. Under ``torchrun`` every rank runs this code; encoding is
sharded by the wrapper and only rank 0 writes.

A protocol (:class:`~unime.evaluation.mmeb.MMEBProtocol`) changes the embeddings, so it is part
of the cache's model identity: a run in another protocol never reuses them. ``save_scores``
writes each dataset's cosine scores as ``<dir>/<dataset>.npy``. :func:`run_mmeb_dimensions` scores
several Matryoshka sizes from one set of full-size embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unime.evaluation.encoding import (
    CachedEncoder,
    deduplicate,
    distributed_world,
    encode_checked,
    is_main_process,
)
from unime.evaluation.mmeb import (
    MMEBProtocol,
    candidate_scores,
    discover_mmeb,
    load_mmeb_dataset,
    mmeb_dataset_scores,
    precision_from_scores,
    summarize_mmeb,
    using_protocol,
)
from unime.io.integrity import CorruptFileError, atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"


# Files whose change means another model: weights and every setting that changes an embedding.
_MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".model", ".txt", ".jinja")


def model_identity(model: str) -> str:
    """How a cache names a model: a hub id as given; a local folder by its absolute path plus a
    digest of the sizes and modification times of its weight and configuration files, so the same
    folder typed as a relative or an absolute path is one model, and a model retrained into the same
    folder is another (its cached scores and embeddings are not reused)."""
    folder = Path(model)
    if not folder.is_dir():
        return model
    # The folder's own files and those of its sentence-transformers module folders (1_Pooling, ...),
    # not training checkpoints or caches kept beside the model.
    files = [path for path in folder.iterdir() if path.is_file()]
    files += [path for sub in folder.iterdir() if sub.is_dir() and sub.name[:1].isdigit()
              for path in sub.iterdir() if path.is_file()]
    entries = sorted((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
                     for path in files if path.suffix in _MODEL_FILE_SUFFIXES)
    digest = hashlib.sha1(json.dumps(entries).encode("utf-8")).hexdigest()[:12]
    return f"{folder.resolve()}@{digest}"


def _fingerprint(model_id: str, folder: Path, image_dir: Path) -> str:
    """Identifies (model, dataset files, image root): a stored score is reused only if all match."""
    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.parquet"))]
    blob = json.dumps({"model": model_id, "images": str(image_dir.resolve()), "files": files})
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def _barrier() -> None:
    # Every rank must decide "cached or not" from the same files, before rank 0 writes new ones.
    if distributed_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def _cached_score(path: Path, fingerprint: str) -> float | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        float(stored["precision@1"])
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptFileError(path, f"not a readable result ({error})",
                               "delete it (or pass --overwrite) to score the dataset again") from None
    if stored.get("fingerprint") != fingerprint:
        logger.info("%s is stale (other model or data): scoring again", path)
        return None
    return float(stored["precision@1"])


def cache_identity(model_id: str, protocol: MMEBProtocol | None, model: Any = None) -> str:
    """The identity cached embeddings are keyed by: the model and its truncated size (``dimensions``),
    plus what of the protocol changes an embedding (its name and resolved input format; not the tie
    rule, which only scoring reads)."""
    dimensions = getattr(model, "dimensions", None)
    if isinstance(dimensions, int):
        model_id = f"{model_id} dimensions={dimensions}"
    if protocol is None:
        return model_id
    record = {key: value for key, value in protocol.describe(model).items() if key != "ties"}
    return f"{model_id} {json.dumps(record, sort_keys=True)}"


def save_score_matrix(folder: str | os.PathLike[str], name: str, scores: Any) -> Path:
    """Write one dataset's :func:`~unime.evaluation.mmeb.candidate_scores` as ``folder/name.npy``."""
    import numpy as np

    path = Path(folder) / f"{name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial, open(partial, "wb") as handle:
        np.save(handle, np.asarray(scores, dtype=np.float32))
    return path


def run_mmeb(
    model: Any,
    data_dir: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    model_id: str = "",
    batch_size: int = 32,
    chunk_size: int = 1024,
    overwrite: bool = False,
    show_progress_bar: bool = False,
    groups: dict[str, tuple[str, str]] | None = None,
    protocol: MMEBProtocol | None = None,
    save_scores: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on MMEB datasets with resumption; returns :func:`summarize_mmeb` metrics
    (``groups`` replaces the paper's dataset split in the aggregates).

    ``model_id`` names the model in the cache (``unime eval mmeb`` passes :func:`model_identity` of
    its ``--model``); ``overwrite`` drops the cache of every selected dataset first. ``protocol``
    (None: the model's current input format, ``strict`` ties) renders the inputs and scores ties;
    it joins the cache's model identity. ``save_scores``: write ``<dir>/<dataset>.npy``, float32
    [queries, candidates] cosine scores (a dataset with a stored score is scored again from its
    cached embeddings, without encoding).
    """
    data_dir, image_dir, cache_dir = Path(data_dir), Path(image_dir), Path(cache_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"MMEB image folder {image_dir} does not exist (--image-dir)")
    identity = cache_identity(model_id, protocol, model)
    ties = protocol.tie_rule if protocol is not None else "strict"
    scores: dict[str, float] = {}
    for name in discover_mmeb(data_dir, names):
        folder, store = data_dir / name, cache_dir / name
        if overwrite and store.exists() and is_main_process():
            shutil.rmtree(store)
        _barrier()
        fingerprint = _fingerprint(f"{identity} ties={ties}", folder, image_dir)
        cached = _cached_score(store / RESULT_FILE, fingerprint)
        if cached is not None and save_scores is None:
            scores[name] = cached
            logger.info("MMEB %s: precision@1 %.2f (from %s)", name, cached, store)
            continue
        dataset = load_mmeb_dataset(folder, image_dir, name)
        encoder = CachedEncoder(model, store, model_id=identity, chunk_size=chunk_size)
        with using_protocol(model, protocol):
            matrix = mmeb_dataset_scores(encoder, dataset, batch_size, show_progress_bar)
        scores[name] = precision_from_scores(matrix, ties)
        logger.info(
            "MMEB %s: precision@1 %.2f (%d queries, %d distinct candidates, %d inputs encoded here)",
            name,
            scores[name],
            len(dataset.queries),
            len(dataset.pool),
            encoder.encoded,
        )
        if is_main_process():
            if save_scores is not None:
                save_score_matrix(save_scores, name, matrix)
            record = {"dataset": name, "precision@1": scores[name], "fingerprint": fingerprint,
                      "protocol": protocol.describe(model) if protocol is not None else None}
            store.mkdir(parents=True, exist_ok=True)
            write_json_atomic(store / RESULT_FILE, record)
    return summarize_mmeb(scores, groups)


def run_mmeb_dimensions(
    model: Any,
    data_dir: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    dimensions: Sequence[int],
    *,
    names: Sequence[str] | None = None,
    model_id: str = "",
    batch_size: int = 32,
    chunk_size: int = 1024,
    overwrite: bool = False,
    show_progress_bar: bool = False,
    groups: dict[str, tuple[str, str]] | None = None,
    protocol: MMEBProtocol | None = None,
) -> dict[str, float]:
    """:func:`run_mmeb` at each of the Matryoshka sizes ``dimensions``: every input is embedded once at
    the model's full size (cached as a full-size run caches it) and each size's scores come from the
    first N values of those embeddings, L2-normalised again, as the model set to N returns them.
    Returns ``mmeb/dimensions/<N>/...``: each size's :func:`summarize_mmeb` metrics."""
    from unime.evaluation.retrieval import truncated_rows

    if getattr(model, "dimensions", None) is not None:
        raise ValueError(f"the model is set to {model.dimensions} dimensions: a table over sizes starts from the "
                         "full size")
    data_dir, image_dir, cache_dir = Path(data_dir), Path(image_dir), Path(cache_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"MMEB image folder {image_dir} does not exist (--image-dir)")
    identity = cache_identity(model_id, protocol, model)
    ties = protocol.tie_rule if protocol is not None else "strict"
    scores: dict[int, dict[str, float]] = {size: {} for size in dimensions}
    for name in discover_mmeb(data_dir, names):
        store = cache_dir / name
        if overwrite and store.exists() and is_main_process():
            shutil.rmtree(store)
        _barrier()
        dataset = load_mmeb_dataset(data_dir / name, image_dir, name)
        encoder = CachedEncoder(model, store, model_id=identity, chunk_size=chunk_size)
        unique, inverse = deduplicate([*dataset.queries, *dataset.pool])
        with using_protocol(model, protocol):
            embeddings = encode_checked(encoder, unique, batch_size, show_progress_bar)
        n = len(dataset.queries)
        for size in dimensions:
            cut = truncated_rows(embeddings, size)
            scores[size][name] = precision_from_scores(
                candidate_scores(cut[inverse[:n]], cut[inverse[n:]], dataset.targets), ties)
        logger.info("MMEB %s: precision@1 %s at sizes %s", name,
                    ", ".join(f"{scores[size][name]:.2f}" for size in dimensions), ", ".join(map(str, dimensions)))
    return {key.replace("mmeb/", f"mmeb/dimensions/{size}/", 1): value
            for size in dimensions for key, value in summarize_mmeb(scores[size], groups).items()}
