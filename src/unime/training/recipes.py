"""The recipes of the training stages: documented dataclasses, validated in ``__post_init__``.

A recipe is every setting of a run. It is loaded from YAML (a path, or the name of a packaged
recipe in ``unime/recipes``), and the command line derives one flag per field from these classes
(:mod:`unime.cli.recipe_flags`), so every field can be overridden and the help text of a flag is
the ``help`` of its field. This module imports neither torch nor transformers: building the
command line stays fast, and a recipe can be checked before anything heavy is loaded.

Field metadata read by the command line: ``help``; ``choices``; ``null_flag`` (the flag value that
sets the field to null, e.g. ``--mini-batch-size 0`` turns GradCache off); ``aliases`` (older flag
spellings kept working).
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from unime.choices import (
    ALIGN_SCOPES,
    ALIGN_TUNING,
    BF16_SETTINGS,
    CACHE_DTYPES,
    DIRECTIONS,
    INPUT_STYLES,
    LOSSES,
    LR_SCHEDULERS,
    NEGATIVE_MODES,
    SAMPLING,
    SCOPES,
    TUNING_METHODS,
    choice_name,
)
from unime.environment import check_bf16_setting

RECIPE_FILE = "unime_recipe.yaml"
BF16_HELP = ("bf16 autocast: auto (bf16 where the device has native bf16 kernels: a GPU with bf16, a CPU with "
             "AMX or AVX512-BF16; float32 elsewhere), true or false")
CHECKPOINT_SUBDIR = "checkpoints"
CACHE_SUBDIR = "teacher-cache"
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

GRADCACHE_DEEPSPEED_ERROR = (
    "mini_batch_size (GradCache) cannot run under DeepSpeed: GradCache re-embeds every mini-batch "
    "inside the backward pass and relies on DDP's no_sync to reduce the gradients once per step; "
    "DeepSpeed has no no_sync and its ZeRO hooks would reduce partial gradients at every mini-batch, "
    "so the run would train silently wrong. Launch with DDP (torchrun, or an accelerate config "
    "without DeepSpeed, see docs/multi-node.md) to keep GradCache, or set mini_batch_size to null "
    "(--mini-batch-size 0) with a batch that fits in memory for DeepSpeed."
)


def setting(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, **meta: Any) -> Any:
    """A recipe field with the metadata the command line reads (``help``, ``choices``, ...)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: a path, or the name of a packaged recipe (``distill-cpu`` or ``distill-cpu.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if not path.parent.parts and packaged.is_file():
        return packaged
    raise FileNotFoundError(f"recipe not found: {name_or_path} (packaged recipes: {', '.join(packaged_recipes())})")


def packaged_recipes(prefix: str = "") -> list[str]:
    """Names of the packaged recipes, optionally only those starting with ``prefix`` (e.g. ``tune-``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob(f"{prefix}*.yaml"))


def _matches(hint: Any, value: Any) -> bool:
    """Whether a YAML value has a field's declared type (ints count as floats; a bool is no number;
    a single string is accepted for a list of strings, which the recipes turn into a list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(arg, value) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, str) or (isinstance(value, list) and all(_matches(args[0], v) for v in value))
    if origin is dict:
        return isinstance(value, dict) and all(_matches(args[0], k) and _matches(args[1], v) for k, v in value.items())
    return True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint)) if not typing.get_args(hint) else str(hint)


