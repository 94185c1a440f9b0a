"""File integrity for checkpoints and caches: SHA-256 digests recorded when a file is written and
checked before it is read, so a truncated or corrupted file is named instead of silently used.

Writers record ``{"size": bytes, "sha256": hex}`` per file in a manifest written last (atomically,
by :func:`write_json_atomic`); readers call :func:`check_file` on each entry before loading it.
"""

from __future__ import annotations

import hashlib
import json
import os
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


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``: readers see the old
    file or the new one, never a partial one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)
