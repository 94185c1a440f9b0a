"""``unime distill``: stage 1, textual discriminative knowledge distillation into the MLLM's LLM."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="stage 1: distil a text embedder's similarity structure into the LLM (text only)",
        description="Stage 1 of UniME. Settings come from --config (a YAML recipe, or a packaged recipe name "
        "such as distill-cpu); the flags below override it. Without --cache the teacher cache is built (or "
        "finished) in OUTPUT_DIR/teacher-cache. Runs on several processes with torchrun / accelerate launch.",
    )
    parser.add_argument("--config", help="recipe YAML file or packaged recipe name (e.g. distill-cpu)")
    parser.add_argument("--model", help="model folder or hub id to start from")
    parser.add_argument("--teacher", help="minilm, nv-embed-v2, or a sentence-transformers folder / hub id")
    parser.add_argument("--data", nargs="+", help="training files: NLI CSV (sent0,sent1,hard_neg), JSONL, TSV or text")
    parser.add_argument("--cache", help="teacher cache folder from unime teacher-embed")
    parser.add_argument("--output-dir", help="where the trained model (and its checkpoints) go")
    parser.add_argument("--max-steps", type=int, help="optimiser steps (-1: run --epochs)")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--batch-size", type=int, help="sentences per step on all processes together")
    parser.add_argument("--mini-batch-size", type=int, help="GradCache chunk: bounds activation memory")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--temperature", type=float, help="softmax temperature of the loss (default 0.05)")
    parser.add_argument("--direction", choices=["teacher_student", "student_teacher"],
                        help="KL(P_t||P_s) (teacher_student, default) or KL(P_s||P_t)")
    diagonal = parser.add_mutually_exclusive_group()
    diagonal.add_argument("--exclude-diagonal", dest="exclude_diagonal", action="store_true", default=None,
                          help="drop each sentence's self-similarity from both distributions (default)")
    diagonal.add_argument("--include-diagonal", dest="exclude_diagonal", action="store_false",
                          help="keep it (the paper's printed form)")
    parser.add_argument("--tuning", choices=["lora", "qlora", "full"])
    parser.add_argument("--scope", choices=["llm", "all"], help="what may learn (stage 1: llm)")
    parser.add_argument("--lora-r", type=int)
    parser.add_argument("--lora-alpha", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save-steps", type=int, help="checkpoint every N steps")
    parser.add_argument("--logging-steps", type=int)
    bf16 = parser.add_mutually_exclusive_group()
    bf16.add_argument("--bf16", dest="bf16", action="store_true", default=None, help="bf16 autocast")
    bf16.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue from the last complete checkpoint in OUTPUT_DIR/checkpoints")
    parser.add_argument("--no-merge", dest="merge", action="store_false", default=None,
                        help="save the LoRA adapter alone instead of merged weights")
    parser.add_argument("--trust-remote-code", action="store_true", default=None, help="allow the model's hub code")
    parser.add_argument("--trust-teacher-code", action="store_true", default=None,
                        help="allow the teacher's hub code (NV-Embed-v2)")
    parser.set_defaults(func=run)


_FLAGS = ("model", "teacher", "data", "cache", "output_dir", "max_steps", "epochs", "batch_size", "mini_batch_size",
          "learning_rate", "warmup_steps", "temperature", "direction", "exclude_diagonal", "tuning", "scope", "lora_r",
          "lora_alpha", "seed", "save_steps", "logging_steps", "bf16", "resume", "merge", "trust_remote_code",
          "trust_teacher_code")


def recipe_from_args(args: argparse.Namespace):
    """The recipe of a command line: the --config file (or the defaults) with the given flags on top."""
    from unime.training.distill import DistillRecipe

    recipe = DistillRecipe.from_yaml(args.config) if args.config else DistillRecipe()
    return recipe.override(**{name: getattr(args, name) for name in _FLAGS})


def run(args: argparse.Namespace) -> int:
    from unime.training.distill import run_distill

    recipe = recipe_from_args(args)
    output = run_distill(recipe)
    print(f"wrote {output}")
    return 0
