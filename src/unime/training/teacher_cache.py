"""The stage-1 teacher cache: every training sentence embedded once by the teacher, on disk.

UniME computes the teacher embeddings offline (docs/method.md, "Stage 1 student and teacher"): the
teacher (NV-Embed-v2 in the paper, 7B parameters) would otherwise run beside the student at every step. The cache is a folder::

    manifest.json        teacher, settings, dimension, row count, SHA-256 of the data, shard list
    shard-00000.npy      float rows [shard_size, dim], L2-normalised, in sentence order
    shard-00001.npy      ...

Shards are written one by one (to a temporary file, then renamed, then recorded with their size and
SHA-256 in the manifest), so a killed run resumes with the finished shards kept. Opening a cache
checks every shard against its recorded digest: a truncated or corrupted shard is named, never read.
A cache is only used for the exact data and teacher it was built from; anything else is refused with
a message saying what differs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from unime.choices import CACHE_DTYPES
from unime.io.integrity import CorruptFileError, atomic_path, check_file, file_entry, write_json_atomic

# The teachers themselves (presets and their settings) are unime.teachers, which unime.model_names
# reads too; their names are kept here for the callers that import them from this module.
from unime.teachers import NV_EMBED_INSTRUCTION as NV_EMBED_INSTRUCTION
from unime.teachers import TeacherSpec as TeacherSpec
from unime.teachers import resolve_teacher as resolve_teacher
from unime.training.text_data import data_fingerprint

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "unime-teacher-cache"
FORMAT_VERSION = 1
DTYPES = CACHE_DTYPES


def load_teacher(spec: TeacherSpec, *, trust_remote_code: bool = False, device: str | None = None) -> Any:
    """The teacher as a SentenceTransformer. Remote code runs only when the user allows it."""
    from sentence_transformers import SentenceTransformer

    from unime.model_names import SENTENCE_TRANSFORMER, check_model_name

    if spec.remote_code and not trust_remote_code:
        raise ValueError(
            f"teacher {spec.name!r} ({spec.model}) runs hub remote code; allow it with --trust-teacher-code "
            "(recipe: trust_teacher_code: true) if you trust that repository"
        )
    check_model_name(spec.model, option="teacher", kind=SENTENCE_TRANSFORMER)
    model = SentenceTransformer(spec.model, device=device, trust_remote_code=spec.remote_code and trust_remote_code)
    if spec.max_seq_length is not None:
        model.max_seq_length = spec.max_seq_length
    if spec.add_eos:
        # NV-Embed-v2 pools with right padding and an explicit EOS (its model card).
        model.tokenizer.padding_side = "right"
    return model


def _manifest_settings(spec: TeacherSpec, sentences: list[str], shard_size: int, dtype: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "teacher": spec.name,
        "teacher_identity": spec.identity(),
        "normalized": True,
        "dtype": dtype,
        "shard_size": shard_size,
        "count": len(sentences),
        "data_sha256": data_fingerprint(sentences),
    }


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: not a teacher cache (no {MANIFEST}); build one with unime teacher-embed") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a unime teacher cache manifest")
    return manifest


def _mismatch(found: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """A sentence saying why a cache does not fit, or None."""
    if found.get("format_version") != wanted["format_version"]:
        return f"format version {found.get('format_version')} (this unime writes {wanted['format_version']})"
    if found.get("teacher_identity") != wanted["teacher_identity"]:
        return f"it was built by teacher {found.get('teacher')!r} {found.get('teacher_identity')}, not {wanted['teacher']!r} {wanted['teacher_identity']}"
    if found.get("data_sha256") != wanted["data_sha256"] or found.get("count") != wanted["count"]:
        return (f"it was built on other data ({found.get('count')} sentences, sha256 {str(found.get('data_sha256'))[:12]}...) "
                f"than the {wanted['count']} sentences given now (sha256 {wanted['data_sha256'][:12]}...)")
    return None


def _shard_ok(path: Path, rows: int, dim: int | None) -> bool:
    if not path.is_file():
        return False
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return False
    return array.ndim == 2 and array.shape[0] == rows and (dim is None or array.shape[1] == dim)


def build_cache(
    spec: TeacherSpec,
    sentences: list[str],
    folder: str | Path,
    *,
    shard_size: int = 8192,
    batch_size: int = 64,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str | None = None,
    overwrite: bool = False,
) -> TeacherCache:
    """Embed ``sentences`` with the teacher into ``folder`` and return the opened cache.

    Finished shards of an earlier, killed run of the same teacher on the same data are kept (its
    shard size and dtype then apply); a complete cache is returned as is. A folder holding a cache
    of other data or another teacher is refused unless ``overwrite``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    if not sentences:
        raise ValueError("no sentences to embed")
    folder = Path(folder)
    wanted = _manifest_settings(spec, sentences, shard_size, dtype)
    found: dict[str, Any] = {}
    reason = None
    if (folder / MANIFEST).is_file():
        found = _read_manifest(folder)
        reason = _mismatch(found, wanted)
        if reason and not overwrite:
            raise ValueError(f"{folder}: holds a teacher cache that does not fit: {reason}. Choose another "
                             "folder, or pass --overwrite to rebuild it")
        if reason:
            for old in folder.glob("shard-*.npy"):
                old.unlink()
        elif found.get("complete") and all((folder / name).is_file() for name in found.get("shards", [])):
            return TeacherCache.open(folder, sentences, spec)
        else:
            if found.get("complete"):
                logger.info("teacher cache %s: embedding its deleted shards again", folder)
            if (found.get("shard_size"), found.get("dtype")) != (shard_size, dtype):
                # Finishing a killed build: its shards fix the layout.
                logger.info("teacher cache %s: resuming with its shard_size %s and dtype %s", folder,
                            found.get("shard_size"), found.get("dtype"))
                shard_size, dtype = int(found["shard_size"]), str(found["dtype"])
                wanted = _manifest_settings(spec, sentences, shard_size, dtype)
    elif folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValueError(f"{folder}: exists, is not empty and is not a teacher cache")
    # Shards recorded by the killed run being finished (a shard written but not yet recorded is redone).
    recorded = {name: entry for name, entry in (found.get("files") or {}).items()
                if not reason and (folder / name).is_file()}
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MANIFEST, {**wanted, "files": recorded, "complete": False})
    shards, dim, files = _write_shards(folder, spec, sentences, shard_size, dtype, wanted, recorded,
                                       dict(batch_size=batch_size, trust_remote_code=trust_remote_code, device=device))
    write_json_atomic(folder / MANIFEST, {**wanted, "dim": dim, "shards": shards, "files": files, "complete": True})
    return TeacherCache.open(folder, sentences, spec)


