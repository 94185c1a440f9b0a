"""``unime align``: the base MLLM's feature alignment (LLaVA's stage 1): the projector learns from
the captioning loss on image-caption pairs, the vision tower and the LLM frozen."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from unime.cli.recipe_flags import CONFIG_HELP, add_recipe_flags
    from unime.training.recipes import AlignRecipe, packaged_recipes

    parser = subparsers.add_parser(
        "align",
        help="align a base MLLM: train its projector on image captions (LLaVA's stage 1)",
        description="Feature alignment before the UniME stages: the projector between the vision tower and the "
        "LLM learns from the captioning loss on image-caption files (CSV with an image,caption header, or JSONL), "
        "the vision tower and the LLM frozen. Writes the whole model to OUTPUT_DIR, and beside it the projector "
        "alone (projector.safetensors, projector.json). Settings come from --config (a YAML recipe or a packaged "
        "recipe name), or the built-in defaults without it; every setting can be given as a flag. Caption images "
        "with unime caption to see the effect.",
    )
    parser.add_argument("--config", help=CONFIG_HELP.format(names=", ".join(packaged_recipes("align-"))))
    add_recipe_flags(parser, AlignRecipe, skip=skipped_flags())
    parser.set_defaults(func=run)


def skipped_flags() -> tuple[str, ...]:
    """Recipe fields without a flag: fixed in align (tuning, scope) or not applying to it (LoRA)."""
    from unime.training.recipes import ALIGN_INAPPLICABLE

    return ("tuning", "scope", *ALIGN_INAPPLICABLE)


def recipe_from_args(args: argparse.Namespace):
    """The recipe of a command line: --config (or the defaults) with the given flags applied."""
    from unime.cli.recipe_flags import recipe_from_args as derive
    from unime.training.recipes import AlignRecipe

    return derive(args, AlignRecipe, skip=skipped_flags())


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    from unime.training.align import run_align

    output = run_align(recipe)
    print(f"wrote {output}")
    return 0
