"""The checkpoints UniME's authors released, and what loading one implies.

A plain transformers folder carries no unime settings; the released UniME checkpoints are
instruction tuned (stage 2), so an input with both text and image is embedded as one joint
sequence, as their evaluation scripts do. They are recognised by their hub id, given as it is or
as the hub cache keeps it on disk (``.../models--OWNER--NAME/snapshots/REVISION``); a folder's own
name never decides (a copy of a released checkpoint elsewhere loads with ``mode="joint"``).

This module imports neither torch nor transformers.
"""

from __future__ import annotations

from pathlib import Path

#: Hub ids of the released UniME checkpoints (arXiv 2504.17432), all stage-2 models.
RELEASED_CHECKPOINTS = (
    "DeepGlint-AI/UniME-Phi3.5-V-4.2B",
    "DeepGlint-AI/UniME-LLaVA-1.6-7B",
    "DeepGlint-AI/UniME-LLaVA-OneVision-7B",
)
_BY_KEY = {name.casefold(): name for name in RELEASED_CHECKPOINTS}


def released_checkpoint(name_or_path: str) -> str | None:
    """The released checkpoint's hub id that ``name_or_path`` names, else None: the hub id itself
    (hub ids are case-insensitive), or a folder inside the hub cache's ``models--OWNER--NAME``."""
    found = _BY_KEY.get(str(name_or_path).casefold())
    if found is not None:
        return found
    for part in Path(name_or_path).parts:
        if part.startswith("models--"):
            return _BY_KEY.get(part[len("models--"):].replace("--", "/").casefold())
    return None


def default_mode(name_or_path: str) -> str | None:
    """``joint`` for a released checkpoint, else None (the model's own or the default mode)."""
    return "joint" if released_checkpoint(name_or_path) else None
