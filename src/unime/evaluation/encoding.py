"""Encoding for evaluation: each unique input once, optionally persisted and shared across ranks.

Benchmarks repeat inputs heavily: every MMEB classification query carries the same label set, a
retrieval image has five captions pointing at it, SugarCrepe reuses its COCO images across splits.
:func:`encode_unique` embeds each distinct input once and scatters the rows back.

:class:`CachedEncoder` wraps a model with the same ``encode`` contract and adds two things the
command line needs on long runs: embeddings are written chunk by chunk to ``safetensors`` files so
an interrupted run resumes where it stopped, and under ``torchrun`` each rank encodes its shard of
every chunk and the rows are exchanged with ``all_gather``, so N processes encode N times faster
and all of them end up with every embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unime.environment import all_gather_rows, rank_and_world_size
from unime.evaluation.common import EvalInput, input_key
from unime.io.integrity import CorruptFileError, atomic_path, check_file, file_entry, write_json_atomic

logger = logging.getLogger(__name__)

_MANIFEST = "manifest.json"


def encode_checked(
    model: Any, items: Sequence[EvalInput], batch_size: int, show_progress_bar: bool
) -> np.ndarray:
    """Call ``model.encode`` and check the result is a finite float32 ``[len(items), d]`` matrix."""
    if not items:
        raise ValueError("nothing to encode")
    embeddings = model.encode(list(items), batch_size=batch_size, show_progress_bar=show_progress_bar)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(items):
        raise ValueError(
            f"model.encode returned shape {embeddings.shape} for {len(items)} inputs; expected [n, d]"
        )
    if not np.isfinite(embeddings).all():
        raise ValueError("model.encode returned non-finite values")
    return embeddings


def deduplicate(items: Sequence[EvalInput]) -> tuple[list[EvalInput], np.ndarray]:
    """Return the distinct inputs in first-seen order and, per item, the row of its distinct input."""
    rows: dict[str, int] = {}
    unique: list[EvalInput] = []
    inverse = np.empty(len(items), dtype=np.int64)
    for position, item in enumerate(items):
        key = input_key(item)
        row = rows.get(key)
        if row is None:
            row = rows[key] = len(unique)
            unique.append(item)
        inverse[position] = row
    return unique, inverse


def encode_unique(
    model: Any, items: Sequence[EvalInput], batch_size: int = 32, show_progress_bar: bool = False
) -> np.ndarray:
    """Embed ``items`` ([n, d] rows in order), running the model once per distinct input."""
    unique, inverse = deduplicate(items)
    return encode_checked(model, unique, batch_size, show_progress_bar)[inverse]


def _digest(item: EvalInput) -> bytes:
    return hashlib.sha1(input_key(item).encode("utf-8")).digest()


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised torch.distributed group, else ``(0, 1)``: the ranks
    the encoding is shared with, so never the launcher's variables alone (there is no group to exchange
    with before it is initialised)."""
    return rank_and_world_size(environment=False)


def is_main_process() -> bool:
    """True on rank 0 (or without torch.distributed): the one process that writes files."""
    return distributed_world()[0] == 0


