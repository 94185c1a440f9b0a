"""The ``unime`` command line: one sub-command per module in this package.

Each sub-command lives in its own module exposing ``register(subparsers)``; the module is imported
only when the command line is built, and heavy imports (torch, transformers) happen inside the
handlers, so ``unime --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Sub-command modules, in the order shown by --help.
_COMMANDS = (
    "encode",
    "make_tiny",
    "build_default",
    "data",
    "teacher_embed",
    "stages",
    "caption",
    "judge",
    "mine",
    "eval",
    "plot",
    "index",
    "search",
    "serve",
    "export",
    "demo",
    "env",
)


# --dtype of the commands that load a model for inference (eval, encode, serve).
DIMENSIONS_HELP = ("return the first N values of each embedding, L2-normalised again (Matryoshka); a size the "
                   "model was not trained at works with a warning (default: the full size)")
DTYPE_HELP = ("compute dtype (default auto: bfloat16 on a GPU with bf16 and on a CPU with native bf16 kernels, AMX "
              "or AVX512-BF16; float32 elsewhere, where bf16 is emulated and about 80x slower)")


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def check_output_dir(out: str, overwrite: bool, option: str = "--output-dir") -> None:
    """Refuse a non-empty output folder unless ``--overwrite`` was given."""
    from pathlib import Path

    folder = Path(out)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise CLIError(f"{option} {folder} exists and is not empty (use --overwrite)")


def build_parser() -> argparse.ArgumentParser:
    from unime import __version__

    parser = argparse.ArgumentParser(prog="unime", description="UniME universal multimodal embeddings.")
    parser.add_argument("--version", action="version", version=f"unime {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMANDS:
        importlib.import_module(f"unime.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from unime.environment import IncompatibleEnvironment

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        check_model_options(args)
        result = args.func(args)
    except CLIError as error:
        print(f"unime {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, IncompatibleEnvironment) as error:
        # Errors raised by the library for bad input carry the file / row / option in their text.
        print(f"unime {args.command}: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


def check_model_options(args: argparse.Namespace) -> None:
    """Refuse a bad ``--model`` (or ``--teacher``) before a command reads any data: a missing path,
    a folder that is not a model folder, a malformed hub id, or a hub id that cannot be fetched are
    named as such (:mod:`unime.model_names`). The training stages check theirs (from flags or
    recipe) themselves, after the environment check; teacher presets are left to the command."""
    from unime.model_names import check_model_name, check_teacher_name

    if args.command in _CHECK_THEIR_OWN_MODEL:
        return
    models = getattr(args, "model", None)
    for name in [models] if isinstance(models, str) else models or []:
        check_model_name(name, option="--model")
    teacher = getattr(args, "teacher", None)
    if isinstance(teacher, str):
        check_teacher_name(teacher)


# Commands whose model may come from a recipe: checked by TrainRecipe.check_model in their run.
_CHECK_THEIR_OWN_MODEL = ("distill", "tune", "tune-bank", "align")


if __name__ == "__main__":
    sys.exit(main())