def setting_type_problem(cls: type, name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the setting ``name`` of the recipe class ``cls`` (None when it can):
    a YAML ``bf16: "no"`` or ``batch_size: 8.5`` is refused by name instead of being used."""
    hint = typing.get_type_hints(cls).get(name)
    if hint is None or _matches(hint, value):
        return None
    choices = next((spec.metadata.get("choices") for spec in fields(cls) if spec.name == name), None)
    expected = _type_name(hint) if not choices else "one of " + ", ".join(map(choice_name, choices))
    return f"setting {name} must be {expected}, got {value!r} ({type(value).__name__})"


def check_choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def check_positive(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class TrainRecipe:
    """Settings every training stage shares; each stage subclasses it with its data and loss.

    The batch is global: ``batch_size`` rows per optimiser step on all devices together, each of W
    devices getting ``batch_size / W`` (the loss-scaling rule is stated in :mod:`unime.training.trainer`).
    """

    model: str = setting("", "model folder or hub id to start from (a UniME model or a base MLLM)")
    output_dir: str = setting("", "where the trained model goes; checkpoints go to OUTPUT_DIR/checkpoints")
    tuning: str = setting("lora", "what learns: a LoRA adapter, QLoRA (4-bit base, extra unime[qlora]) or full "
                          "weights", choices=TUNING_METHODS)
    scope: str = setting("llm", "adapt the language model alone (llm: vision tower and projector frozen) or the "
                         "whole MLLM (all)", choices=SCOPES)
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = setting(0.0, "dropout on the LoRA input, in [0, 1)")
    lora_target_regex: str | None = setting(None, "peft target_modules regex (default: the backbone's decoder "
                                            "linears in the scope)")
    modules_to_save: list[str] | None = setting(None, "modules trained in full beside the LoRA adapter (e.g. a "
                                                "randomly initialised vision tower)")
    learning_rate: float = setting(2e-4, "AdamW peak learning rate")
    warmup_steps: int = setting(5, "linear warm-up steps")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    lr_scheduler: str = setting("linear", "learning-rate schedule after warm-up", choices=LR_SCHEDULERS)
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0: no clipping)")
    max_steps: int = setting(-1, "optimiser steps (-1: run --epochs epochs)")
    epochs: float = setting(1.0, "epochs over the data when max_steps is -1")
    batch_size: int = setting(32, "global batch: rows per optimiser step over all processes (the loss sees it whole)")
    mini_batch_size: int | None = setting(None, "GradCache chunk size, bounds activation memory (0: GradCache off)",
                                          null_flag=0)
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimiser step (each its own in-batch matrix)")
    bf16: bool | str = setting("auto", BF16_HELP, choices=BF16_SETTINGS)
    seed: int = setting(42, "seeds the adapter initialisation, the data order and dropout")
    logging_steps: int = setting(10, "log every N steps")
    save_steps: int = setting(50, "checkpoint every N steps")
    save_total_limit: int | None = setting(2, "checkpoints kept (0: keep all)", null_flag=0)
    resume: bool = setting(False, "continue from the last complete checkpoint in OUTPUT_DIR/checkpoints")
    merge: bool = setting(True, "fold the adapter into the saved weights (no-merge: save the adapter alone)")
    trust_remote_code: bool = setting(False, "allow the model's hub remote code (Phi-3.5-V); off unless given")
    matryoshka_dims: list[int] | None = setting(None, "also train nested embedding sizes (Matryoshka, e.g. 576 256 "
                                                "64): the loss is summed over the embedding cut to each size and "
                                                "renormalised; recorded with the model for --dimensions")

    def __post_init__(self) -> None:
        if self.matryoshka_dims is not None:
            dims = self.matryoshka_dims
            if (not isinstance(dims, list) or not dims or len(set(dims)) != len(dims)
                    or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims)):
                raise ValueError(f"matryoshka_dims must be distinct positive integers, got {dims!r}")
        # Against the field's own choices: a stage may narrow them (align: the projector alone, in full).
        for name in ("tuning", "scope", "lr_scheduler"):
            check_choice(name, getattr(self, name), self.field_choices(name))
        check_bf16_setting(self.bf16)
        for name in ("lora_r", "lora_alpha", "batch_size", "gradient_accumulation_steps", "logging_steps",
                     "save_steps"):
            check_positive(name, getattr(self, name))
        for name in ("mini_batch_size", "save_total_limit"):
            check_positive(name, getattr(self, name), optional=True)
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
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
    def field_choices(cls, name: str) -> tuple[str, ...]:
        """The ``choices`` of the field ``name`` (what its flag accepts)."""
        return next(spec.metadata["choices"] for spec in fields(cls) if spec.name == name)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> TrainRecipe:
        """Build from a mapping; an unknown key is an error naming the key and ``source``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a recipe is a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in set(data) - known)  # YAML keys may be numbers
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        problems = [problem for key, value in data.items() if (problem := setting_type_problem(cls, key, value))]
        if problems:
            raise ValueError(f"{source}: {'; '.join(problems)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainRecipe:
        """Load a YAML recipe (a path or a packaged recipe name, see :func:`resolve_recipe`)."""
        path = resolve_recipe(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        if data is None:
            data = {}
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

    def check_model(self) -> None:
        """Refuse a ``model`` that names no loadable model (a missing path, a folder without model
        files, a hub id that cannot be fetched) before any data is read."""
        from unime.model_names import check_model_name

        check_model_name(self.model, option="--model")

    def require(self, *names: str) -> None:
        """Fail, naming the flags, when settings a run needs (and no default can give) are empty."""
        missing = [f"--{name.replace('_', '-')}" for name in names if not getattr(self, name)]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)} (in the recipe or as flags)")


