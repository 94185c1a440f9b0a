"""The trainers the stages run on, with atomic checkpoints and resume shared by all of them.

:class:`AtomicCheckpointMixin` holds what every stage needs from a long run (atomic checkpoints, JSON
training arguments); :class:`UniMETrainer` (the embedding stages, on sentence-transformers' trainer)
and ``unime.training.align.AlignTrainer`` (the captioning stage, on transformers' ``Trainer``) use it.

Loss-scaling rule (stated once, here). A UniME loss returns the mean over the *global* batch of
the rows this rank owns, scaled by :func:`unime.losses.distributed.global_mean` so that DDP's
gradient averaging over W ranks gives exactly the gradient of the mean over all ``batch_size``
rows: two ranks with half the batch each equal one rank with the whole batch. Gradient
accumulation over A micro-batches is the trainer's: it divides each micro-batch loss by A, so A
micro-batches of B rows give the mean of the A in-batch losses (each micro-batch is its own
in-batch matrix; use the loss's ``mini_batch_size`` (GradCache) instead to enlarge the matrix
itself). The learning rate is therefore independent of W and A.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from unime.environment import rank_and_world_size, resolve_bf16
from unime.io.integrity import CorruptFileError, check_file, file_entry, write_json_atomic
from unime.training.adapters import has_adapter
from unime.training.recipes import TrainRecipe

logger = logging.getLogger(__name__)

_STAGING = ".staging"
CHECKPOINT_MANIFEST = "unime_checkpoint.json"
# Mean cosine of both the positives and the chosen negatives to their queries at or above which a
# stage-2 run is reported as collapsing (every input embedded alike).
COLLAPSE_SIMILARITY = 0.99


class AtomicCheckpointMixin:
    """What every unime trainer adds to a Hugging Face ``Trainer`` for long runs (put it first in the bases).

    - Atomic checkpoints: each ``checkpoint-N`` is written into a staging folder beside it and renamed
      into place once complete, so a killed run never leaves a half-written ``checkpoint-N`` that
      resuming would pick up.
    - Each checkpoint holds ``unime_checkpoint.json``, the size and SHA-256 of every file in it, written
      last; resuming checks them (:func:`verify_checkpoint`), so a corrupted file is named, never loaded.
    - Training arguments are saved as JSON (``training_args.json``) beside the checkpoint, not pickled.

    A trainer that checkpoints less than the whole model overrides :meth:`_save_weights` (and the
    trainer's ``_load_from_checkpoint`` to match). Resume with
    ``trainer.train(resume_from_checkpoint=resume_checkpoint(recipe))``.
    """

    _staging_dir: str | None = None

    def train(self, resume_from_checkpoint: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``, except that resuming from a checkpoint at or past ``max_steps`` (a run killed
        after its last checkpoint, e.g. during the final save) loads that checkpoint and trains nothing:
        the Trainer itself would run one step past ``max_steps`` (it checks the limit only after a step)."""
        if resume_from_checkpoint and self.args.max_steps > 0 and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            from transformers.trainer_callback import TrainerState
            from transformers.trainer_utils import TrainOutput

            state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, "trainer_state.json"))
            if state.global_step >= self.args.max_steps:
                logger.info("resume: %s is at step %d, max_steps %d: training is finished, loading its weights",
                            resume_from_checkpoint, state.global_step, self.args.max_steps)
                self._load_from_checkpoint(resume_from_checkpoint)
                self.state = state
                losses = [entry["train_loss"] for entry in state.log_history if "train_loss" in entry]
                return TrainOutput(state.global_step, losses[-1] if losses else 0.0,
                                   {"train_loss": losses[-1]} if losses else {})
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, _STAGING)
        if self.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        final = os.path.join(run_dir, name)
        try:
            super()._save_checkpoint(model, trial)
        except Exception as error:  # OSError, or safetensors' own error type for the weights
            if _disk_full(error):
                raise self._disk_full_error(error, final, staging) from error
            raise
        finally:
            self._staging_dir = None
        # Every rank writes its RNG state into the staging folder before it moves.
        self.accelerator.wait_for_everyone()
        if self.is_world_process_zero():
            try:
                write_checkpoint_manifest(os.path.join(staging, name))
            except OSError as error:
                if _disk_full(error):
                    raise self._disk_full_error(error, final, staging) from error
                raise
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _disk_full_error(self, error: Exception, final: str, staging: str) -> OSError:
        """The error of a checkpoint write that ran out of disk: the checkpoint and the file named, the
        full disk said, and the last complete checkpoint to resume from. The partial staging folder is
        removed to give its space back; the complete checkpoints are left as they were."""
        if self.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        filename = getattr(error, "filename", None)
        where = f" (writing {os.path.basename(filename)})" if filename else ""
        previous = last_checkpoint(os.path.dirname(final))
        resume = (f"{os.path.basename(previous)} is the last complete checkpoint: free space and resume from it "
                  "with --resume" if previous else "no checkpoint is complete yet: free space and start the run again")
        return OSError(errno.ENOSPC, f"checkpoint {final} not written{where}: the disk is full; {resume}")

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        folder = output_dir or self.args.output_dir
        self._save_weights(folder, state_dict)
        pickled = os.path.join(folder, "training_args.bin")
        if os.path.isfile(pickled):
            os.remove(pickled)
        if self.args.should_save:
            os.makedirs(folder, exist_ok=True)
            Path(folder, "training_args.json").write_text(self.args.to_json_string())

    def _save_weights(self, output_dir: str, state_dict: Any = None) -> None:
        """Write the model's weights into ``output_dir`` (by default the trainer's own ``_save``)."""
        super()._save(output_dir, state_dict)


