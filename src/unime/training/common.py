"""The training layer shared by both UniME stages, on top of sentence-transformers' trainer.

- :func:`load_for_tuning`, :func:`apply_tuning`, :func:`merge_adapter`: which parameters learn.
  LoRA / QLoRA adapt the decoder linears (of the LLM alone in scope ``"llm"``); ``full`` unfreezes
  the scope. In scope ``"llm"`` the vision tower and the projector never reach the optimiser.
- :class:`UniMETrainer`: ``SentenceTransformerTrainer`` with atomic checkpoints, resume from the last
  complete checkpoint, and the loss's ``last_stats`` in every log line.
- :class:`TrainRecipe`: the settings both stages share, loaded from YAML, overridden by CLI flags,
  validated in ``__post_init__``; :func:`save_final` writes the trained model and its recipe.

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

import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

logger = logging.getLogger(__name__)

TUNING_METHODS = ("lora", "qlora", "full")
SCOPES = ("llm", "all")
RECIPE_FILE = "unime_recipe.yaml"
CHECKPOINT_SUBDIR = "checkpoints"
_STAGING = ".staging"
# Mean cosine of both the positives and the chosen negatives to their queries at or above which a
# stage-2 run is reported as collapsing (every input embedded alike).
COLLAPSE_SIMILARITY = 0.99
_RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _submodule(root: torch.nn.Module, dotted: str) -> torch.nn.Module | None:
    """The module at ``dotted`` inside ``root``, also when ``root`` wraps it under a prefix."""
    for name, module in root.named_modules():
        if name == dotted or name.endswith("." + dotted):
            return module
    return None


def vision_modules(model: Any) -> dict[str, torch.nn.Module]:
    """The vision tower and projector of a UniME model, by their dotted path (frozen in scope "llm")."""
    found = {}
    for path in model[0].backbone.vision_modules:
        module = _submodule(model[0].model, path)
        if module is not None:
            found[path] = module
    return found


def _quantization_config(backbone: Any, scope: str) -> Any:
    """4-bit NF4 (QLoRA, Dettmers et al. 2023); in scope "llm" the vision side stays unquantised."""
    from transformers import BitsAndBytesConfig

    skip = list(backbone.vision_modules) + ["lm_head"] if scope == "llm" else ["lm_head"]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
        llm_int8_skip_modules=[name.split(".")[-1] for name in skip],
    )


def load_for_tuning(
    model_path: str,
    *,
    method: str = "lora",
    scope: str = "llm",
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
    """Load a UniME model ready for :func:`apply_tuning`.

    QLoRA must quantise while loading, so the method is needed here: ``"qlora"`` loads the weights
    of the scope in 4-bit NF4 (bitsandbytes). A model saved with an unmerged LoRA adapter (e.g. a
    stage-1 output written with ``merge: false``) is merged first, so a new adapter starts from it.
    """
    import unime
    from unime.modeling import read_model_type

    _check_choice("tuning", method, TUNING_METHODS)
    _check_choice("scope", scope, SCOPES)
    model_kwargs: dict[str, Any] = {}
    if method == "qlora":
        from unime.backbones import get_backbone

        backbone = get_backbone(read_model_type(model_path, trust_remote_code))
        model_kwargs["quantization_config"] = _quantization_config(backbone, scope)
    model = unime.load(model_path, trust_remote_code=trust_remote_code, device=device, dtype=dtype,
                       model_kwargs=model_kwargs)
    if has_adapter(model):
        if method == "qlora":
            raise ValueError(f"{model_path}: holds an unmerged LoRA adapter; merge it before QLoRA "
                             "(save it with merge: true), adapters cannot be merged into 4-bit weights")
        merge_adapter(model)
    return model


def has_adapter(model: Any) -> bool:
    """Whether the model's backbone carries a (peft) adapter."""
    return bool(getattr(model[0].model, "_hf_peft_config_loaded", False))


def is_quantized(model: Any) -> bool:
    return bool(getattr(model[0].model, "is_loaded_in_4bit", False) or getattr(model[0].model, "is_loaded_in_8bit", False))


