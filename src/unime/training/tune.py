"""Stage 2 of UniME: hard-negative enhanced instruction tuning (``unime tune``).

The model (a base MLLM, or a stage-1 output whose adapter is merged first) is switched to ``joint``
mode (instruction, image and text in one sequence), adapted with LoRA on the whole MLLM by default,
and trained on MMEB-train with :class:`~unime.losses.HardNegativeInfoNCELoss`: false negatives
filtered with a margin, the k hardest survivors as negatives, InfoNCE with temperature, candidates
gathered across devices and mined from the global batch, on sentence-transformers' GradCache engine
when ``mini_batch_size`` is set. Each log line carries the loss, the gradient norm, the share of
candidates dropped as false negatives and the mean similarity of the chosen negatives.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unime.losses.hard_negative import NEGATIVE_MODES
from unime.training.common import TrainRecipe
from unime.training.mmeb_data import SAMPLING

logger = logging.getLogger(__name__)

STAGE = "tune"
# peft's name for every linear layer but the output head: with scope "all", LoRA on the whole MLLM
# (vision tower, projector and LLM). The backbones' decoder-linear regex misses vision towers whose
# layers are named otherwise (Qwen2-VL's qkv / proj / fc1 / fc2, the projectors' linear_1 / linear_2).
WHOLE_MODEL_TARGETS = "all-linear"
ACCELERATE_DIR = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"
SUMMARY_FILE = "tune_data.json"

GRADCACHE_DEEPSPEED_ERROR = (
    "mini_batch_size (GradCache) cannot run under DeepSpeed: GradCache re-embeds every mini-batch "
    "inside the backward pass and relies on DDP's no_sync to reduce the gradients once per step; "
    "DeepSpeed has no no_sync and its ZeRO hooks would reduce partial gradients at every mini-batch, "
    "so the run would train silently wrong. Launch with DDP (torchrun, or an accelerate config "
    "without DeepSpeed, see docs/multi-node.md) to keep GradCache, or set mini_batch_size to null "
    "(--mini-batch-size 0) with a batch that fits in memory for DeepSpeed."
)


@dataclass
class TuneRecipe(TrainRecipe):
    """Stage-2 settings; the defaults are the paper's (UniME-V2's released values where V1 is silent).

    With ``scope: all`` and no ``lora_target_regex``, LoRA adapts every linear layer of the MLLM
    (peft's ``all-linear``: vision tower, projector and LLM, not the output head).

    Attributes (beyond :class:`~unime.training.common.TrainRecipe`):
        data: MMEB-train folder (one sub-folder or file per data set) or one data file.
        image_root: folder the image paths of the data are relative to.
        datasets: names of the data sets to use (all found when None).
        split: inside data set folders, read only files whose name starts with it (``original`` for
            the hub's MMEB-train, which also holds ``diverse_instruction-*`` files); None reads all.
        max_rows_per_dataset: the first N good rows of each data set (50k in the paper); None: all.
        dataset_weights: name -> weight; a data set contributes about weight x its share of batches.
        sampling: ``proportional`` (batches in proportion to size x weight) or ``round_robin``.
        skip_bad_rows: leave out (and count) rows with a missing/unreadable image or an empty side,
            instead of stopping with an error that names the data set and the row.
        explicit_negatives: add the data's ``neg_text``/``neg_image_path`` to the candidate pool
            (for data sets where every row has one).
        image_size: square resize of every image before the processor (336 as the paper); saved in
            the model's ``unime_config``, so inference uses it too. None keeps the processor's own.
        temperature, num_hard_negatives, false_negative_margin, negatives: the loss (tau 0.02, k 8,
            margin 0.1, "hard"; "random", "easy" and "all" for the paper's ablations).
        exclude_duplicates: never use as a negative a candidate with exactly the positive's content
            (same text and image path, e.g. a class label repeated in the batch). The paper does not
            say; its margin rule cannot catch such copies (their similarity equals the positive's),
            so without this the loss floors at ln(k + 1). False reproduces the plain margin rule.
        gather_across_devices: mine the negatives from the global batch of all ranks.
        deepspeed: a DeepSpeed JSON config for the trainer, a path or a packaged name
            (``deepspeed-zero2``); needs mini_batch_size null (see :data:`GRADCACHE_DEEPSPEED_ERROR`).
    """

    scope: str = "all"
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    learning_rate: float = 1e-4
    warmup_steps: int = 200
    max_steps: int = 2000
    batch_size: int = 1024
    mini_batch_size: int | None = 2
    bf16: bool = True
    logging_steps: int = 1
    save_steps: int = 200
    data: str = ""
    image_root: str = ""
    datasets: list[str] | None = None
    split: str | None = None
    max_rows_per_dataset: int | None = 50_000
    dataset_weights: dict[str, float] | None = None
    sampling: str = "proportional"
    skip_bad_rows: bool = False
    explicit_negatives: bool = True
    image_size: int | None = 336
    temperature: float = 0.02
    num_hard_negatives: int = 8
    false_negative_margin: float = 0.1
    negatives: str = "hard"
    exclude_duplicates: bool = True
    gather_across_devices: bool = True
    deepspeed: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        if self.negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {', '.join(NEGATIVE_MODES)}, got {self.negatives!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if not isinstance(self.false_negative_margin, (int, float)) or math.isnan(self.false_negative_margin):
            raise ValueError(f"false_negative_margin must be a number, got {self.false_negative_margin!r}")
        for name in ("num_hard_negatives", "max_rows_per_dataset", "image_size"):
            value = getattr(self, name)
            if name != "num_hard_negatives" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.datasets is not None and (not isinstance(self.datasets, list) or not self.datasets
                                          or not all(isinstance(n, str) for n in self.datasets)):
            raise ValueError(f"datasets must be a non-empty list of data set names, got {self.datasets!r}")
        if self.dataset_weights is not None:
            if not isinstance(self.dataset_weights, dict) or not all(
                    isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0
                    for w in self.dataset_weights.values()):
                raise ValueError(f"dataset_weights must map data set names to positive numbers, got {self.dataset_weights!r}")
            if self.sampling != "proportional":
                raise ValueError("dataset_weights need sampling 'proportional'")
        if self.mini_batch_size is not None and self.deepspeed:
            raise ValueError(GRADCACHE_DEEPSPEED_ERROR)

    def require_inputs(self) -> None:
        """The settings a run needs that no default can give, named as the CLI flags."""
        missing = [f"--{name.replace('_', '-')}" for name in ("model", "data", "image_root", "output_dir")
                   if not getattr(self, name)]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)} (in the recipe or as flags)")


def deepspeed_enabled(recipe: TuneRecipe) -> bool:
    """Whether this run will use DeepSpeed: a ``deepspeed`` config in the recipe, or a launch through
    ``accelerate launch`` with a DeepSpeed config (which sets ``ACCELERATE_USE_DEEPSPEED``)."""
    from_env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").strip().lower() in ("1", "true", "yes")
    return from_env or bool(recipe.deepspeed)


def check_launch(recipe: TuneRecipe) -> None:
    """Refuse the combinations that would train wrongly, before anything is loaded."""
    if recipe.mini_batch_size is not None and deepspeed_enabled(recipe):
        raise ValueError(GRADCACHE_DEEPSPEED_ERROR)


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


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def prepare_model(model: Any, recipe: TuneRecipe) -> None:
    """Joint mode (one sequence per input, as MMEB) and the training image size, saved with the model."""
    from unime.config import UniMEConfig

    config = model[0].unime_config
    model[0].unime_config = UniMEConfig.from_dict({**config.to_dict(), "mode": "joint",
                                                   "image_size": recipe.image_size})


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
    from unime.losses import HardNegativeInfoNCELoss

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
    from unime.training.common import UniMETrainer
    from unime.training.mmeb_data import MMEBTrainCollator, batch_sampler_factory

    sampler = batch_sampler_factory(list(data.datasets), recipe.dataset_weights, recipe.sampling, world_size())
    extra: dict[str, Any] = {"multi_dataset_batch_sampler": sampler}
    if recipe.deepspeed:
        extra["deepspeed"] = resolve_deepspeed(recipe.deepspeed)
    args = recipe.training_arguments(**extra)
    collator = MMEBTrainCollator(preprocess_fn=model.preprocess, skip_bad_rows=recipe.skip_bad_rows)
    trainer = UniMETrainer(model=model, args=args, train_dataset=data.datasets, loss=build_loss(model, recipe),
                           data_collator=collator, callbacks=callbacks)
    if getattr(trainer, "is_deepspeed_enabled", False) and recipe.mini_batch_size is not None:
        raise ValueError(GRADCACHE_DEEPSPEED_ERROR)
    return trainer


def tune(recipe: TuneRecipe, *, callbacks: list[Any] | None = None) -> Path:
    """Run stage 2 and save the model to ``recipe.output_dir``; returns that folder.

    Order: refuse bad launches, read and validate the data (fails before the model is loaded),
    load the model (merging a stage-1 adapter), joint mode and image size, adapter, train (resuming
    from the last complete checkpoint with ``resume``), save with stage ``"tune"`` recorded and a
    ``tune_data.json`` of the rows used and skipped. ``callbacks`` are Hugging Face
    ``TrainerCallback`` objects passed to the trainer.
    """
    from unime.training.common import (
        apply_tuning,
        last_checkpoint,
        load_for_tuning,
        save_final,
        seed_everything,
    )
    from unime.training.mmeb_data import load_mmeb_train

    recipe.require_inputs()
    check_launch(recipe)
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
    checkpoint = last_checkpoint(recipe.checkpoint_dir()) if recipe.resume else None
    if recipe.resume:
        logger.info("resuming from %s", checkpoint or "scratch (no complete checkpoint yet)")
    trainer.train(resume_from_checkpoint=checkpoint)
    output = save_final(model, recipe.output_dir, STAGE, recipe)
    if trainer.is_world_process_zero():
        summary = {"datasets": data.summary(), "skipped_while_batching": trainer.data_collator.skipped}
        (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return output