@dataclass
class DistillRecipe(TrainRecipe):
    """Stage 1, textual discriminative knowledge distillation (``unime distill``).

    Defaults (docs/method.md, "Stage 1 measured on a CPU"): KL(P_t || P_s), tau 0.05, self-similarity
    excluded from both distributions, LoRA r16 / alpha 32 on all decoder linears, lr 2e-4, 5 warm-up
    steps, batch 32. With the diagonal included (the paper's printed form) the teacher's row-softmax is
    nearly the identity and the loss collapses within 20 steps; masked, it reached 76.3 STS-B vs 62-65.
    """

    teacher: str = setting("minilm", "teacher: minilm (offline), nv-embed-v2 (the paper's; remote code), or a "
                           "sentence-transformers folder / hub id")
    teacher_prompt: str | None = setting(None, "text put before each teacher input (overrides the teacher's own)")
    trust_teacher_code: bool = setting(False, "allow the teacher's hub remote code (NV-Embed-v2)")
    data: list[str] = setting(help="training files: NLI CSV (sent0,sent1,hard_neg), JSONL, TSV or text",
                              factory=list)
    cache: str | None = setting(None, "teacher cache folder from unime teacher-embed (default: built in "
                                "OUTPUT_DIR/teacher-cache)")
    cache_dtype: str = setting("float32", "teacher cache precision", choices=CACHE_DTYPES)
    teacher_batch_size: int = setting(64, "sentences per teacher forward while building the cache")
    temperature: float = setting(0.05, "softmax temperature of the KL loss")
    direction: str = setting("teacher_student", "KL(P_t||P_s) (teacher_student) or KL(P_s||P_t)",
                             choices=DIRECTIONS)
    exclude_diagonal: bool = setting(True, "drop each sentence's self-similarity from both distributions "
                                     "(no-exclude-diagonal: the paper's printed form)",
                                     aliases={"--include-diagonal": False})

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            self.data = [str(self.data)]
        self.data = [str(path) for path in self.data]
        super().__post_init__()
        check_choice("direction", self.direction, DIRECTIONS)
        check_choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        check_positive("teacher_batch_size", self.teacher_batch_size)
        if self.exclude_diagonal and self.batch_size < 2:
            raise ValueError("exclude_diagonal needs batch_size >= 2")

    def check_runnable(self) -> None:
        """The settings a run needs beyond a valid recipe (a recipe file may leave them to CLI flags)."""
        self.require("model", "data", "output_dir")

    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache else Path(self.output_dir) / CACHE_SUBDIR

    def check_model(self) -> None:
        """The student, and a teacher given as a folder or hub id when its cache is still to be
        built (a teacher cache that exists already is checked against the teacher by itself)."""
        from unime.model_names import check_teacher_name

        super().check_model()
        if not self.cache_dir().is_dir():
            check_teacher_name(self.teacher)


