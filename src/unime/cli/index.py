"""``unime index``: embed texts and photos with a model and write a FAISS search index (docs/search.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unime.choices import DTYPES
from unime.cli import DIMENSIONS_HELP, DTYPE_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    from unime.index import KINDS

    parser = subparsers.add_parser(
        "index",
        help="embed texts and photos into a FAISS search index",
        description='Embed the rows {"id", "text", "image", "instruction", "meta"} of a JSONL file, or every '
        "photo of a folder (or both), and write a search index folder: index.faiss, items.jsonl and a "
        "checked manifest. Search it with unime search, or over HTTP with unime serve --index.",
    )
    parser.add_argument("--model", help="unime model folder, UniME checkpoint, MLLM or hub id")
    parser.add_argument("--input", help="rows.jsonl (image paths relative to its folder)")
    parser.add_argument("--images", help="a folder of photos, indexed by their relative paths")
    parser.add_argument("--embeddings", metavar="DIR",
                        help="a finished bulk job's folder (unime encode --engine local|ray): index its vectors "
                        "and the rows of its input without embedding anything again (no --model needed)")
    parser.add_argument("--output", required=True, help="index folder to write")
    parser.add_argument("--kind", default="auto", choices=KINDS,
                        help="flat: exact; hnsw or ivf: approximate (default auto: flat below 200,000 items)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--dimensions", type=int, default=None, metavar="N", help=DIMENSIONS_HELP)
    parser.add_argument("--mode", default=None, choices=["sum", "joint"], help="override the saved mode")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow hub remote code (Phi-3.5-V)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def require_faiss() -> None:
    """The commands' check that FAISS is installed, before anything is read or loaded."""
    from unime.cli import CLIError
    from unime.index import _faiss

    try:
        _faiss()
    except ImportError as error:
        raise CLIError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    from unime.cli import CLIError
    from unime.index import check_output

    if args.embeddings is not None:
        if args.input is not None or args.images is not None or args.model is not None or args.dimensions is not None:
            raise CLIError("--embeddings takes the model, rows and size of its bulk job: drop --model, --input, "
                           "--images and --dimensions")
    elif args.model is None:
        raise CLIError("--model is required (unless --embeddings names a bulk job's folder)")
    elif args.input is None and args.images is None:
        raise CLIError("give --input rows.jsonl, --images FOLDER, or both (or --embeddings DIR)")
    if args.batch_size <= 0:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    if args.dimensions is not None and args.dimensions <= 0:
        raise CLIError(f"--dimensions must be positive, got {args.dimensions}")
    output = Path(args.output)
    check_output(output, args.overwrite)
    require_faiss()
    if args.embeddings is not None:
        _from_bulk(args, output)
    else:
        _from_model(args, output)
    _report(output)
    return 0


def _from_model(args: argparse.Namespace, output: Path) -> None:
    import unime
    from unime.environment import resolve_dtype
    from unime.index import build_index, check_unique_ids, folder_items, read_items

    items = (read_items(args.input) if args.input else []) + (folder_items(args.images) if args.images else [])
    check_unique_ids(items)
    model = unime.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device,
                       dtype=resolve_dtype(args.dtype, args.device), mode=args.mode)
    if args.dimensions is not None:
        model.set_dimensions(args.dimensions)
    build_index(model, items, output, model_name=args.model, kind=args.kind, batch_size=args.batch_size,
                overwrite=args.overwrite, show_progress_bar=not args.no_progress)


def _from_bulk(args: argparse.Namespace, output: Path) -> None:
    from unime.index import bulk_items, write_index

    items, vectors, manifest = bulk_items(args.embeddings)
    write_index(vectors, items, output, kind=args.kind, model_name=manifest["model"], mode=manifest.get("mode"),
                truncated_to=manifest.get("dimensions"), overwrite=args.overwrite)


def _report(output: Path) -> None:
    from unime.index import open_index

    index = open_index(output)
    manifest = index.manifest
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(manifest["kinds"].items()))
    seconds = manifest["seconds"]
    print(f"wrote {output}: {len(index)} items ({kinds}), {index.dimensions} values each, "
          f"{manifest['index']['kind']} index"
          + (f"; embedded in {seconds['embed']:.1f} s" if "embed" in seconds else "") + f", "
          f"indexed in {seconds['build']:.2f} s")
