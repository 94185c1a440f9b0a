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
        help="embed texts, images and both from a JSONL file",
        description='Embed rows {"text": ..., "image": ..., "instruction": ...} of a JSONL file. Image '
        "paths are relative to the JSONL's folder. Output: a float32 .npy matrix, one unit row per input row.",
    )
    parser.add_argument("--model", required=True, help="unime model folder, UniME checkpoint, MLLM or hub id")
    parser.add_argument("--input", required=True, help="rows.jsonl")
    parser.add_argument("--output", required=True, help="embeddings .npy")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--dimensions", type=int, default=None, metavar="N", help=DIMENSIONS_HELP)
    parser.add_argument("--mode", default=None, choices=["sum", "joint"], help="override the saved mode")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow hub remote code (Phi-3.5-V)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def read_rows(path: Path) -> list[EmbedInput]:
    """Parse and validate every row first, so a bad row fails before any model work."""
    from unime.inputs import to_input
    from unime.io.jsonl import iter_jsonl, text_lines

    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: file not found")
    rows: list[EmbedInput] = []
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
        rows.append(to_input(row, where=where))  # validated here, once: encode takes the inputs as they are
    if not rows:
        raise ValueError(f"{path}: no rows to embed")
    return rows


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import unime
    from unime.environment import resolve_dtype
    from unime.io.integrity import atomic_path

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.dimensions is not None and args.dimensions <= 0:
        raise ValueError(f"--dimensions must be positive, got {args.dimensions}")
    rows = read_rows(Path(args.input))
    model = unime.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device,
                       dtype=resolve_dtype(args.dtype, args.device), mode=args.mode)
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
