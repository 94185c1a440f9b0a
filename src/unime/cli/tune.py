"""``unime tune``: stage 2, hard-negative enhanced instruction tuning on MMEB-train data."""

from __future__ import annotations

import argparse
from typing import Any

# CLI flag -> recipe setting, for the flags that override a recipe value of the same meaning.
_OVERRIDES = (
    "model", "data", "image_root", "output_dir", "max_steps", "batch_size", "mini_batch_size", "learning_rate",
    "negatives", "num_hard_negatives", "false_negative_margin", "tuning", "scope", "resume", "seed", "bf16",
    "image_size", "temperature", "skip_bad_rows", "sampling", "max_rows_per_dataset", "trust_remote_code",
    "save_steps", "logging_steps", "split", "explicit_negatives", "exclude_duplicates",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="stage 2: hard-negative enhanced instruction tuning (MMEB-train)",
        description="Stage 2 of UniME: InfoNCE with false-negative filtering and hard-negative mining on "
        "MMEB-train, with LoRA on the whole MLLM, GradCache and cross-device mining. Settings come from a "
        "YAML recipe (a path, or a packaged one such as tune-cpu or tune-llava-1.6); flags override it.",
    )
    parser.add_argument("--config", required=True, help="recipe YAML file or packaged recipe name")
    parser.add_argument("--model", help="base MLLM, stage-1 output or UniME model folder / hub id")
    parser.add_argument("--data", help="MMEB-train folder (one sub-folder or file per data set) or one file")
    parser.add_argument("--image-root", help="folder the image paths in the data are relative to")
    parser.add_argument("--output-dir", help="where the tuned model (and checkpoints/) go")
    parser.add_argument("--datasets", help="comma-separated data set names to use (default: all found)")
    parser.add_argument("--split", help="read only data files whose name starts with this (e.g. original)")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch: rows per step over all processes")
    parser.add_argument("--mini-batch-size", type=int, help="GradCache chunk size; 0 turns GradCache off")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--negatives", choices=["hard", "random", "easy", "all"])
    parser.add_argument("--num-hard-negatives", type=int, help="k negatives per query")
    parser.add_argument("--false-negative-margin", type=float, help="drop candidates above positive + margin")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--tuning", choices=["lora", "qlora", "full"])
    parser.add_argument("--scope", choices=["llm", "all"], help="adapt the whole MLLM (all) or the LLM alone")
    parser.add_argument("--image-size", type=int, help="square image size in pixels (saved with the model)")
    parser.add_argument("--sampling", choices=["proportional", "round_robin"], help="order of the data sets' batches")
    parser.add_argument("--max-rows-per-dataset", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save-steps", type=int)
    parser.add_argument("--logging-steps", type=int)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast")
    parser.add_argument("--explicit-negatives", action=argparse.BooleanOptionalAction, default=None,
                        help="add the data's neg_text / neg_image_path to the candidates")
    parser.add_argument("--exclude-duplicates", action=argparse.BooleanOptionalAction, default=None,
                        help="never use a candidate identical to the positive as a negative (default on)")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue from the last complete checkpoint in OUTPUT_DIR/checkpoints")
    parser.add_argument("--skip-bad-rows", action="store_true", default=None,
                        help="leave out and count bad rows instead of stopping at the first")
    parser.add_argument("--trust-remote-code", action="store_true", default=None,
                        help="allow hub remote code (Phi-3.5-V)")
    parser.set_defaults(func=run)


def recipe_from_args(args: argparse.Namespace) -> Any:
    """The recipe of ``--config`` with the given flags applied (and validated again)."""
    from dataclasses import replace

    from unime.training.tune import TuneRecipe

    recipe = TuneRecipe.from_yaml(args.config)
    flags = {name: getattr(args, name) for name in _OVERRIDES}
    gradcache_off = flags["mini_batch_size"] == 0
    if gradcache_off:
        flags["mini_batch_size"] = None
    if args.datasets is not None:
        names = [name.strip() for name in args.datasets.split(",") if name.strip()]
        if not names:
            raise ValueError("--datasets: give at least one data set name")
        flags["datasets"] = names
    recipe = recipe.override(**flags)
    return replace(recipe, mini_batch_size=None) if gradcache_off else recipe


def run(args: argparse.Namespace) -> int:
    from unime.training.tune import tune

    output = tune(recipe_from_args(args))
    print(f"wrote {output}")
    return 0
