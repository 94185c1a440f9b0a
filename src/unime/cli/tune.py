"""``unime tune``: stage 2, hard-negative enhanced instruction tuning on MMEB-train data."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from unime.cli.recipe_flags import CONFIG_HELP, add_recipe_flags
    from unime.training.recipes import TuneRecipe, packaged_recipes

    parser = subparsers.add_parser(
        "tune",
        help="stage 2: hard-negative enhanced instruction tuning (MMEB-train)",
        description="Stage 2 of UniME: InfoNCE with false-negative filtering and hard-negative mining on "
        "MMEB-train, with LoRA on the whole MLLM, GradCache and cross-device mining. Settings come from --config "
        "(a YAML recipe or a packaged recipe name), or the paper's defaults without it; every setting can be "
        "given as a flag.",
    )
    parser.add_argument("--config", help=CONFIG_HELP.format(names=", ".join(packaged_recipes("tune-"))))
    add_recipe_flags(parser, TuneRecipe)
    parser.set_defaults(func=run)


def recipe_from_args(args: argparse.Namespace):
    """The recipe of a command line: --config (or the defaults) with the given flags applied."""
    from unime.cli.recipe_flags import recipe_from_args as derive
    from unime.training.recipes import TuneRecipe

    return derive(args, TuneRecipe)


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    from unime.training.tune import tune

    output = tune(recipe)
    print(f"wrote {output}")
    return 0