class UniMETrainer(AtomicCheckpointMixin, SentenceTransformerTrainer):
    """``SentenceTransformerTrainer`` with atomic checkpoints (:class:`AtomicCheckpointMixin`) and two
    narrow additions for the UniME losses.

    - The loss's ``last_stats`` (a ``dict[str, float]`` refreshed by each forward, e.g. the stage-2
      mining statistics), averaged over the logging interval, join each log line.
    - A warning, once, when the logged mining statistics show the embeddings collapsing (see
      :data:`COLLAPSE_SIMILARITY`).
    - Resuming a LoRA run loads the adapter weights alone.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stats_sum: dict[str, float] = {}
        self._stats_count = 0
        self._collapse_warned = False

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss_fn = self.loss if not isinstance(self.loss, dict) else None
        # A wrapper (MatryoshkaLoss) holds the UniME loss as .loss; its stats are of the last size computed.
        stats_owner = loss_fn if hasattr(loss_fn, "last_stats") else getattr(loss_fn, "loss", None)
        stats = getattr(stats_owner, "last_stats", None) if model.training else None
        if stats:
            for key, value in stats.items():
                self._stats_sum[key] = self._stats_sum.get(key, 0.0) + float(value)
            self._stats_count += 1
        return result

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._stats_count:
            logs = {**logs, **{k: round(v / self._stats_count, 4) for k, v in self._stats_sum.items()}}
            self._stats_sum, self._stats_count = {}, 0
            self._warn_on_collapse(logs)
        super().log(logs, start_time)

    def _warn_on_collapse(self, logs: dict[str, float]) -> None:
        positive, negative = logs.get("positive_similarity"), logs.get("negative_similarity")
        if self._collapse_warned or positive is None or negative is None:
            return
        if min(positive, negative) >= COLLAPSE_SIMILARITY:
            self._collapse_warned = True
            logger.warning(
                "step %d: the embeddings are collapsing: positives and chosen negatives both have mean cosine "
                ">= %.2f to their queries (%.4f, %.4f), so the loss sits near ln(k + 1) and the gradient vanishes. "
                "A model whose embeddings do not yet separate the candidates (e.g. an untrained vision tower) "
                "does this under hard negatives (docs/stage2.md, 'Collapse'): start from a stronger model or "
                "compare --negatives all.",
                self.state.global_step, COLLAPSE_SIMILARITY, positive, negative)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        # With an adapter only the adapter weights change: load those, not a second full model
        # (which for QLoRA could not even be loaded into the 4-bit layers by state dict).
        adapter_file = Path(resume_from_checkpoint, "adapter_model.safetensors")
        if has_adapter(self.model) and adapter_file.is_file():
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            result = set_peft_model_state_dict(self.model.hf_model, load_file(str(adapter_file)))
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ValueError(f"{adapter_file}: adapter weights do not fit this model: {unexpected[:3]}")
            return
        super()._load_from_checkpoint(resume_from_checkpoint)


def _disk_full(error: BaseException) -> bool:
    """Whether a write failed for want of space: an ``OSError`` with ENOSPC (or EDQUOT, a quota), or
    safetensors' error, which carries the Rust I/O error's text ("No space left on device (os error 28)")."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(error) or f"(os error {errno.ENOSPC})" in str(error)


def last_checkpoint(folder: str | Path) -> str | None:
    """The last complete ``checkpoint-N`` in ``folder`` (staging folders are never complete), or None."""
    folder = Path(folder)
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def write_checkpoint_manifest(folder: str | Path) -> None:
    """Record the size and SHA-256 of every file of a written checkpoint in :data:`CHECKPOINT_MANIFEST`."""
    folder = Path(folder)
    files = {str(path.relative_to(folder)): file_entry(path) for path in sorted(folder.rglob("*"))
             if path.is_file() and path.name != CHECKPOINT_MANIFEST}
    write_json_atomic(folder / CHECKPOINT_MANIFEST, {"format": "unime-checkpoint", "files": files})


