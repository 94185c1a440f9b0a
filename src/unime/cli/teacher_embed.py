"""``unime teacher-embed``: embed the stage-1 training sentences once with the teacher (the cache)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "teacher-embed",
        help="stage 1: embed every training sentence once with the teacher, into a cache",
        description="Embed every unique sentence of the training data with a sentence-transformers teacher, "
        "L2-normalised, into sharded .npy files with a manifest (teacher, settings, SHA-256 of the data). "
        "A killed run resumes keeping its finished shards. unime distill --cache uses the result.",
    )
    parser.add_argument("--teacher", default="minilm",
                        help="minilm (all-MiniLM-L6-v2, offline; default), nv-embed-v2, or a sentence-transformers "
                        "folder / hub id")
    parser.add_argument("--data", nargs="+", required=True,
                        help="training files: NLI CSV (sent0,sent1,hard_neg), JSONL, TSV or text")
    parser.add_argument("--output-dir", "--output", dest="output", required=True, help="cache folder")
    parser.add_argument("--prompt", help="text put before each sentence (overrides the teacher's own instruction)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per teacher forward")
    parser.add_argument("--shard-size", type=int, default=8192, help="sentences per shard file")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="storage precision")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (the library's default when omitted)")
    parser.add_argument("--trust-teacher-code", action="store_true",
                        help="allow the teacher's hub remote code (needed for nv-embed-v2), as unime distill")
    # Before 0.1 this command spelled it --trust-remote-code, which elsewhere means the MLLM's code.
    parser.add_argument("--trust-remote-code", dest="trust_remote_code_alias", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--overwrite", action="store_true", help="rebuild a cache made from other data or teacher")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from unime.training.teacher_cache import build_cache, resolve_teacher
    from unime.training.text_data import read_sentences

    if args.trust_remote_code_alias:
        logging.getLogger(__name__).warning("teacher-embed --trust-remote-code is now --trust-teacher-code "
                                            "(as in unime distill); the old spelling still works")
        args.trust_teacher_code = True

    sentences = read_sentences(args.data)
    spec = resolve_teacher(args.teacher, args.prompt)
    cache = build_cache(spec, sentences, args.output, shard_size=args.shard_size, batch_size=args.batch_size,
                        dtype=args.dtype, trust_remote_code=args.trust_teacher_code, device=args.device,
                        overwrite=args.overwrite)
    print(f"wrote {cache.folder}: {len(cache)} sentences x {cache.dim} dims, teacher {spec.name}")
    return 0
