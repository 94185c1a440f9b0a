"""Stage 2 of UniME: hard-negative enhanced instruction tuning (``unime tune``).

The model (a base MLLM, or a stage-1 output whose adapter is merged first) is switched to ``joint``
mode (instruction, image and text in one sequence), adapted with LoRA on the whole MLLM by default,
and trained on MMEB-train with :class:`~unime.losses.HardNegativeInfoNCELoss`: false negatives
filtered with a margin, the k hardest survivors as negatives, InfoNCE with temperature, candidates
gathered across devices and mined from the global batch, on sentence-transformers' GradCache engine
when ``mini_batch_size`` is set. Each log line carries the loss, the gradient norm, the share of
candidates dropped as false negatives and the mean similarity of the chosen negatives.

``loss: unime-v2`` trains instead on a judge file (:mod:`unime.training.judge_data`) with UniME-V2's
soft-label loss (:class:`~unime.losses.SoftLabelKLLoss`); ``loss: both`` adds the InfoNCE term on
the same embeddings.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from unime.training.recipes import GRADCACHE_DEEPSPEED_ERROR, TuneRecipe

__all__ = ["GRADCACHE_DEEPSPEED_ERROR", "TuneRecipe", "build_trainer", "check_launch", "tune"]

logger = logging.getLogger(__name__)

STAGE = "tune"
# peft's name for every linear layer but the output head: with scope "all", LoRA on the whole MLLM
# (vision tower, projector and LLM). The backbones' decoder-linear regex misses vision towers whose
# layers are named otherwise (Qwen2-VL's qkv / proj / fc1 / fc2, the projectors' linear_1 / linear_2).
WHOLE_MODEL_TARGETS = "all-linear"
ACCELERATE_DIR = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"
SUMMARY_FILE = "tune_data.json"

def deepspeed_enabled(recipe: TuneRecipe) -> bool:
    """Whether this run will use DeepSpeed: a ``deepspeed`` config in the recipe, or a launch through
    ``accelerate launch`` with a DeepSpeed config (which sets ``ACCELERATE_USE_DEEPSPEED``)."""
    from_env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").strip().lower() in ("1", "true", "yes")
    return from_env or bool(recipe.deepspeed)


def check_launch(recipe: TuneRecipe) -> None:
    """Refuse the combinations that would train wrongly, before anything is loaded."""
    recipe.check_gradcache_deepspeed(deepspeed_enabled(recipe))


def resolve_deepspeed(value: str) -> str:
    """A DeepSpeed JSON config: a path, or the name of a packaged one (``deepspeed-zero2``)."""
    path = Path(value)
    if path.is_file():
        return str(path)
    packaged = ACCELERATE_DIR / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if not path.parent.parts and packaged.is_file():
        return str(packaged)
    known = ", ".join(sorted(p.stem for p in ACCELERATE_DIR.glob("*.json")))
    raise FileNotFoundError(f"deepspeed config not found: {value} (packaged: {known})")


def prepare_model(model: Any, recipe: TuneRecipe) -> None:
    """Joint mode (one sequence per input, as MMEB) and the training image size, saved with the
    model; the rows are fed in the recipe's ``input_format`` with images resized to ``image_size``.
    The format is not saved: the trained model embeds with its prompts and the processor's own image
    size until a protocol asks otherwise (the MMEB evaluation's VLM2Vec protocol is the raw format)."""
    from unime.formats import training_format

    model.update_config(mode="joint", image_size=recipe.image_size)
    model.set_input_format(training_format(recipe.input_format, recipe.image_size))


def check_batchable(data: Any, recipe: TuneRecipe) -> None:
    """Warn about data sets too small for one global batch (never drawn), fail when none is large enough."""
    small = [f"{name} ({len(ds)} rows)" for name, ds in data.datasets.items() if len(ds) < recipe.batch_size]
    if len(small) == len(data.datasets):
        raise ValueError(f"no data set holds a full batch of {recipe.batch_size} rows: {', '.join(small)}; "
                         "lower --batch-size")
    if small:
        logger.warning("data sets smaller than one batch of %d are never drawn: %s", recipe.batch_size,
                       ", ".join(small))


def build_loss(model: Any, recipe: TuneRecipe) -> Any:
    from unime.losses import HardNegativeInfoNCELoss, SoftLabelKLLoss

    if recipe.loss != "unime":
        return SoftLabelKLLoss(
            model,
            temperature=recipe.soft_label_temperature,
            infonce_weight=recipe.infonce_weight if recipe.loss == "both" else 0.0,
            infonce_temperature=recipe.temperature,
            num_hard_negatives=recipe.num_hard_negatives,
            false_negative_margin=recipe.false_negative_margin,
            mini_batch_size=recipe.mini_batch_size,
            gather_across_devices=recipe.gather_across_devices,
        )
    return HardNegativeInfoNCELoss(
        model,
        temperature=recipe.temperature,
        num_hard_negatives=recipe.num_hard_negatives,
        false_negative_margin=recipe.false_negative_margin,
        negatives=recipe.negatives,
        mini_batch_size=recipe.mini_batch_size,
        gather_across_devices=recipe.gather_across_devices,
        exclude_duplicates=recipe.exclude_duplicates,
    )


def build_trainer(model: Any, data: Any, recipe: TuneRecipe, callbacks: list[Any] | None = None) -> Any:
    """The trainer of a stage-2 run: per-data-set batches (all ranks on one data set per step), the
    row-naming collator and the hard-negative loss."""
    from unime.environment import rank_and_world_size
    from unime.training.mmeb_data import MMEBTrainCollator, batch_sampler_factory
    from unime.training.trainer import UniMETrainer, training_arguments, with_matryoshka

    # Before the trainer creates the process group, the launcher's WORLD_SIZE says how many ranks share it.
    ranks = rank_and_world_size()[1]
    sampler = batch_sampler_factory(list(data.datasets), recipe.dataset_weights, recipe.sampling, ranks)
    extra: dict[str, Any] = {"multi_dataset_batch_sampler": sampler}
    if recipe.deepspeed:
        extra["deepspeed"] = resolve_deepspeed(recipe.deepspeed)
    args = training_arguments(recipe, **extra)
    if recipe.loss != "unime":
        from unime.training.judge_data import JudgeTrainCollator

        collator = JudgeTrainCollator(preprocess_fn=model.preprocess, skip_bad_rows=recipe.skip_bad_rows)
    else:
        collator = MMEBTrainCollator(preprocess_fn=model.preprocess, skip_bad_rows=recipe.skip_bad_rows,
                                     video_frames=model.unime_config.video_frames)
    loss = with_matryoshka(build_loss(model, recipe), model, recipe.matryoshka_dims)
    trainer = UniMETrainer(model=model, args=args, train_dataset=data.datasets, loss=loss,
                           data_collator=collator, callbacks=callbacks)
    # DeepSpeed can also come from an accelerate config that the environment does not show.
    recipe.check_gradcache_deepspeed(bool(getattr(trainer, "is_deepspeed_enabled", False)))
    return trainer


def tune(recipe: TuneRecipe, *, callbacks: list[Any] | None = None) -> Path:
    """Run stage 2 and save the model to ``recipe.output_dir``; returns that folder.

    Order: refuse bad launches, read and validate the data (fails before the model is loaded),
    load the model (merging a stage-1 adapter), joint mode and image size, adapter, train (resuming
    from the last complete checkpoint with ``resume``), save with stage ``"tune"`` recorded and a
    ``tune_data.json`` of the rows used and skipped. ``callbacks`` are Hugging Face
    ``TrainerCallback`` objects passed to the trainer.
    """
    from unime.training.stage import run_stage

    return run_stage(STAGE, recipe, _setup, callbacks, checks=(check_launch,))


def _setup(recipe: TuneRecipe, callbacks: list[Any] | None) -> Any:
    """Data (read and validated before the model loads), model, adapter and trainer of a stage-2 run."""
    from unime.training.adapters import apply_tuning, load_for_tuning
    from unime.training.mmeb_data import load_mmeb_train
    from unime.training.stage import StageRun
    from unime.training.trainer import seed_everything

    if recipe.loss != "unime":
        from unime.training.judge_data import load_judge_train

        data = load_judge_train(recipe.judge_file, recipe.image_root, negatives=recipe.judge_negatives,
                                skip_bad_rows=recipe.skip_bad_rows)
    else:
        data = load_mmeb_train(recipe.data, recipe.image_root, datasets=recipe.datasets, split=recipe.split,
                               max_rows_per_dataset=recipe.max_rows_per_dataset, skip_bad_rows=recipe.skip_bad_rows,
                               explicit_negatives=recipe.explicit_negatives)
    check_batchable(data, recipe)
    model = load_for_tuning(recipe.model, method=recipe.tuning, scope=recipe.scope,
                            trust_remote_code=recipe.trust_remote_code)
    prepare_model(model, recipe)
    # Seeded right before the adapter is drawn, so its initialisation does not depend on loading.
    seed_everything(recipe.seed)
    targets = recipe.lora_target_regex or (WHOLE_MODEL_TARGETS if recipe.scope == "all" else None)
    apply_tuning(model, recipe.tuning, recipe.scope, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout,
                 targets if recipe.tuning != "full" else None,
                 recipe.modules_to_save if recipe.tuning != "full" else None)
    trainer = build_trainer(model, data, recipe, callbacks)

    def record(output: Path, result: Any, seconds: float) -> None:
        from unime.io.integrity import write_json_atomic

        summary = {"datasets": data.summary(), "skipped_while_batching": trainer.data_collator.skipped}
        write_json_atomic(output / SUMMARY_FILE, summary, indent=2)

    return StageRun(trainer, model, record=record)
