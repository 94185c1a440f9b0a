"""``unime tune-bank``: stage 2 with the text side frozen: every caption embedded once into a bank, the
projector learning against the whole bank with UniME's hard-negative InfoNCE."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from unime.cli.recipe_flags import CONFIG_HELP, add_recipe_flags
    from unime.training.recipes import BankTuneRecipe, packaged_recipes

    parser = subparsers.add_parser(
        "tune-bank",
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
    )
    parser.add_argument("--config", help=CONFIG_HELP.format(names=", ".join(packaged_recipes("bank-"))))
    add_recipe_flags(parser, BankTuneRecipe, skip=skipped_flags())
    parser.set_defaults(func=run)


def skipped_flags() -> tuple[str, ...]:
    """Recipe fields without a flag: fixed in tune-bank (tuning, scope) or not applying to it (LoRA)."""
    from unime.training.recipes import ALIGN_INAPPLICABLE

    return ("tuning", "scope", *ALIGN_INAPPLICABLE)


def recipe_from_args(args: argparse.Namespace):
    """The recipe of a command line: --config (or the defaults) with the given flags applied."""
    from unime.cli.recipe_flags import recipe_from_args as derive
    from unime.training.recipes import BankTuneRecipe

    return derive(args, BankTuneRecipe, skip=skipped_flags())


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    from unime.training.bank import run_tune_bank

    output = run_tune_bank(recipe)
    print(f"wrote {output}")
    return 0
