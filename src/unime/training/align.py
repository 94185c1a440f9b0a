"""The base MLLM's feature alignment (``unime align``): LLaVA's stage-1 pretraining.

An MLLM assembled from a pretrained vision tower and a pretrained LLM (the CPU default: ImageNet
MobileNetV2 and SmolLM2) starts with a random projector between them, so the LLM reads noise where
the image should be, and UniME's stages have nothing to build on. Feature alignment (Liu et al.,
*Visual Instruction Tuning*, 2023, stage 1) trains the projector alone, with the vision tower and
the LLM frozen, on the captioning language-model loss of image-caption pairs: the LLM must predict
the caption from the projected image features, so the projector learns to speak the LLM's
embedding language. The released UniME checkpoints start from MLLMs that went through this.

The run: read and check the caption data (fails before the model loads), load the model with its
LM head (:func:`unime.training.captioning.load_captioner`), freeze all but the projector, train on
transformers' ``Trainer`` (:class:`AlignTrainer`: atomic checkpoints of the projector, resume),
save the whole UniME model with stage ``align`` recorded, and beside it ``projector.safetensors``
(the projector alone) with ``projector.json`` (data files and their SHA-256, rows used and
skipped, recipe, steps, loss, wall time) and ``training_log.jsonl``.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from unime.io.integrity import atomic_path, write_json_atomic
from unime.training.recipes import AlignRecipe
from unime.training.trainer import AtomicCheckpointMixin

__all__ = ["AlignRecipe", "AlignTrainer", "run_align"]

logger = logging.getLogger(__name__)

STAGE = "align"
PROJECTOR_FILE = "projector.safetensors"
PROJECTOR_INFO = "projector.json"


class AlignTrainer(AtomicCheckpointMixin, Trainer):
    """transformers' ``Trainer`` on the captioning loss of the model's own forward (``labels`` given),
    with two narrow changes.

    - Checkpoints hold the projector alone (``projector.safetensors``, the only weights that change)
      plus the trainer's optimizer, scheduler, RNG and state, and resuming loads it back.
    - The frozen parts run in eval mode (BatchNorm statistics of a convolutional tower stay as
      pretrained, no dropout): frozen means unchanged, not only without gradient.
    """

    def __init__(self, *args: Any, projector: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.projector = projector

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        self.model.eval()
        self.projector.train()
        # No key-value cache: nothing is generated, and it would only hold memory.
        return super().compute_loss(model, {**inputs, "use_cache": False}, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _save_weights(self, output_dir: str, state_dict: Any = None) -> None:
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            save_projector(self.projector, Path(output_dir) / PROJECTOR_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from safetensors.torch import load_file

        path = Path(resume_from_checkpoint, PROJECTOR_FILE)
        if not path.is_file():
            raise ValueError(f"{resume_from_checkpoint}: no {PROJECTOR_FILE}; not a checkpoint of unime align")
        result = self.projector.load_state_dict(load_file(str(path)), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{path}: does not fit this model's projector (missing {result.missing_keys[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]})")


def save_projector(projector: torch.nn.Module, path: Path) -> None:
    """The projector's weights under its own names (``linear_1.weight`` ...), written atomically."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in projector.state_dict().items()}
    with atomic_path(path) as staging:
        save_file(tensors, str(staging), metadata={"format": "pt"})


def write_projector_files(output: Path, trainer: Any, info_name: str, summary: dict[str, Any]) -> None:
    """Beside a saved model: the trained projector alone (``projector.safetensors``) and the run's
    summary (``info_name``); the runner writes the log history (``training_log.jsonl``) beside them."""
    save_projector(trainer.projector, output / PROJECTOR_FILE)
    write_json_atomic(output / info_name, summary, indent=2)


def build_trainer(recipe: AlignRecipe, captioner: Any, data: Any, callbacks: list[Any] | None = None) -> AlignTrainer:
    """The trainer of an align run: the projector trainable, the caption collator, the recipe's arguments."""
    from unime.training.captioning import CaptionCollator
    from unime.training.trainer import training_settings

    projector = captioner.freeze_all_but_projector()
    collator = CaptionCollator(captioner.processor, captioner.caption_format(recipe.prompt),
                               max_caption_tokens=recipe.max_caption_tokens, image_size=recipe.image_size,
                               skip_bad_rows=recipe.skip_bad_rows)
    # The collator takes caption rows, not columns named after the model's forward arguments.
    args = TrainingArguments(**training_settings(recipe, remove_unused_columns=False))
    return AlignTrainer(model=captioner.model, args=args, train_dataset=data.rows, data_collator=collator,
                        callbacks=callbacks, projector=projector)


def _summary(recipe: AlignRecipe, captioner: Any, trainer: AlignTrainer, data: Any, result: Any,
             seconds: float) -> dict[str, Any]:
    from unime import __version__
    from unime.training.captioning import PROJECTOR

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    fmt = trainer.data_collator.fmt
    return {
        "stage": STAGE,
        "unime_version": __version__,
        "model": recipe.model,
        "family": captioner.backbone.family,
        "module": PROJECTOR,
        "parameters": sum(p.numel() for p in trainer.projector.parameters()),
        "data": data.summary(),
        "skipped_while_batching": trainer.data_collator.skipped,
        "prompt": fmt.prompt,
        "end_token": fmt.end_token,
        "steps": trainer.state.global_step,
        "final_loss": losses[-1] if losses else None,
        "train_loss": result.metrics.get("train_loss"),
        "wall_time_s": round(seconds, 1),
        "command": shlex.join(sys.argv),
        "recipe": recipe.to_dict(),
    }


def run_align(recipe: AlignRecipe, callbacks: list[Any] | None = None) -> Path:
    """Run feature alignment and save to ``recipe.output_dir``; return that folder.

    A folder holding checkpoints of an earlier run is refused unless ``recipe.resume``, which then
    continues from the last complete checkpoint (and starts afresh when there is none).
    """
    from unime.training.stage import run_stage

    return run_stage(STAGE, recipe, _setup, callbacks)


def _setup(recipe: AlignRecipe, callbacks: list[Any] | None) -> Any:
    """Caption data (read and checked before the model loads), the captioner and its trainer."""
    from unime.training.caption_data import read_caption_data
    from unime.training.captioning import load_captioner
    from unime.training.stage import StageRun
    from unime.training.trainer import seed_everything

    data = read_caption_data(recipe.data, recipe.image_root or None, captions_per_image=recipe.captions_per_image,
                             max_rows=recipe.max_rows, skip_bad_rows=recipe.skip_bad_rows)
    if len(data.rows) < recipe.batch_size:
        raise ValueError(f"data: {len(data.rows)} image-caption rows, fewer than batch_size {recipe.batch_size}")
    seed_everything(recipe.seed)
    captioner = load_captioner(recipe.model, trust_remote_code=recipe.trust_remote_code)
    trainer = build_trainer(recipe, captioner, data, callbacks)
    embedder = captioner.embedder

    def after_training() -> None:
        if recipe.image_size is not None:
            # The projector learnt on images of this size: embed them alike (saved with the model).
            embedder.update_config(image_size=recipe.image_size)

    def record(output: Path, result: Any, seconds: float) -> None:
        write_projector_files(output, trainer, PROJECTOR_INFO, _summary(recipe, captioner, trainer, data, result, seconds))
        logger.info("align: %d rows used, %d skipped (%d while batching)", len(data.rows), data.skipped,
                    trainer.data_collator.skipped)

    return StageRun(trainer, embedder, after_training=after_training, record=record)
