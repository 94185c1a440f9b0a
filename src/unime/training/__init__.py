"""The UniME training application: stage 1 (``distill``) and stage 2 (``tune``) on the
sentence-transformers trainer. Importing :mod:`unime` never imports this package.

The shared layer is :mod:`unime.training.common` (tuning methods, the trainer, recipes, the final
save); stage 1 lives in :mod:`unime.training.distill`, its teacher cache in
:mod:`unime.training.teacher_cache` and its data readers in :mod:`unime.training.text_data`. The
names below are imported on first use, so the light modules (data readers) load without the
training stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SCOPES": "common",
    "TUNING_METHODS": "common",
    "TrainRecipe": "common",
    "UniMETrainer": "common",
    "apply_tuning": "common",
    "has_adapter": "common",
    "last_checkpoint": "common",
    "load_for_tuning": "common",
    "merge_adapter": "common",
    "resolve_recipe": "common",
    "save_final": "common",
    "seed_everything": "common",
    "vision_modules": "common",
    "DistillRecipe": "distill",
    "run_distill": "distill",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'unime.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"unime.training.{_EXPORTS[name]}"), name)
