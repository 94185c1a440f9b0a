"""``unime encode``: embed the rows of a JSON Lines, CSV or parquet file into a .npy matrix, in input
order, or (``--engine local`` / ``--engine ray``) into a resumable folder of parquet shards
(:mod:`unime.bulk`, docs/bulk.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from unime.choices import DTYPES
from unime.cli import DIMENSIONS_HELP, DTYPE_HELP, CLIError

if TYPE_CHECKING:
    from unime.inputs import EmbedInput


def register(subparsers: argparse._SubParsersAction) -> None:
    from unime.bulk import DEFAULT_SHARD_ROWS, ENGINES

    parser = subparsers.add_parser(
        "encode",
        help="embed texts, images, videos and both from a JSON Lines, CSV or parquet file",
        description='Embed rows {"text": ..., "image": ..., "video": ..., "instruction": ...} of a .jsonl, .csv '
        'or .parquet file (an optional id column names the rows); "video" is a video file or a list of frame '
        "images (docs/video.md). Image, video and frame paths are relative to the input's folder. Output: "
        "a float32 .npy matrix, one unit row per input row; with --engine, a folder of parquet shards (id, "
        "embedding) that a rerun resumes (docs/bulk.md).",
    )
    parser.add_argument("--model", required=True, help="unime model folder, UniME checkpoint, MLLM or hub id")
    parser.add_argument("--input", required=True, help="rows: .jsonl, .csv or .parquet")
    parser.add_argument("--output", required=True, help="embeddings .npy; with --engine, a folder of parquet shards")
    parser.add_argument("--engine", default=None, choices=ENGINES,
                        help="write resumable parquet shards to the --output folder, embedded in this process "
                        "(local) or by a Ray Data actor pool, one model per actor (ray: pip install 'unime[ray]'; "
                        "joins RAY_ADDRESS's cluster when set)")
    parser.add_argument("--actors", type=int, default=None, metavar="N",
                        help="--engine ray: actors, one model each (default 1; one GPU each where the cluster has GPUs)")
    parser.add_argument("--shard-rows", type=int, default=None, metavar="N",
                        help=f"--engine: rows per shard (default {DEFAULT_SHARD_ROWS})")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--dimensions", type=int, default=None, metavar="N", help=DIMENSIONS_HELP)
    parser.add_argument("--mode", default=None, choices=["sum", "joint"], help="override the saved mode")
    parser.add_argument("--video-frames", type=int, default=None, metavar="N",
                        help="frames sampled uniformly from each video (default: the model's video_frames, 8)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow hub remote code (Phi-3.5-V)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (the shard lines with --engine)")
    parser.set_defaults(func=run)


def read_rows(path: Path) -> list[EmbedInput]:
    """Parse and validate every row first, so a bad row fails before any model work
    (:func:`unime.bulk.read_input_rows`: .jsonl, .csv or .parquet; an id column is checked, not kept)."""
    return read_named_rows(path)[0]


def read_named_rows(path: Path) -> tuple[list[EmbedInput], list[str]]:
    """:func:`read_rows` and each row's name (``"rows.jsonl line 3"``) for later error messages."""
    from unime.bulk import INPUT_SUFFIXES, read_input_rows

    if not path.is_file() and path.suffix.lower() in INPUT_SUFFIXES:
        raise FileNotFoundError(f"--input {path}: file not found")
    rows = read_input_rows(path)
    return rows.inputs, rows.names


def check_frame_lists(rows: list[EmbedInput], names: list[str], frames: int) -> None:
    """Refuse, naming the row, a video given as a list of fewer frames than ``frames`` (video files
    are counted when decoded, and their errors name the file)."""
    for row, where in zip(rows, names, strict=True):
        if isinstance(row.video, (list, tuple)) and len(row.video) < frames:
            raise ValueError(f"{where}: the video's frame list has {len(row.video)} frames, fewer than the "
                             f"{frames} sampled (--video-frames, or the model's video_frames)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import unime
    from unime.environment import resolve_dtype
    from unime.io.integrity import atomic_path

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.dimensions is not None and args.dimensions <= 0:
        raise ValueError(f"--dimensions must be positive, got {args.dimensions}")
    if args.video_frames is not None:
        from unime.io.video import check_frames

        try:
            check_frames(args.video_frames)
        except ValueError as error:
            raise ValueError(f"--video-frames: {error}") from None
    if args.engine is not None:
        if args.video_frames is not None:
            raise CLIError("--video-frames is not taken by --engine: the shards use the model's saved "
                           "video_frames (set it with the model's config)")
        return run_bulk(args)
    for option, value in (("--actors", args.actors), ("--shard-rows", args.shard_rows)):
        if value is not None:
            raise CLIError(f"{option} is for --engine local or ray (parquet shards); without --engine, "
                           "encode writes one .npy")
    rows, names = read_named_rows(Path(args.input))
    model = unime.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device,
                       dtype=resolve_dtype(args.dtype, args.device), mode=args.mode)
    if args.video_frames is not None:
        model.update_config(video_frames=args.video_frames)
    frames = getattr(getattr(model, "unime_config", None), "video_frames", None)
    if frames is not None:  # a model without UniME's configuration takes no videos anyway
        check_frame_lists(rows, names, frames)
    if args.dimensions is not None:
        model.set_dimensions(args.dimensions)
    # encode sorts by length for less padding and returns rows in input order.
    embeddings = model.encode(rows, batch_size=args.batch_size, show_progress_bar=not args.no_progress)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(embeddings, dtype=np.float32))
    print(f"wrote {output}: {len(rows)} x {embeddings.shape[1]}")
    return 0


def run_bulk(args: argparse.Namespace) -> int:
    """``--engine local|ray``: :func:`unime.bulk.embed_to_parquet` into the ``--output`` folder."""
    from unime.bulk import (
        DEFAULT_SHARD_ROWS,
        EXTRA,
        INPUT_SUFFIXES,
        MissingExtra,
        embed_to_parquet,
        require_pyarrow,
        require_ray,
    )

    if args.engine == "local" and args.actors is not None:
        raise CLIError("--actors is for --engine ray; --engine local runs one model in this process")
    for option, value in (("--actors", args.actors), ("--shard-rows", args.shard_rows)):
        if value is not None and value <= 0:
            raise CLIError(f"{option} must be positive, got {value}")
    if Path(args.output).suffix.lower() == ".npy":
        raise CLIError(f"--output {args.output}: --engine writes a folder of parquet shards; name a folder "
                       "(or leave --engine out for a .npy)")
    if args.engine == "ray":
        try:
            require_ray()
        except MissingExtra:
            raise CLIError(f"--engine ray needs Ray Data: {EXTRA}") from None
    try:
        require_pyarrow()
    except MissingExtra:
        raise CLIError(f"--engine {args.engine} needs pyarrow: {EXTRA}") from None
    if not Path(args.input).is_file() and Path(args.input).suffix.lower() in INPUT_SUFFIXES:
        raise FileNotFoundError(f"--input {args.input}: file not found")
    result = embed_to_parquet(
        args.model, args.input, args.output, engine=args.engine, actors=args.actors or 1,
        shard_rows=args.shard_rows or DEFAULT_SHARD_ROWS, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, mode=args.mode, dimensions=args.dimensions, trust_remote_code=args.trust_remote_code,
        progress=(lambda line: None) if args.no_progress else (lambda line: print(line, flush=True)),
    )
    print(f"wrote {result.output_dir}: {result.rows} rows in {result.shards} shards "
          f"({len(result.embedded)} embedded now, {len(result.skipped)} kept)")
    return 0