@dataclass
class TuneRecipe(TrainRecipe):
    """Stage 2, hard-negative enhanced instruction tuning (``unime tune``); the defaults are the
    paper's (UniME-V2's released values where V1 is silent).

    With ``scope: all`` and no ``lora_target_regex``, LoRA adapts every linear layer of the MLLM
    (peft's ``all-linear``: vision tower, projector and LLM, not the output head).
    ``exclude_duplicates`` and ``explicit_negatives`` go beyond the official loss (``loss.py``
    mines the in-batch positives only, copies included): the paper does not say, and its margin rule
    cannot catch copies of the positive (their similarity equals the positive's), so without
    ``exclude_duplicates`` the loss floors at ln(k + 1) on such batches. ``input_format: raw`` (the
    default) trains on the rows as VLM2Vec's training and MMEB evaluation feed them (the
    released checkpoints are evaluated that way); ``prompted`` keeps the model's joint prompt.
    """

    scope: str = setting("all", "adapt the whole MLLM (all) or the language model alone (llm)", choices=SCOPES)
    lora_alpha: int = setting(64, "LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = setting(0.1, "dropout on the LoRA input, in [0, 1)")
    learning_rate: float = setting(1e-4, "AdamW peak learning rate")
    warmup_steps: int = setting(200, "linear warm-up steps")
    max_steps: int = setting(2000, "optimiser steps (-1: run --epochs epochs)")
    batch_size: int = setting(1024, "global batch: rows per optimiser step over all processes (the loss sees it whole)")
    mini_batch_size: int | None = setting(2, "GradCache chunk size, bounds activation memory (0: GradCache off)",
                                          null_flag=0)
    logging_steps: int = setting(1, "log every N steps")
    save_steps: int = setting(200, "checkpoint every N steps")
    data: str = setting("", "MMEB-train folder (one sub-folder or file per data set) or one data file")
    image_root: str = setting("", "folder the image paths in the data are relative to")
    datasets: list[str] | None = setting(None, "data set names to use (default: all found)")
    split: str | None = setting(None, "read only data files whose name starts with this (e.g. original)")
    max_rows_per_dataset: int | None = setting(50_000, "the first N good rows of each data set (0: all)", null_flag=0)
    dataset_weights: dict[str, float] | None = setting(None, "NAME=WEIGHT: a data set contributes about weight x "
                                                       "its share of batches")
    sampling: str = setting("proportional", "order of the data sets' batches", choices=SAMPLING)
    skip_bad_rows: bool = setting(False, "leave out and count bad rows instead of stopping at the first")
    explicit_negatives: bool = setting(True, "add the data's neg_text / neg_image_path to the candidates (beyond "
                                       "the official loss, which mines in-batch positives only)")
    input_format: str = setting("raw", "how MMEB-train rows reach the model: raw (the data's text with the "
                                "instruction in it, <|image_1|> as the bare image token, no chat template or summary "
                                "prompt: VLM2Vec's training and the MMEB evaluation protocol) or prompted (the "
                                "model's joint prompt, the unime MMEB protocol)", choices=INPUT_STYLES)
    image_size: int | None = setting(336, "square resize of every training image before the processor, recorded "
                                     "with the model but not applied at inference (0: the processor's own size)",
                                     null_flag=0)
    temperature: float = setting(0.02, "InfoNCE temperature")
    num_hard_negatives: int = setting(8, "k negatives per query")
    false_negative_margin: float = setting(0.1, "drop candidates scoring above the positive + margin")
    negatives: str = setting("hard", "which negatives: the k hardest, or the ablations", choices=NEGATIVE_MODES)
    exclude_duplicates: bool = setting(True, "never use a candidate identical to the positive as its negative "
                                       "(beyond the official loss)")
    gather_across_devices: bool = setting(True, "mine the negatives from the global batch of all ranks")
    deepspeed: str | None = setting(None, "DeepSpeed JSON config, a path or a packaged name (deepspeed-zero2); "
                                    "needs --mini-batch-size 0")
    loss: str = setting("unime", "the objective: unime (hard-negative InfoNCE), unime-v2 (UniME-V2's soft-label KL "
                        "against a judge's scores; needs --judge-file) or both (their sum, the InfoNCE weighted by "
                        "--infonce-weight)", choices=LOSSES)
    judge_file: str | None = setting(None, "UniME-V2 judge file (unime judge's output, or a released "
                                     "train_data_*_scores.json): the training rows and their judge scores, read "
                                     "instead of --data for --loss unime-v2 / both")
    judge_negatives: int = setting(8, "hard negatives per judge-file row (UniME-V2: 8)")
    soft_label_temperature: float = setting(0.02, "temperature of the soft-label loss (UniME-V2's scripts: 0.02)")
    infonce_weight: float = setting(1.0, "weight of the InfoNCE term with --loss both")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("sampling", self.sampling, SAMPLING)
        check_choice("loss", self.loss, LOSSES)
        if self.loss != "unime" and not self.judge_file:
            raise ValueError(f"loss {self.loss} trains on judge scores: give judge_file (--judge-file)")
        if self.judge_file and self.loss == "unime":
            raise ValueError("judge_file is read by loss unime-v2 or both; loss unime trains on data (--data)")
        check_positive("judge_negatives", self.judge_negatives)
        if not isinstance(self.soft_label_temperature, (int, float)) or not self.soft_label_temperature > 0:
            raise ValueError(f"soft_label_temperature must be positive, got {self.soft_label_temperature!r}")
        if not isinstance(self.infonce_weight, (int, float)) or not self.infonce_weight >= 0:
            raise ValueError(f"infonce_weight must be a non-negative number, got {self.infonce_weight!r}")
        check_choice("negatives", self.negatives, NEGATIVE_MODES)
        check_choice("input_format", self.input_format, INPUT_STYLES)
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if not isinstance(self.false_negative_margin, (int, float)) or math.isnan(self.false_negative_margin):
            raise ValueError(f"false_negative_margin must be a number, got {self.false_negative_margin!r}")
        check_positive("num_hard_negatives", self.num_hard_negatives)
        for name in ("max_rows_per_dataset", "image_size"):
            check_positive(name, getattr(self, name), optional=True)
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
        self.check_gradcache_deepspeed()

    def check_runnable(self) -> None:
        """The settings a run needs that no default can give, named as the CLI flags."""
        self.require("model", "judge_file" if self.loss != "unime" else "data", "image_root", "output_dir")

    def check_gradcache_deepspeed(self, deepspeed: bool = False) -> None:
        """The one rule for GradCache (``mini_batch_size``) with DeepSpeed, applied when the recipe is
        read (its own ``deepspeed``), at launch (``accelerate launch`` with a DeepSpeed config) and on
        the built trainer (``deepspeed``: what the launch or the trainer says besides the recipe)."""
        if self.mini_batch_size is not None and (deepspeed or self.deepspeed):
            raise ValueError(GRADCACHE_DEEPSPEED_ERROR)


ALIGN_PROMPT = "Describe the image in one sentence."
# TrainRecipe settings about adapters and GradCache: meaningless when the projector learns in full
# from a token-level loss. The command line has no flag for them; a recipe that sets one is refused.
ALIGN_INAPPLICABLE = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_regex", "modules_to_save",
                      "mini_batch_size", "merge")