def verify_checkpoint(folder: str | Path) -> None:
    """Check every file of a checkpoint against its manifest; raise ``CorruptFileError`` naming the first
    file that is missing, truncated or changed, saying which checkpoint to resume from instead.
    A checkpoint without a manifest (written before unime recorded one) is accepted with a warning."""
    folder = Path(folder)
    manifest_path = folder / CHECKPOINT_MANIFEST
    previous = [p for p in _checkpoints(folder.parent) if p != folder]
    advice = (f"delete {folder} to resume from {previous[-1].name}, the previous checkpoint" if previous
              else f"delete {folder} to start the run again")
    if not manifest_path.is_file():
        logger.warning("%s has no %s (written by an older unime): its files cannot be verified", folder,
                       CHECKPOINT_MANIFEST)
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptFileError(manifest_path, f"not a readable checkpoint manifest ({error})", advice) from None
    for relative, entry in files.items():
        check_file(folder / relative, entry, advice)


def _checkpoints(folder: Path) -> list[Path]:
    """The complete ``checkpoint-N`` folders in ``folder``, by step."""
    found = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resume_checkpoint(recipe: TrainRecipe) -> str | None:
    """The checkpoint a run continues from: the last complete one with ``recipe.resume``, else None.

    A folder holding checkpoints of an earlier run is refused without ``resume`` (a new run would
    mix its checkpoints with the old ones); with ``resume`` and no complete checkpoint the run
    starts from the beginning. The checkpoint's files are verified first (:func:`verify_checkpoint`).
    """
    checkpoint = last_checkpoint(recipe.checkpoint_dir())
    if checkpoint and not recipe.resume:
        raise ValueError(f"--output-dir {recipe.output_dir} holds checkpoints of an earlier run; pass --resume to "
                         "continue it, or choose another --output-dir")
    if recipe.resume and checkpoint is None:
        logger.info("resume: no complete checkpoint in %s, starting from the beginning", recipe.checkpoint_dir())
    if recipe.resume and checkpoint is not None:
        verify_checkpoint(checkpoint)
        logger.info("resume: continuing from %s (files verified)", checkpoint)
    return checkpoint if recipe.resume else None


def training_settings(recipe: TrainRecipe, **extra: Any) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords of this recipe, for any trainer (the batch split evenly over
    the processes); ``extra`` adds or replaces keywords."""
    ranks = rank_and_world_size()[1]  # before the trainer creates the group: the launcher's WORLD_SIZE
    if recipe.batch_size % ranks:
        raise ValueError(f"batch_size {recipe.batch_size} does not split over {ranks} processes")
    # bf16 auto: autocast where the training device has native bf16 kernels (unime.environment.compute_dtype).
    bf16 = resolve_bf16(recipe.bf16)  # on the default device, where the trainer puts the model
    if recipe.bf16 == "auto":
        logger.info("bf16 auto: %s", "bf16 autocast" if bf16 else "float32 (no native bf16 kernels here)")
    settings: dict[str, Any] = dict(
        output_dir=str(recipe.checkpoint_dir()), per_device_train_batch_size=recipe.batch_size // ranks,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps, learning_rate=recipe.learning_rate,
        warmup_steps=recipe.warmup_steps, weight_decay=recipe.weight_decay, lr_scheduler_type=recipe.lr_scheduler,
        max_grad_norm=recipe.max_grad_norm, max_steps=recipe.max_steps, num_train_epochs=recipe.epochs, bf16=bf16,
        seed=recipe.seed, data_seed=recipe.seed, logging_steps=recipe.logging_steps, save_strategy="steps",
        save_steps=recipe.save_steps, save_total_limit=recipe.save_total_limit, report_to="none",
        # The in-batch losses need full batches, and equal shards keep the ranks in step.
        dataloader_drop_last=True,
        ddp_backend="gloo" if ranks > 1 and not torch.cuda.is_available() else None,
        # Without it the trainer refuses bf16 autocast on a machine without a GPU.
        use_cpu=not torch.cuda.is_available(),
        # Vision-side adapters get no gradient from text-only batches in scope "all".
        ddp_find_unused_parameters=recipe.scope == "all",
    )
    settings.update(extra)
    return settings


def training_arguments(recipe: TrainRecipe, **extra: Any) -> SentenceTransformerTrainingArguments:
    """The sentence-transformers trainer arguments of this recipe (see :func:`training_settings`)."""
    return SentenceTransformerTrainingArguments(**training_settings(recipe, **extra))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the LoRA initialisation draws from torch's RNG)."""
    from transformers import set_seed

    set_seed(seed)


def with_matryoshka(loss: Any, model: Any, dims: list[int] | None) -> Any:
    """``loss`` trained at each of ``dims`` too (sentence-transformers' ``MatryoshkaLoss``: the
    embeddings cut to each size and renormalised, the losses summed with weight 1; on GradCache its
    cached step is wrapped instead of the forward), and the sizes recorded in the model's config for
    ``--dimensions`` at inference. Without ``dims`` the loss is returned as it is and the config says
    the model was trained at full size only."""
    model.update_config(matryoshka_dims=sorted(dims, reverse=True) if dims else None)
    if not dims:
        return loss
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    width = model.get_embedding_dimension()
    if width is not None and max(dims) > width:
        raise ValueError(f"matryoshka_dims {dims}: {max(dims)} exceeds the model's embedding size {width}")
    return MatryoshkaLoss(model, loss, matryoshka_dims=list(dims))