def _write_shards(folder: Path, spec: TeacherSpec, sentences: list[str], shard_size: int, dtype: str,
                  wanted: dict[str, Any], recorded: dict[str, Any],
                  settings: dict[str, Any]) -> tuple[list[str], int, dict[str, Any]]:
    """Embed every shard not already on disk; each is written to a temporary name, renamed, and recorded
    (size and SHA-256) in the manifest. A shard on disk is kept only if the manifest records it and
    its bytes still match; a recorded shard that no longer matches is named (``CorruptFileError``)."""
    shards = [f"shard-{i:05d}.npy" for i in range((len(sentences) + shard_size - 1) // shard_size)]
    files = dict(recorded)
    teacher = None
    dim = None
    for index, name in enumerate(shards):
        rows = sentences[index * shard_size : (index + 1) * shard_size]
        if name in files:
            check_file(folder / name, files[name], "delete it and run unime teacher-embed again to re-embed it")
        if name in files and _shard_ok(folder / name, len(rows), dim):
            dim = dim or int(np.load(folder / name, mmap_mode="r").shape[1])
            continue
        if name in files:
            raise CorruptFileError(folder / name, f"not a [{len(rows)}, dim] array", "delete it and run unime "
                                   "teacher-embed again to re-embed it")
        if teacher is None:
            teacher = load_teacher(spec, trust_remote_code=settings["trust_remote_code"], device=settings["device"])
        embeddings = _embed(teacher, spec, rows, settings["batch_size"]).astype(dtype)
        dim = embeddings.shape[1]
        with atomic_path(folder / name) as temporary, temporary.open("wb") as handle:
            np.save(handle, embeddings, allow_pickle=False)
        files[name] = file_entry(folder / name)
        write_json_atomic(folder / MANIFEST, {**wanted, "files": files, "complete": False})
        logger.info("teacher cache: shard %d/%d written (%d sentences)", index + 1, len(shards), len(rows))
    return shards, int(dim), {name: files[name] for name in shards}


def _embed(teacher: Any, spec: TeacherSpec, sentences: list[str], batch_size: int) -> np.ndarray:
    if spec.add_eos:
        sentences = [s + teacher.tokenizer.eos_token for s in sentences]
    embeddings = teacher.encode(sentences, batch_size=batch_size, prompt=spec.prompt or None,
                                normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=len(sentences) > batch_size)
    return np.asarray(embeddings, dtype=np.float32)


class TeacherCache:
    """A complete teacher cache, opened for reading: ``cache.take(rows)`` -> float32 [len(rows), dim].

    The shards are memory-mapped, so a cache larger than memory (273k x 4096 for NV-Embed-v2) costs
    only the rows a batch reads.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.count = int(manifest["count"])
        self.dim = int(manifest["dim"])
        self.shard_size = int(manifest["shard_size"])
        self._shards = [np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in manifest["shards"]]

    @classmethod
    def open(cls, folder: str | Path, sentences: list[str] | None = None, teacher: TeacherSpec | None = None) -> TeacherCache:
        """Open a complete cache; with ``sentences`` / ``teacher`` given, refuse one built from others."""
        folder = Path(folder)
        manifest = _read_manifest(folder)
        if not manifest.get("complete"):
            raise ValueError(f"{folder}: the teacher cache is incomplete (a killed run?); run unime teacher-embed "
                             "again with the same settings to finish it")
        if sentences is not None or teacher is not None:
            wanted = {"format_version": FORMAT_VERSION, "teacher": manifest.get("teacher"),
                      "teacher_identity": manifest.get("teacher_identity"), "count": manifest.get("count"),
                      "data_sha256": manifest.get("data_sha256")}
            if teacher is not None:
                wanted.update(teacher=teacher.name, teacher_identity=teacher.identity())
            if sentences is not None:
                wanted.update(count=len(sentences), data_sha256=data_fingerprint(sentences))
            reason = _mismatch(manifest, wanted)
            if reason:
                raise ValueError(f"{folder}: this teacher cache does not fit: {reason}. Rebuild it with "
                                 "unime teacher-embed (or let unime distill build one)")
        files = manifest.get("files")
        if files is None:
            logger.warning("teacher cache %s records no shard digests (written by an older unime): its shards "
                           "cannot be verified", folder)
        else:
            for name in manifest["shards"]:
                if name not in files:
                    raise CorruptFileError(folder / name, "not recorded in the manifest", "rebuild the cache with "
                                           "unime teacher-embed --overwrite")
                check_file(folder / name, files[name], "delete it and run unime teacher-embed again with the same "
                           "settings to re-embed it")
        cache = cls(folder, manifest)
        for name, shard in zip(manifest["shards"], cache._shards, strict=True):
            if shard.ndim != 2 or shard.shape[1] != cache.dim:
                raise ValueError(f"{folder / name}: shape {shard.shape} does not match dim {cache.dim}")
        if sum(s.shape[0] for s in cache._shards) != cache.count:
            raise ValueError(f"{folder}: the shards hold {sum(s.shape[0] for s in cache._shards)} rows, manifest says {cache.count}")
        return cache

    def __len__(self) -> int:
        return self.count

    def take(self, rows: list[int] | np.ndarray) -> np.ndarray:
        """The embeddings of the given sentence indices, as float32 [len(rows), dim]."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.count):
            raise IndexError(f"teacher cache {self.folder}: row out of range [0, {self.count})")
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        for position, row in enumerate(rows):
            out[position] = self._shards[row // self.shard_size][row % self.shard_size]
        return out
