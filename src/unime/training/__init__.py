"""The UniME training application: the stages on the sentence-transformers trainer. Importing
:mod:`unime` never imports this package.

One module a job: :mod:`~unime.training.recipes` (the settings of every stage, torch-free: the
command line derives its flags from them), :mod:`~unime.training.adapters` (which parameters learn:
LoRA, QLoRA, full, merging), :mod:`~unime.training.trainer` (the trainer with atomic checkpoints and
resume), :mod:`~unime.training.saving` (the final atomic save). The stages:
:mod:`~unime.training.distill` (stage 1, with :mod:`~unime.training.teacher_cache` and
:mod:`~unime.training.text_data`) and :mod:`~unime.training.tune` (stage 2, with
:mod:`~unime.training.mmeb_data`). Before them, for a base MLLM whose projector is untrained:
:mod:`~unime.training.align` (feature alignment, LLaVA's stage 1, with
:mod:`~unime.training.caption_data` and :mod:`~unime.training.captioning`). The names below are
imported on first use, so the light modules load without the training stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SCOPES": "adapters",
    "TUNING_METHODS": "adapters",
    "apply_tuning": "adapters",
    "has_adapter": "adapters",
    "load_for_tuning": "adapters",
    "merge_adapter": "adapters",
    "vision_modules": "adapters",
    "AlignRecipe": "recipes",
    "DistillRecipe": "recipes",
    "TrainRecipe": "recipes",
    "TuneRecipe": "recipes",
    "resolve_recipe": "recipes",
    "AtomicCheckpointMixin": "trainer",
    "UniMETrainer": "trainer",
    "last_checkpoint": "trainer",
    "seed_everything": "trainer",
    "save_final": "saving",
    "run_align": "align",
    "run_distill": "distill",
    "generate_captions": "captioning",
    "load_captioner": "captioning",
    "tune": "tune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'unime.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"unime.training.{_EXPORTS[name]}"), name)