class CachedEncoder:
    """A model wrapper that persists embeddings per input and shares the encoding across ranks.

    Args:
        model: anything with the contract's ``encode(inputs, batch_size=, show_progress_bar=)``.
        cache_dir: folder for ``chunk-*.safetensors`` files (``keys``: sha1 of each input's
            canonical key, ``embeddings``: its row); None keeps everything in memory.
        model_id: written to the folder's manifest; a cache written for another model is refused
            rather than silently mixed. The manifest also records each chunk's size and SHA-256 once
            it is renamed into place: a chunk that does not match is named (``CorruptFileError``),
            never read; one not recorded (a kill between its rename and its record) is encoded again.
        distributed: shard each chunk over the torch.distributed ranks; None means "if a process
            group with more than one rank is initialised".
        chunk_size: inputs per chunk: the unit of resumption and of the exchange between ranks.

    Inputs must be strings or dicts of strings (image PATHS), so that they can be keyed.
    """

    def __init__(
        self,
        model: Any,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        model_id: str = "",
        distributed: bool | None = None,
        chunk_size: int = 1024,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.model_id = model_id
        self.distributed = distributed_world()[1] > 1 if distributed is None else distributed
        self.chunk_size = chunk_size
        self.encoded = 0  # inputs this process sent to the model itself, for logs and tests
        self._chunks: list[np.ndarray] = []
        self._where: dict[bytes, tuple[int, int]] = {}
        self._files: dict[str, Any] | None = {}  # chunk file -> size and SHA-256, as in the manifest
        self._next_file = 0  # number of the next chunk file written
        if self.cache_dir is not None:
            self._open_cache()

    def _open_cache(self) -> None:
        from safetensors.numpy import load_file

        assert self.cache_dir is not None
        manifest_path = self.cache_dir / _MANIFEST
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except ValueError as error:
                raise CorruptFileError(manifest_path, f"not valid JSON ({error})",
                                       "delete the folder (or pass --overwrite) to encode again") from None
            if manifest.get("model_id") != self.model_id:
                raise ValueError(
                    f"{self.cache_dir}: cached embeddings belong to model '{manifest.get('model_id')}', "
                    f"not '{self.model_id}'; choose another output folder or start afresh (--overwrite)"
                )
            # None: a cache written before chunks were recorded, read unverified.
            self._files = manifest.get("chunks")
            if self._files is None:
                logger.warning("%s records no chunk digests (written by an older unime): its chunks cannot "
                               "be verified", self.cache_dir)
        advice = "delete it (or pass --overwrite) to encode its inputs again"
        for name in sorted(self._files or {}):
            if not (self.cache_dir / name).is_file():
                logger.warning("%s: recorded in the manifest but deleted; its inputs are encoded again",
                               self.cache_dir / name)
                del self._files[name]
        for path in sorted(self.cache_dir.glob("chunk-*.safetensors")):
            if self._files is not None:
                if path.name not in self._files:
                    # Renamed into place, then killed before being recorded: encoded again.
                    logger.info("%s: not recorded in the manifest, encoding its inputs again", path)
                    continue
                check_file(path, self._files[path.name], advice)
            try:
                tensors = load_file(str(path))
                keys, embeddings = tensors["keys"], tensors["embeddings"]
            except Exception as error:  # safetensors raises its own error types for damaged headers
                raise CorruptFileError(path, f"not a readable embedding chunk ({error})", advice) from None
            if keys.ndim != 2 or keys.shape[1] != 20 or embeddings.ndim != 2 or len(keys) != len(embeddings):
                raise CorruptFileError(path, f"keys {keys.shape} and embeddings {embeddings.shape} do not match",
                                       advice)
            self._add_chunk(keys, embeddings)
            self._next_file = max(self._next_file, int(path.stem.split("-")[-1]) + 1)
        if self._chunks:
            logger.info("%s: %d cached embeddings", self.cache_dir, len(self._where))

    def _add_chunk(self, keys: np.ndarray, embeddings: np.ndarray) -> None:
        number = len(self._chunks)
        self._chunks.append(embeddings)
        for row, key in enumerate(keys):
            self._where[key.tobytes()] = (number, row)

    def _save_chunk(self, keys: np.ndarray, embeddings: np.ndarray) -> None:
        from safetensors.numpy import save_file

        assert self.cache_dir is not None
        if not is_main_process():
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # After the last chunk read: a chunk deleted from the middle never makes a later one overwritten.
        target = self.cache_dir / f"chunk-{self._next_file:05d}.safetensors"
        self._next_file += 1
        # Write then rename, so an interruption never leaves a truncated chunk behind; then record its
        # digest in the manifest (renamed into place too), so a chunk damaged later is named, not read.
        with atomic_path(target) as partial:
            save_file({"keys": keys, "embeddings": embeddings}, str(partial))
        if self._files is None:  # an older cache: its chunks are recorded as they are now
            self._files = {path.name: file_entry(path) for path in sorted(self.cache_dir.glob("chunk-*.safetensors"))
                           if path != target}
        self._files[target.name] = file_entry(target)
        write_json_atomic(self.cache_dir / _MANIFEST, {"model_id": self.model_id, "chunks": self._files})

    def _encode_shared(self, items: list[EvalInput], batch_size: int, show_progress_bar: bool) -> np.ndarray:
        """Embed ``items`` on this rank alone, or each rank its contiguous shard, then exchange."""
        if not self.distributed:
            self.encoded += len(items)
            return encode_checked(self.model, items, batch_size, show_progress_bar)
        rank, world = distributed_world()
        per_rank = math.ceil(len(items) / world)
        mine = items[rank * per_rank : (rank + 1) * per_rank]
        local = encode_checked(self.model, mine, batch_size, show_progress_bar) if mine else np.zeros((0, 0))
        self.encoded += len(mine)
        return all_gather_rows(local, len(items), per_rank)

    def encode(
        self, inputs: Sequence[EvalInput], batch_size: int = 32, show_progress_bar: bool = False, **_: Any
    ) -> np.ndarray:
        """Embed ``inputs`` ([n, d] rows in order), reusing cached rows and encoding the rest."""
        digests = [_digest(item) for item in inputs]
        missing: dict[bytes, EvalInput] = {}
        for digest, item in zip(digests, inputs, strict=True):
            if digest not in self._where and digest not in missing:
                missing[digest] = item
        pending_keys = list(missing)
        for start in range(0, len(pending_keys), self.chunk_size):
            chunk_keys = pending_keys[start : start + self.chunk_size]
            chunk_items = [missing[key] for key in chunk_keys]
            embeddings = self._encode_shared(chunk_items, batch_size, show_progress_bar)
            keys = np.frombuffer(b"".join(chunk_keys), dtype=np.uint8).reshape(len(chunk_keys), 20)
            self._add_chunk(keys, embeddings)
            if self.cache_dir is not None:
                self._save_chunk(keys, embeddings)
            logger.debug("encoded %d/%d new inputs", start + len(chunk_keys), len(pending_keys))
        if not digests:
            raise ValueError("nothing to encode")
        return np.stack([self._chunks[c][r] for c, r in (self._where[d] for d in digests)])
