"""``unime judge``: UniME-V2's judge scores of a judge file's pairs, by a model with its LM head."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "judge",
        help="score (query, candidate) pairs with an MLLM as judge (UniME-V2's yes-probability)",
        description="Score every (query, positive) and (query, hard negative) pair of a judge file (UniME-V2's "
        "train_data_*_scores.json layout: query_text, query_image, pos_text, pos_image, hard_negatives) with a "
        "model loaded with its LM head: s = e^yes / (e^yes + e^no) after UniME-V2's judge prompt. Writes the file "
        "again with query_pos_scores and hard_negatives_scores. Resumable: run the same command again after a stop. "
        "Under torchrun --nproc-per-node N each process scores its share of the rows (resumable per process) and "
        "process 0 writes the one output, the same file one process writes.",
    )
    parser.add_argument("--model", required=True, help="the judge: a model folder with an LM head (or tied to its "
                        "input embeddings), e.g. unime-smol, or a hub id")
    parser.add_argument("--data", required=True, help="the judge file to score (JSON list of rows)")
    parser.add_argument("--output", required=True, help="where to write the scored judge file")
    parser.add_argument("--image-root", default=None, help="folder the rows' image paths are relative to")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=None, help="square resize of images before the processor")
    parser.add_argument("--save-every", type=int, default=64, help="rows between saves of the partial scores")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the GPU when there is one; "
                        "under torchrun cuda:LOCAL_RANK)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's hub remote code")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unime.judge import Judge, judge_file, read_judge_file

    if args.batch_size <= 0 or args.save_every <= 0:
        raise ValueError(f"--batch-size and --save-every must be positive, got {args.batch_size} and {args.save_every}")
    from pathlib import Path

    rows = read_judge_file(args.data)  # a bad file is named before the model loads
    if Path(args.output).exists() and not args.overwrite:
        raise ValueError(f"{args.output} exists (overwrite to replace it)")
    from unime.environment import default_device, join_torchrun_group, rank_device

    rank, _ = join_torchrun_group()
    device = rank_device(args.device) or default_device()
    judge = Judge(args.model, trust_remote_code=args.trust_remote_code, image_size=args.image_size, device=device)
    out = judge_file(judge, args.data, args.output, image_root=args.image_root, batch_size=args.batch_size,
                     save_every=args.save_every, overwrite=args.overwrite, rows=rows)
    if rank == 0:
        print(f"wrote {out}")
    return 0
