"""``unime encode``: embed the rows of a JSONL file into a .npy matrix, in input order."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from unime.choices import DTYPES
from unime.cli import DIMENSIONS_HELP, DTYPE_HELP

if TYPE_CHECKING:
    from unime.inputs import EmbedInput


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "encode",
        help="embed texts, images, videos and both from a JSONL file",
        description='Embed rows {"text": ..., "image": ..., "video": ..., "instruction": ...} of a JSONL file; '
        '"video" is a video file or a list of frame images (docs/video.md). Image, video and frame paths are '
        "relative to the JSONL's folder. Output: a float32 .npy matrix, one unit row per input row.",
    )
    parser.add_argument("--model", required=True, help="unime model folder, UniME checkpoint, MLLM or hub id")
    parser.add_argument("--input", required=True, help="rows.jsonl")
    parser.add_argument("--output", required=True, help="embeddings .npy")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--dimensions", type=int, default=None, metavar="N", help=DIMENSIONS_HELP)
    parser.add_argument("--mode", default=None, choices=["sum", "joint"], help="override the saved mode")
    parser.add_argument("--video-frames", type=int, default=None, metavar="N",
                        help="frames sampled uniformly from each video (default: the model's video_frames, 8)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow hub remote code (Phi-3.5-V)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def _resolve(value: str, path: Path, where: str, what: str) -> str:
    """A path of a row, relative to the JSONL's folder, that must name a file."""
    resolved = Path(value) if Path(value).is_absolute() else path.parent / value
    if not resolved.is_file():
        raise FileNotFoundError(f"{where}: {what} file not found: {resolved}")
    return str(resolved)


def read_rows(path: Path) -> list[EmbedInput]:
    """Parse and validate every row first, so a bad row fails before any model work."""
    return read_named_rows(path)[0]


def read_named_rows(path: Path) -> tuple[list[EmbedInput], list[str]]:
    """:func:`read_rows` and each row's name (``"rows.jsonl line 3"``) for later error messages."""
    from unime.inputs import to_input
    from unime.io.jsonl import iter_jsonl, text_lines

    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: file not found")
    rows: list[EmbedInput] = []
    names: list[str] = []
    for number, row, error in iter_jsonl(text_lines(path)):
        where = f"{path} line {number}"
        if error is not None:
            raise ValueError(f"{where}: not valid JSON ({error})")
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with text / image / instruction")
        # A non-string image is left to to_input, which names the key and the type.
        if isinstance(row.get("image"), str) and row["image"]:
            image = Path(row["image"])
            row["image"] = str(image if image.is_absolute() else path.parent / image)
            if not Path(row["image"]).is_file():
                raise FileNotFoundError(f"{where}: image file not found: {row['image']}")
        # A video is a file or a list of frames; other types are left to to_input, which names them.
        video = row.get("video")
        if isinstance(video, str) and video:
            row["video"] = _resolve(video, path, where, "video")
        elif isinstance(video, list):
            row["video"] = [_resolve(frame, path, f"{where}: video[{index}]", "frame image")
                            if isinstance(frame, str) and frame else frame for index, frame in enumerate(video)]
        rows.append(to_input(row, where=where))  # validated here, once: encode takes the inputs as they are
        names.append(where)
    if not rows:
        raise ValueError(f"{path}: no rows to embed")
    return rows, names


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
    rows, names = read_named_rows(Path(args.input))
    model = unime.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device,
                       dtype=resolve_dtype(args.dtype, args.device), mode=args.mode)
    if args.video_frames is not None:
        model.update_config(video_frames=args.video_frames)
    check_frame_lists(rows, names, model.unime_config.video_frames)
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
