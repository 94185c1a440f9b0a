"""``unime distill``: stage 1, textual discriminative knowledge distillation into the MLLM's LLM."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from unime.cli.recipe_flags import CONFIG_HELP, add_recipe_flags
    from unime.training.recipes import DistillRecipe, packaged_recipes

    parser = subparsers.add_parser(
        "distill",
        help="stage 1: distil a text embedder's similarity structure into the LLM (text only)",
        description="Stage 1 of UniME. Settings come from --config (a YAML recipe or a packaged recipe name), or "
        "the built-in defaults without it; every setting can be given as a flag. Without --cache the teacher "
        "cache is built (or finished) in OUTPUT_DIR/teacher-cache. Runs on several processes with torchrun / "
        "accelerate launch.",
    )
    parser.add_argument("--config", help=CONFIG_HELP.format(names=", ".join(packaged_recipes("distill-"))))
    add_recipe_flags(parser, DistillRecipe)
    parser.set_defaults(func=run)


def recipe_from_args(args: argparse.Namespace):
    """The recipe of a command line: --config (or the defaults) with the given flags applied."""
    from unime.cli.recipe_flags import recipe_from_args as derive
    from unime.training.recipes import DistillRecipe

    return derive(args, DistillRecipe)


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    from unime.training.distill import run_distill

    output = run_distill(recipe)
    print(f"wrote {output}")
    return 0