def _check_projector_recipe(recipe: Any, stage: str, others: str) -> None:
    """What the projector-only stages (align, tune-bank) share: ``data`` as a list of path strings,
    tuning ``full`` and scope ``projector`` only, and no setting of :data:`ALIGN_INAPPLICABLE`."""
    if isinstance(recipe.data, (str, Path)):
        recipe.data = [str(recipe.data)]
    recipe.data = [str(path) for path in recipe.data]
    if (recipe.tuning, recipe.scope) != (ALIGN_TUNING[0], ALIGN_SCOPES[0]):
        raise ValueError(f"{stage} trains the projector alone, in full (tuning: full, scope: projector), got "
                         f"tuning {recipe.tuning!r}, scope {recipe.scope!r}: {others}")
    defaults = {spec.name: spec.default for spec in fields(TrainRecipe)}
    for name in ALIGN_INAPPLICABLE:
        if getattr(recipe, name) != defaults[name]:
            raise ValueError(f"{name} does not apply to {stage} (the projector learns in full, without an "
                             "adapter or GradCache); leave it out")


@dataclass
class AlignRecipe(TrainRecipe):
    """The base MLLM's feature alignment (``unime align``): LLaVA's stage-1 pretraining.

    Only the projector (vision features -> LLM embedding space) learns, in full, from the captioning
    language-model loss on image-caption pairs; the vision tower and the LLM stay frozen, so
    ``tuning`` is ``full`` and ``scope`` is ``projector`` and nothing else, and the LoRA settings
    (:data:`ALIGN_INAPPLICABLE`) do not apply. Defaults follow LLaVA-1.5's pretraining (lr 1e-3,
    cosine schedule after a short warm-up, no weight decay, bf16 where native) at a CPU-sized batch of 32.
    """

    tuning: str = setting("full", "what learns: the projector's full weights (the only choice in align)",
                          choices=ALIGN_TUNING)
    scope: str = setting("projector", "the projector alone learns; vision tower and LLM stay frozen (the only "
                         "choice in align)", choices=ALIGN_SCOPES)
    learning_rate: float = setting(1e-3, "AdamW peak learning rate (LLaVA-1.5's pretraining rate)")
    warmup_steps: int = setting(20, "linear warm-up steps")
    lr_scheduler: str = setting("cosine", "learning-rate schedule after warm-up (LLaVA: cosine)",
                                choices=LR_SCHEDULERS)
    batch_size: int = setting(32, "global batch: image-caption rows per optimiser step over all processes")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimiser step (the loss is the mean over "
                                               "all their caption tokens)")
    seed: int = setting(42, "seeds the data order")
    save_steps: int = setting(100, "checkpoint every N steps")
    data: list[str] = setting(help="image-caption files: CSV with an image,caption header, or JSONL rows "
                              '{"image": ..., "caption": ...}', factory=list)
    image_root: str = setting("", "folder the image paths are relative to (default: each caption file's folder)")
    prompt: str = setting(ALIGN_PROMPT, "the user's instruction after the image, before the caption")
    max_caption_tokens: int = setting(64, "captions are cut to this many tokens (the end-of-turn token "
                                      "comes on top)")
    image_size: int | None = setting(None, "square resize of every image before the processor (0: the "
                                     "processor's own size)", null_flag=0)
    captions_per_image: int | None = setting(None, "use the first N captions of each image (0: all)", null_flag=0)
    max_rows: int | None = setting(None, "use the first N good rows (0: all)", null_flag=0)
    skip_bad_rows: bool = setting(False, "leave out and count bad rows instead of stopping at the first")

    def __post_init__(self) -> None:
        _check_projector_recipe(self, "align", "adapters and the llm / all scopes belong to unime distill and "
                                "unime tune")
        super().__post_init__()
        check_positive("max_caption_tokens", self.max_caption_tokens)
        for name in ("image_size", "captions_per_image", "max_rows"):
            check_positive(name, getattr(self, name), optional=True)
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {self.prompt!r}")

    def check_runnable(self) -> None:
        """The settings a run needs beyond a valid recipe (a recipe file may leave them to CLI flags)."""
        self.require("model", "data", "output_dir")

    def to_dict(self) -> dict[str, Any]:
        # The inapplicable settings would only mislead a reader of the saved recipe.
        return {key: value for key, value in asdict(self).items() if key not in ALIGN_INAPPLICABLE}


