"""``unime data``: data set utilities. ``unime data synth`` writes the synthetic benchmark;
``unime data captions`` turns an image-caption file into MMEB-train pairs and MMEB-eval retrieval sets."""

from __future__ import annotations

import argparse
import json
import re

from unime.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate data sets",
                                   description="Data set utilities: unime data synth writes the synthetic benchmark; unime data "
                                   "captions turns an image-caption file into MMEB-layout training and eval sets.")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    synth = actions.add_parser(
        "synth",
        help="write the synthetic benchmark (MMEB train/eval, SugarCrepe, retrieval, NLI/STS text)",
        description="Write the synthetic benchmark to a folder; the same options give identical files. "
        "Layouts: docs/synthetic-data.md.",
    )
    synth.add_argument(
        "--output-dir", "--out", dest="out", required=True,
        help="output folder (refused when not empty, unless --overwrite)"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    synth.add_argument(
        "--train-per-dataset", type=int, default=200, help="rows per MMEB-train data set (default 200)"
    )
    synth.add_argument(
        "--eval-queries", type=int, default=50, help="queries per MMEB-eval data set (default 50)"
    )
    synth.add_argument(
        "--eval-candidates",
        type=int,
        default=50,
        help="distractors per VQA/retrieval/grounding query (default 50; classification uses all labels)",
    )
    synth.add_argument("--max-objects", type=int, default=4, help="most objects per scene, 2-9 (default 4)")
    synth.add_argument(
        "--ood-pairs", type=int, default=6, help="held-out colour-shape pairs, 0-6 (default 6)"
    )
    synth.add_argument("--retrieval-images", type=int, default=100, help="images of the Karpathy-layout set")
    synth.add_argument("--captions-per-image", type=int, default=5, help="captions per retrieval image")
    synth.add_argument("--sugarcrepe-per-split", type=int, default=100, help="items per SugarCrepe split")
    synth.add_argument("--nli-rows", type=int, default=1000, help="rows of text/nli.csv")
    synth.add_argument("--sts-pairs", type=int, default=500, help="rows of text/sts.jsonl")
    synth.add_argument(
        "--no-real-images",
        action="store_true",
        help="leave out the Digits and Photos sets (which need scikit-learn and scikit-image)",
    )
    synth.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in --out"
    )
    synth.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    synth.set_defaults(func=_synth)
    _register_captions(actions)


def _register_captions(actions: argparse._SubParsersAction) -> None:
    captions = actions.add_parser(
        "captions",
        help="image-caption file -> MMEB-train i2t/t2i pairs and MMEB-eval retrieval sets",
        description="Read a CSV / TSV / JSONL file with image and caption columns (e.g. Flickr8k's train.csv) and "
        "write MMEB-layout sets with MSCOCO_i2t / MSCOCO_t2i's instructions: --train writes "
        "OUTPUT_DIR/NAME_i2t/train.jsonl and NAME_t2i/train.jsonl for unime tune; --eval writes "
        "OUTPUT_DIR/NAME_i2t/test.parquet, NAME_t2i/test.parquet and splits.json for unime eval mmeb. Image paths "
        "stay relative to --image-dir (pass it as --image-root / --image-dir later).",
    )
    captions.add_argument("--data", required=True, help="caption file with image,caption columns")
    captions.add_argument("--image-dir", required=True, help="folder the image column is relative to")
    captions.add_argument("--output-dir", required=True, help="folder the data set folders are written into")
    captions.add_argument("--name", default="Flickr8k", help="data set name prefix (default Flickr8k)")
    kind = captions.add_mutually_exclusive_group(required=True)
    kind.add_argument("--train", action="store_true", help="write stage-2 training pairs")
    kind.add_argument("--eval", action="store_true", help="write MMEB-style evaluation sets")
    captions.add_argument("--captions-per-image", type=int, help="training rows per image (default: all captions)")
    captions.add_argument("--max-images", type=int, help="use the first N images of the file")
    captions.add_argument("--candidates", type=int, default=1000,
                          help="eval: candidates per query, the positive included (default 1000, as MMEB)")
    captions.add_argument("--seed", type=int, default=0, help="eval: seed of the distractor draw")
    captions.set_defaults(func=_captions)


def _captions(args: argparse.Namespace) -> int:
    from unime.data.captions import read_caption_pairs, write_eval_sets, write_train_pairs

    pairs = read_caption_pairs(args.data, args.image_dir)
    if args.train:
        counts = write_train_pairs(pairs, args.output_dir, args.name, captions_per_image=args.captions_per_image,
                                   max_images=args.max_images)
    else:
        counts = write_eval_sets(pairs, args.output_dir, args.name, candidates=args.candidates,
                                 max_images=args.max_images, seed=args.seed)
    print(json.dumps({"output_dir": str(args.output_dir), "rows": counts}))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from unime.synth import SynthConfig, generate

    try:
        config = SynthConfig(
            seed=args.seed,
            image_size=args.image_size,
            train_per_dataset=args.train_per_dataset,
            eval_queries=args.eval_queries,
            eval_candidates=args.eval_candidates,
            max_objects=args.max_objects,
            ood_pairs=args.ood_pairs,
            retrieval_images=args.retrieval_images,
            captions_per_image=args.captions_per_image,
            sugarcrepe_per_split=args.sugarcrepe_per_split,
            nli_rows=args.nli_rows,
            sts_pairs=args.sts_pairs,
            real_images=not args.no_real_images,
        )
    except ValueError as error:
        # SynthConfig names its fields; the user typed options.
        message = re.sub(r"SynthConfig\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(error))
        raise CLIError(message) from error
    try:
        manifest = generate(args.out, config, overwrite=args.overwrite, progress=not args.no_progress)
    except (FileExistsError, ImportError) as error:
        raise CLIError(str(error)) from error
    counts = manifest["counts"]
    summary = {
        "out": str(args.out),
        "mmeb_train_sets": len(counts["mmeb_train"]),
        "mmeb_eval_sets": len(counts["mmeb_eval"]),
        "images": counts["images"]["files"],
    }
    print(json.dumps(summary))
    return 0
