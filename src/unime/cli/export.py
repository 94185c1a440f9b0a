"""``unime export vllm OUT --model M``: a folder vLLM serves as it is (docs/serving.md, "Serving with vLLM")."""

from __future__ import annotations

import argparse

from unime.cli import check_output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a model in a form another serving stack loads (vllm)",
        description="Export a unime model for another serving stack.",
    )
    targets = parser.add_subparsers(dest="target", metavar="TARGET")
    targets.required = True
    vllm = targets.add_parser(
        "vllm",
        help="a folder `vllm serve` runs as an embedding model, with unime's prompts and pooling",
        description="Write OUT: the weights with any LoRA adapter merged, in the family's original architecture "
        "(safetensors); the processor; a chat template rendering the model's UniME prompts (chat_template.jinja); "
        "the last-token, normalised pooling as sentence-transformers files; README.md with the launch command. "
        "fast_vlm (the seeing default) is refused: vLLM cannot load it.",
    )
    vllm.add_argument("out", metavar="OUT", help="output folder (created; must be empty unless --overwrite)")
    vllm.add_argument("--model", required=True, help="saved unime model, base MLLM or adapter (path or hub id)")
    vllm.add_argument("--mode", choices=("sum", "joint"), help="override the saved text+image mode")
    vllm.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                      help="dtype of the written weights (default: as loaded)")
    vllm.add_argument("--served-model-name", help="the model id in README.md's commands (default: OUT's name)")
    vllm.add_argument("--trust-remote-code", action="store_true", help="allow hub remote code (Phi-3.5-V)")
    vllm.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    vllm.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from unime.export.vllm import export_vllm

    check_output_dir(args.out, args.overwrite, option="OUT")
    result = export_vllm(args.model, args.out, trust_remote_code=args.trust_remote_code, mode=args.mode,
                         dtype=args.dtype, overwrite=args.overwrite, served_model_name=args.served_model_name)
    print(f"wrote {result.path} ({result.family} as {result.architecture}"
          f"{', adapter merged' if result.merged_adapter else ''}); launch: see {result.path / 'README.md'}")
    return 0