def apply_tuning(
    model: Any,
    method: str = "lora",
    scope: str = "llm",
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    target_regex: str | None = None,
    modules_to_save: list[str] | None = None,
) -> dict[str, int]:
    """Choose what learns, in place, and return ``{"trainable": n, "total": N}`` parameter counts.

    ``lora``/``qlora``: a LoRA adapter (peft, through sentence-transformers' ``add_adapter``) on the
    linears matched by ``target_regex``, by default the backbone's decoder linears
    (``backbone.lora_target_regex(scope == "llm")``); every other weight is frozen. ``qlora`` needs a
    model loaded 4-bit by :func:`load_for_tuning`. ``full``: every weight of the scope learns (the LLM
    alone, or the whole model). ``modules_to_save`` (LoRA only) names modules trained in full beside
    the adapter, e.g. a randomly initialised vision tower and projector that LoRA alone cannot
    teach. Seed the RNG before calling: the LoRA A matrices start random.
    """
    _check_choice("tuning", method, TUNING_METHODS)
    _check_choice("scope", scope, SCOPES)
    if (method == "qlora") != is_quantized(model):
        raise ValueError("tuning 'qlora' needs, and only it can train, a model loaded in 4 bits "
                         "(load_for_tuning(method='qlora'))")
    if has_adapter(model):
        raise ValueError("the model already carries a LoRA adapter; merge_adapter(model) first")
    if method == "full":
        _unfreeze(model, scope, target_regex)
    else:
        _add_lora(model, method, scope, lora_r, lora_alpha, lora_dropout, target_regex, modules_to_save)
    if scope == "llm":
        # A pattern given by hand must not reach the vision side either.
        for path, module in vision_modules(model).items():
            if any(p.requires_grad for p in module.parameters()):
                raise ValueError(f"scope 'llm' but parameters of {path!r} would train (check target_regex)")
    counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "total": sum(p.numel() for p in model.parameters())}
    logger.info("tuning %s (scope %s): %d of %d parameters train (%.2f%%)", method, scope,
                counts["trainable"], counts["total"], 100 * counts["trainable"] / max(counts["total"], 1))
    return counts


def _unfreeze(model: Any, scope: str, target_regex: str | None) -> None:
    if target_regex is not None:
        raise ValueError("target_regex only applies to LoRA / QLoRA tuning")
    model.requires_grad_(scope == "all")
    if scope == "llm":
        backbone = model[0].backbone
        llm = _submodule(model[0].model, backbone.llm_module)
        if llm is None:
            raise ValueError(f"no module {backbone.llm_module!r} in the {backbone.family} model")
        llm.requires_grad_(True)


def _add_lora(model: Any, method: str, scope: str, r: int, alpha: int, dropout: float, target_regex: str | None,
              modules_to_save: list[str] | None = None) -> None:
    from peft import LoraConfig, prepare_model_for_kbit_training

    if r <= 0 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"invalid LoRA settings r={r}, alpha={alpha}, dropout={dropout}")
    if method == "qlora":
        prepare_model_for_kbit_training(model[0].model, use_gradient_checkpointing=False)
    backbone = model[0].backbone
    regex = target_regex or backbone.lora_target_regex(scope == "llm")
    try:
        model.add_adapter(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=regex,
                                     modules_to_save=list(modules_to_save) if modules_to_save else None))
    except ValueError as error:
        raise ValueError(f"LoRA target_regex {regex!r} matched no layer of the {backbone.family} model: {error}") from None


