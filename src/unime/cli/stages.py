"""The training stages' commands, registered by one function: ``unime align`` (the base MLLM's
feature alignment), ``unime distill`` (stage 1), ``unime tune`` (stage 2) and ``unime tune-bank``
(stage 2 with the text side frozen). Each reads a recipe (``--config``, a YAML file or a packaged
recipe name, else the defaults) with every setting also a flag, and runs its stage."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

#: The flag set of align and tune-bank: no tuning, scope or LoRA flags (fixed there, or not applying).
_PROJECTOR_ONLY = "projector-only"


@dataclass(frozen=True)
class StageCommand:
    """One stage command: its recipe class and packaged-recipe prefix, the function that runs it
    (``module:function``, taking the recipe, returning the output folder) and its help texts."""

    name: str
    recipe: str
    prefix: str
    runner: str
    help: str
    description: str
    flags: str = "all"  # "all", or _PROJECTOR_ONLY: no tuning / scope / LoRA flags

    def recipe_class(self) -> type:
        from unime.training import recipes

        return getattr(recipes, self.recipe)

    def skipped_flags(self) -> tuple[str, ...]:
        if self.flags != _PROJECTOR_ONLY:
            return ()
        from unime.training.recipes import ALIGN_INAPPLICABLE

        return ("tuning", "scope", *ALIGN_INAPPLICABLE)


STAGES = {
    "align": StageCommand(
        name="align", recipe="AlignRecipe", prefix="align-", runner="unime.training.align:run_align", flags=_PROJECTOR_ONLY,
        help="align a base MLLM: train its projector on image captions (LLaVA's stage 1)",
        description="Feature alignment before the UniME stages: the projector between the vision tower and the "
        "LLM learns from the captioning loss on image-caption files (CSV with an image,caption header, or JSONL), "
        "the vision tower and the LLM frozen. Writes the whole model to OUTPUT_DIR, and beside it the projector "
        "alone (projector.safetensors, projector.json). Settings come from --config (a YAML recipe or a packaged "
        "recipe name), or the built-in defaults without it; every setting can be given as a flag. Caption images "
        "with unime caption to see the effect.",
    ),
    "distill": StageCommand(
        name="distill", recipe="DistillRecipe", prefix="distill-", runner="unime.training.distill:run_distill", flags="all",
        help="stage 1: distil a text embedder's similarity structure into the LLM (text only)",
        description="Stage 1 of UniME. Settings come from --config (a YAML recipe or a packaged recipe name), or "
        "the built-in defaults without it; every setting can be given as a flag. Without --cache the teacher "
        "cache is built (or finished) in OUTPUT_DIR/teacher-cache. Runs on several processes with torchrun / "
        "accelerate launch.",
    ),
    "tune": StageCommand(
        name="tune", recipe="TuneRecipe", prefix="tune-", runner="unime.training.tune:tune", flags="all",
        help="stage 2: hard-negative enhanced instruction tuning (MMEB-train)",
        description="Stage 2 of UniME: InfoNCE with false-negative filtering and hard-negative mining on "
        "MMEB-train, with LoRA on the whole MLLM, GradCache and cross-device mining. Settings come from --config "
        "(a YAML recipe or a packaged recipe name), or the paper's defaults without it; every setting can be "
        "given as a flag.",
    ),
    "tune-bank": StageCommand(
        name="tune-bank", recipe="BankTuneRecipe", prefix="bank-", runner="unime.training.bank:run_tune_bank", flags=_PROJECTOR_ONLY,
        help="stage 2 with the text side frozen: the projector learns against a bank of every training caption",
        description="UniME's stage 2 when the text side stays as it is: every caption of the image-caption files "
        "(CSV with an image,caption header, or JSONL) is embedded once into a bank (cached in "
        "OUTPUT_DIR/text-bank), and each step embeds a batch of images and mines their negatives from the whole "
        "bank (false negatives dropped by the margin, the k hardest kept, InfoNCE), captions against the batch's "
        "images the other way. Only the projector learns, so the model embeds text exactly as before. --eval-data "
        "scores held-out images every --eval-steps steps. Writes the whole model to OUTPUT_DIR, and beside it "
        "projector.safetensors and tune_bank.json (data hashes, loss and recall curves). Settings come from "
        "--config (a YAML recipe or a packaged recipe name), or the built-in defaults without it; every setting "
        "can be given as a flag.",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from unime.cli.recipe_flags import CONFIG_HELP, add_recipe_flags
    from unime.training.recipes import packaged_recipes

    for stage in STAGES.values():
        parser = subparsers.add_parser(stage.name, help=stage.help, description=stage.description)
        parser.add_argument("--config", help=CONFIG_HELP.format(names=", ".join(packaged_recipes(stage.prefix))))
        add_recipe_flags(parser, stage.recipe_class(), skip=stage.skipped_flags())
        parser.set_defaults(func=run, stage=stage.name)


def recipe_from_args(args: argparse.Namespace):
    """The recipe of a stage's command line: --config (or the defaults) with the given flags applied."""
    from unime.cli.recipe_flags import recipe_from_args as derive

    stage = STAGES[args.stage]
    return derive(args, stage.recipe_class(), skip=stage.skipped_flags())


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    module, _, function = STAGES[args.stage].runner.partition(":")
    output = getattr(importlib.import_module(module), function)(recipe)
    print(f"wrote {output}")
    return 0