@dataclass
class BankTuneRecipe(TrainRecipe):
    """Stage 2 with the text side frozen (``unime tune-bank``): image-caption pairs, every caption
    embedded once into a bank, the image side learning against the whole bank.

    The model embeds text exactly as it did before the run (only the projector learns, the LLM and
    vision tower stay frozen, so ``tuning`` is ``full`` and ``scope`` is ``projector``; the LoRA and
    GradCache settings, :data:`ALIGN_INAPPLICABLE`, do not apply). Each image's query is mined
    against every caption of the training data with the UniME rule (false negatives dropped by the
    margin, the k hardest survivors kept, InfoNCE), and each positive caption against the batch's
    images the same way (``text_to_image_weight``). ``eval_data`` (an image-caption file of held-out
    images) is scored every ``eval_steps`` steps: Recall@K both ways against its own captions.
    """

    tuning: str = setting("full", "what learns: the projector's full weights (the only choice in tune-bank)",
                          choices=ALIGN_TUNING)
    scope: str = setting("projector", "the projector alone learns; vision tower and LLM stay frozen, so text is "
                         "embedded as before the run (the only choice in tune-bank)", choices=ALIGN_SCOPES)
    learning_rate: float = setting(1e-3, "AdamW peak learning rate")
    warmup_steps: int = setting(20, "linear warm-up steps")
    lr_scheduler: str = setting("cosine", "learning-rate schedule after warm-up", choices=LR_SCHEDULERS)
    batch_size: int = setting(64, "global batch: images per optimiser step over all processes")
    save_steps: int = setting(50, "checkpoint every N steps")
    data: list[str] = setting(help="image-caption files: CSV with an image,caption header, or JSONL rows "
                              '{"image": ..., "caption": ...}; every caption joins the bank', factory=list)
    image_root: str = setting("", "folder the image paths are relative to (default: each caption file's folder)")
    eval_data: str = setting("", "an image-caption file of held-out images, scored every eval_steps steps "
                             "(Recall@K both ways; empty: no evaluation)")
    eval_steps: int = setting(100, "evaluate every N steps (and at the end)")
    image_size: int | None = setting(None, "square resize of every image before the processor, recorded with "
                                     "the model (0: the processor's own size)", null_flag=0)
    temperature: float = setting(0.05, "InfoNCE temperature")
    num_hard_negatives: int = setting(32, "k negatives per query: of the whole caption bank for an image, of the "
                                      "batch's images for a caption")
    false_negative_margin: float = setting(0.1, "drop candidates scoring above the positive + margin")
    negatives: str = setting("hard", "which negatives: the k hardest, or the ablations", choices=NEGATIVE_MODES)
    text_to_image_weight: float = setting(1.0, "weight of the caption-to-image InfoNCE beside the image-to-bank one "
                                          "(0: image to text only)")
    bank_batch_size: int = setting(128, "captions per batch while the bank is embedded")
    skip_bad_rows: bool = setting(False, "leave out and count bad rows instead of stopping at the first")

    def __post_init__(self) -> None:
        _check_projector_recipe(self, "tune-bank", "a frozen text side needs a frozen LLM; adapters belong to unime "
                                "distill and unime tune")
        super().__post_init__()
        check_choice("negatives", self.negatives, NEGATIVE_MODES)
        check_positive("num_hard_negatives", self.num_hard_negatives)
        check_positive("eval_steps", self.eval_steps)
        check_positive("bank_batch_size", self.bank_batch_size)
        check_positive("image_size", self.image_size, optional=True)
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if not isinstance(self.false_negative_margin, (int, float)) or math.isnan(self.false_negative_margin):
            raise ValueError(f"false_negative_margin must be a number, got {self.false_negative_margin!r}")
        if not isinstance(self.text_to_image_weight, (int, float)) or not self.text_to_image_weight >= 0:
            raise ValueError(f"text_to_image_weight must be a number >= 0, got {self.text_to_image_weight!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (the captions' negatives are the batch's other images), "
                             f"got {self.batch_size}")

    def check_runnable(self) -> None:
        """The settings a run needs beyond a valid recipe (a recipe file may leave them to CLI flags)."""
        self.require("model", "data", "output_dir")

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key not in ALIGN_INAPPLICABLE}