def merge_adapter(model: Any) -> bool:
    """Fold a LoRA adapter into the weights it adapts and drop it (in place); False if there was none.

    After merging, saving writes the full weights, so the model loads without the base model and a
    new adapter (stage 2) can start from it.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    hf_model = model[0].model
    if not has_adapter(model):
        return False
    if is_quantized(model):
        raise ValueError("cannot merge a LoRA adapter into 4-bit weights; reload the base unquantised")
    names = [name for name, module in hf_model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = hf_model.get_submodule(parent_name) if parent_name else hf_model
        layer = getattr(parent, child)
        layer.merge()
        setattr(parent, child, layer.get_base_layer())
    if hasattr(hf_model, "peft_config"):
        del hf_model.peft_config
    hf_model._hf_peft_config_loaded = False
    return True


def _check_choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


class UniMETrainer(SentenceTransformerTrainer):
    """``SentenceTransformerTrainer`` with three narrow additions for long runs.

    - Atomic checkpoints: each ``checkpoint-N`` is written into a staging folder beside it and renamed
      into place once complete, so a killed run never leaves a half-written ``checkpoint-N`` that
      resuming would pick up.
    - The loss's ``last_stats`` (a ``dict[str, float]`` refreshed by each forward, e.g. the stage-2
      mining statistics), averaged over the logging interval, join each log line.
    - Training arguments are saved as JSON (``training_args.json``) beside the checkpoint, not pickled.
    - A warning, once, when the logged mining statistics show the embeddings collapsing (see
      :data:`COLLAPSE_SIMILARITY`).

    Resume with ``trainer.train(resume_from_checkpoint=last_checkpoint(output_dir))``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._staging_dir: str | None = None
        self._stats_sum: dict[str, float] = {}
        self._stats_count = 0
        self._collapse_warned = False

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss_fn = self.loss if not isinstance(self.loss, dict) else None
        stats = getattr(loss_fn, "last_stats", None) if model.training else None
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
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        # Every rank writes its RNG state into the staging folder before it moves.
        self.accelerator.wait_for_everyone()
        if self.is_world_process_zero():
            final = os.path.join(run_dir, name)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        super()._save(output_dir, state_dict)
        folder = output_dir or self.args.output_dir
        pickled = os.path.join(folder, "training_args.bin")
        if os.path.isfile(pickled):
            os.remove(pickled)
        Path(folder, "training_args.json").write_text(self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        # With an adapter only the adapter weights change: load those, not a second full model
        # (which for QLoRA could not even be loaded into the 4-bit layers by state dict).
        adapter_file = Path(resume_from_checkpoint, "adapter_model.safetensors")
        if has_adapter(self.model) and adapter_file.is_file():
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            result = set_peft_model_state_dict(self.model[0].model, load_file(str(adapter_file)))
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ValueError(f"{adapter_file}: adapter weights do not fit this model: {unexpected[:3]}")
            return
        super()._load_from_checkpoint(resume_from_checkpoint)


def last_checkpoint(folder: str | Path) -> str | None:
    """The last complete ``checkpoint-N`` in ``folder`` (staging folders are never complete), or None."""
    folder = Path(folder)
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: a path, or the name of a packaged recipe (``distill-cpu`` or ``distill-cpu.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = _RECIPES_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if not path.parent.parts and packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in _RECIPES_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"recipe not found: {name_or_path} (packaged recipes: {known})")


@dataclass
class TrainRecipe:
    """Settings shared by both stages; each stage subclasses it with its data and loss settings.

    Attributes:
        model: model folder or hub id to start from (a UniME model or a base MLLM).
        output_dir: where the trained model goes; checkpoints go to ``output_dir/checkpoints``.
        tuning: ``lora``, ``qlora`` (extra ``unime[qlora]``) or ``full``.
        scope: ``llm`` (the language model alone; vision tower and projector frozen) or ``all``.
        lora_r, lora_alpha, lora_dropout, lora_target_regex: LoRA settings; the regex defaults to
            the backbone's decoder linears in the scope.
        modules_to_save: modules trained in full beside the LoRA adapter (e.g. a randomly
            initialised vision tower and projector, as in the CPU default model).
        learning_rate, warmup_steps, weight_decay, lr_scheduler, max_grad_norm: AdamW and schedule.
        max_steps: optimiser steps; -1 runs ``epochs`` epochs.
        batch_size: rows per optimiser step on all devices together (each of W devices gets
            batch_size / W); the loss sees this whole batch (see the module docstring).
        mini_batch_size: GradCache chunk size, so the batch is not bounded by activation memory.
        gradient_accumulation_steps: micro-batches per optimiser step.
        bf16: bf16 autocast (on this project's CPU 2-3.5x faster than fp32).
        seed: seeds the LoRA initialisation, the data order and dropout: same seed, same run.
        logging_steps, save_steps, save_total_limit: logging and checkpoint cadence.
        resume: continue from the last complete checkpoint in ``output_dir/checkpoints``.
        merge: fold the adapter into the saved weights (a self-contained model); False saves the
            adapter alone, which loads on top of the base model.
        trust_remote_code: allow hub remote code (Phi-3.5-V).
    """

    model: str = ""
    output_dir: str = ""
    tuning: str = "lora"
    scope: str = "llm"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_regex: str | None = None
    modules_to_save: list[str] | None = None
    learning_rate: float = 2e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    max_steps: int = -1
    epochs: float = 1.0
    batch_size: int = 32
    mini_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    bf16: bool = False
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 50
    save_total_limit: int | None = 2
    resume: bool = False
    merge: bool = True
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _check_choice("tuning", self.tuning, TUNING_METHODS)
        _check_choice("scope", self.scope, SCOPES)
        for name in ("lora_r", "lora_alpha", "batch_size", "gradient_accumulation_steps", "logging_steps",
                     "save_steps", "mini_batch_size", "save_total_limit"):
            value = getattr(self, name)
            if not (value is None and name in ("mini_batch_size", "save_total_limit")):
                _positive(name, value)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_target_regex is not None:
            try:
                re.compile(self.lora_target_regex)
            except re.error as error:
                raise ValueError(f"lora_target_regex {self.lora_target_regex!r} is not a regex: {error}") from None
        if not self.learning_rate > 0 or self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("learning_rate must be positive; warmup_steps, weight_decay, max_grad_norm not negative")
        if self.max_steps == 0 or self.max_steps < -1 or (self.max_steps == -1 and not self.epochs > 0):
            raise ValueError(f"max_steps must be positive (or -1 with epochs > 0), got {self.max_steps}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> TrainRecipe:
        """Build from a mapping; an unknown key is an error naming the key and ``source``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a recipe is a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainRecipe:
        """Load a YAML recipe (a path or a packaged recipe name, see :func:`resolve_recipe`)."""
        path = resolve_recipe(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        return cls.from_dict(data, source=str(path))

    def override(self, **flags: Any) -> TrainRecipe:
        """A copy with the settings given (None means "not given", as for unset CLI flags), re-validated."""
        given = {key: value for key, value in flags.items() if value is not None}
        unknown = sorted(set(given) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
        return replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / CHECKPOINT_SUBDIR

    def training_arguments(self, **extra: Any) -> SentenceTransformerTrainingArguments:
        """The trainer arguments of this recipe (the batch split evenly over the processes)."""
        ranks = int(os.environ.get("WORLD_SIZE", "1"))
        if self.batch_size % ranks:
            raise ValueError(f"batch_size {self.batch_size} does not split over {ranks} processes")
        settings: dict[str, Any] = dict(
            output_dir=str(self.checkpoint_dir()), per_device_train_batch_size=self.batch_size // ranks,
            gradient_accumulation_steps=self.gradient_accumulation_steps, learning_rate=self.learning_rate,
            warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, lr_scheduler_type=self.lr_scheduler,
            max_grad_norm=self.max_grad_norm, max_steps=self.max_steps, num_train_epochs=self.epochs, bf16=self.bf16,
            seed=self.seed, data_seed=self.seed, logging_steps=self.logging_steps, save_strategy="steps",
            save_steps=self.save_steps, save_total_limit=self.save_total_limit, report_to="none",
            # The in-batch losses need full batches, and equal shards keep the ranks in step.
            dataloader_drop_last=True,
            ddp_backend="gloo" if ranks > 1 and not torch.cuda.is_available() else None,
            # Without it the trainer refuses bf16 autocast on a machine without a GPU.
            use_cpu=not torch.cuda.is_available(),
            # Vision-side adapters get no gradient from text-only batches in scope "all".
            ddp_find_unused_parameters=self.scope == "all",
        )
        settings.update(extra)
        return SentenceTransformerTrainingArguments(**settings)


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the LoRA initialisation draws from torch's RNG)."""
    from transformers import set_seed

    set_seed(seed)


def save_final(model: Any, output_dir: str | Path, stage_name: str, recipe: TrainRecipe | None = None) -> Path:
    """Save a trained model as a UniME model, record the stage, and write the recipe beside it.

    The stage joins ``model[0].unime_config.stages``. With ``recipe.merge`` (the default) an adapter
    is folded into the weights first (a 4-bit model is reloaded unquantised for that). Everything is
    written into a temporary folder beside ``output_dir`` and moved in, ``modules.json`` last: a
    folder that loads is a complete one, also when the run is killed during the save. Checkpoints in
    ``output_dir/checkpoints`` are left alone. Only the main process writes.
    """
    output_dir = Path(output_dir)
    if recipe is not None and recipe.merge and has_adapter(model):
        if is_quantized(model):
            model = _merged_copy(model)
        else:
            merge_adapter(model)
    config = model[0].unime_config
    if config.stages[-1:] != [stage_name]:
        config.stages.append(stage_name)
    if int(os.environ.get("RANK", "0")) != 0:
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save(str(staging))
        if recipe is not None:
            (staging / RECIPE_FILE).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        # A weights file of an earlier save that this one lacks (adapter vs merged) would mislead loading.
        written = {p.name for p in staging.iterdir()}
        for stale in [output_dir / "modules.json", *output_dir.glob("adapter_*"), *output_dir.glob("model*.safetensors*")]:
            if stale.is_file() and (stale.name == "modules.json" or stale.name not in written):
                stale.unlink()
        entries = sorted(staging.iterdir(), key=lambda p: p.name == "modules.json")
        for entry in entries:
            target = output_dir / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved the %s model to %s", stage_name, output_dir)
    return output_dir


def _merged_copy(model: Any) -> Any:
    """A 4-bit model's adapter merged into an unquantised reload of its base weights."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    import unime

    adapter_state = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model[0].model).items()}
    peft_config = model[0].model.peft_config["default"]
    base = model[0].model.config._name_or_path
    fresh = unime.load(base, trust_remote_code=bool(model.trust_remote_code))
    fresh[0].unime_config = model[0].unime_config
    fresh.add_adapter(peft_config)
    set_peft_model_state_dict(fresh[0].model, adapter_state)
    merge_adapter(fresh)
    return fresh
