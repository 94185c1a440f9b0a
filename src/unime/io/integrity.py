"""File integrity for checkpoints and caches: SHA-256 digests recorded when a file is written and
checked before it is read, so a truncated or corrupted file is named instead of silently used.

Writers record ``{"size": bytes, "sha256": hex}`` per file in a manifest written last (atomically,
by :func:`write_json_atomic`); readers call :func:`check_file` on each entry before loading it.

Every file unime writes in place of an older one goes through :func:`atomic_path` (or
:func:`write_text_atomic` / :func:`write_json_atomic`, built on it): it is written under a temporary
name beside the target and renamed over it, so readers see the old file or the new one, never a
partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20


class CorruptFileError(ValueError):
    """A checkpoint or cache file whose size or SHA-256 differs from the one recorded when it was written."""

    def __init__(self, path: str | os.PathLike[str], reason: str, advice: str = "") -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {reason}" + (f"; {advice}" if advice else ""))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a manifest records of one file: its size and SHA-256."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def check_file(path: str | os.PathLike[str], entry: dict[str, Any], advice: str = "") -> None:
    """Raise :class:`CorruptFileError` naming ``path`` unless it exists with the recorded size and SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(path, "missing (the manifest lists it)", advice)
    size = path.stat().st_size
    if "size" in entry and size != entry["size"]:
        raise CorruptFileError(path, f"{size} bytes, but {entry['size']} were written (truncated or changed)", advice)
    if sha256_file(path) != entry.get("sha256"):
        raise CorruptFileError(path, "SHA-256 differs from the one recorded when it was written (corrupted)", advice)


def _temporary_path(path: str | os.PathLike[str]) -> Path:
    """The name :func:`atomic_path` writes ``path`` under first: hidden, beside it, ending in ``.tmp``.
    It is the same on every try, so a write killed before its rename is overwritten by the next one."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write the file to; when the block ends, rename it over
    ``path``. If the block (or the rename) fails, the temporary file is removed and ``path`` is left as
    it was. For writers that produce the file through a library::

        with atomic_path(target) as temporary:
            save_file(tensors, str(temporary))

    The temporary name ends in ``.tmp``: a library that picks its format from the file's suffix
    (``numpy.save`` given a name, ``savefig``) is handed an open file or an explicit format instead.
    """
    path = Path(path)
    temporary = _temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding=encoding)


def write_json_atomic(path: str | os.PathLike[str], data: Any, indent: int = 1) -> None:
    """Write ``data`` as JSON (and a final newline) to ``path`` through :func:`atomic_path`: readers see
    the old file or the new one, never a partial one."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")
