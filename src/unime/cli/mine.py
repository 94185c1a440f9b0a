"""``unime mine``: UniME-V2's judge-based hard-negative mining (retrieve, judge, filter, sample)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mine",
        help="mine hard negatives with a retriever and an MLLM judge (UniME-V2)",
        description="For each row of a judge file (query_text, query_image, pos_text, pos_image): retrieve the top "
        "--top-n candidates among all rows' positives with --model, score them and the positive with --judge, drop "
        "candidates scoring above the positive's score minus --beta (false negatives), and keep --keep of the rest by "
        "cyclic sampling (round --cycle). Writes a judge file with hard negatives and scores for unime tune --loss "
        "unime-v2. Resumable: the candidates and their scores are kept beside the output. Under torchrun "
        "--nproc-per-node N the embedding and the judging are split between the processes and process 0 writes "
        "each file, the same files one process writes.",
    )
    parser.add_argument("--model", required=True, help="the retriever: a unime model folder or hub id")
    parser.add_argument("--judge", required=True, help="the judge: a model with an LM head (see unime judge)")
    parser.add_argument("--data", required=True, help="the rows (a judge file; hard negatives in it are ignored)")
    parser.add_argument("--output", required=True, help="where to write the mined judge file")
    parser.add_argument("--image-root", default=None, help="folder the rows' image paths are relative to")
    parser.add_argument("--top-n", type=int, default=50, help="candidates retrieved per query (default: %(default)s)")
    parser.add_argument("--keep", type=int, default=8, help="hard negatives kept per query (default: %(default)s)")
    parser.add_argument("--beta", type=float, default=0.01,
                        help="false-negative margin: drop candidates judged above the positive minus beta (default: "
                        "%(default)s)")
    parser.add_argument("--cycle", type=int, default=0, help="round of the cyclic sampling (0, 1, ...: other negatives)")
    parser.add_argument("--max-similarity", type=float, default=None,
                        help="leave out candidates whose retrieval cosine is at or above this (default: off)")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per batch when embedding")
    parser.add_argument("--judge-batch-size", type=int, default=8, help="pairs per batch when judging")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... for both models (default: the GPU "
                        "when there is one; under torchrun cuda:LOCAL_RANK)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the models' hub remote code")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unime.judge import read_judge_file
    from unime.mining import mine
    from unime.model_names import check_model_name

    for name in ("top_n", "keep", "batch_size", "judge_batch_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.cycle < 0:
        raise ValueError(f"--cycle must be 0 or more, got {args.cycle}")
    read_judge_file(args.data)  # a bad file is named before any model loads
    if Path(args.output).exists() and not args.overwrite:
        raise ValueError(f"{args.output} exists (overwrite to replace it)")
    check_model_name(args.judge, option="--judge")
    from unime.environment import default_device, join_torchrun_group, rank_device

    rank, _ = join_torchrun_group()
    out = mine(args.model, args.judge, args.data, args.output, image_root=args.image_root, top_n=args.top_n,
               keep=args.keep, beta=args.beta, cycle=args.cycle, max_similarity=args.max_similarity,
               batch_size=args.batch_size, judge_batch_size=args.judge_batch_size, overwrite=args.overwrite,
               trust_remote_code=args.trust_remote_code, device=rank_device(args.device) or default_device())
    if rank == 0:
        print(f"wrote {out}")
    return 0
