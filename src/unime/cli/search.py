"""``unime search``: the best items of an index for a sentence or a photo (docs/search.md)."""

from __future__ import annotations

import argparse
import json

from unime.choices import DTYPES
from unime.cli import DTYPE_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    from unime.index import TARGETS

    parser = subparsers.add_parser(
        "search",
        help="search an index with a sentence or a photo",
        description="Embed a query (--text, --image or both) with the index's model and print the best "
        "items with their cosine similarity: text to images, image to texts, image to images.",
    )
    parser.add_argument("index", help="index folder written by unime index")
    parser.add_argument("--text", help="query text")
    parser.add_argument("--image", help="query image file")
    parser.add_argument("--instruction", help="query instruction, as the model was trained with")
    parser.add_argument("-k", "--top-k", type=int, default=10, help="how many results (default 10)")
    parser.add_argument("--target", default="all", choices=TARGETS,
                        help="images: only items with a photo; texts: only text items (default all)")
    parser.add_argument("--json", action="store_true", help="one JSON object per result")
    parser.add_argument("--model", help="embed the query with this model instead of the one the index names")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--trust-remote-code", action="store_true", help="allow hub remote code (Phi-3.5-V)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import unime
    from unime.cli import CLIError
    from unime.cli.index import require_faiss
    from unime.environment import resolve_dtype
    from unime.index import open_index
    from unime.inputs import to_input
    from unime.model_names import check_model_name

    if args.text is None and args.image is None:
        raise CLIError("give a query: --text, --image or both")
    if args.top_k < 1:
        raise CLIError(f"--top-k must be positive, got {args.top_k}")
    if args.image is not None and not Path(args.image).is_file():
        raise CLIError(f"--image {args.image}: file not found")
    require_faiss()
    index = open_index(args.index)
    model_name = args.model or index.model
    check_model_name(model_name, option="--model" if args.model else f"the model of {args.index}")
    query = to_input({"text": args.text, "image": args.image, "instruction": args.instruction}, where="query")
    model = unime.load(model_name, trust_remote_code=args.trust_remote_code, device=args.device,
                       dtype=resolve_dtype(args.dtype, args.device), mode=index.manifest.get("mode"))
    if index.manifest.get("truncated_to"):
        model.set_dimensions(int(index.manifest["truncated_to"]))
    vector = model.encode([query], batch_size=1, show_progress_bar=False)
    hits = index.search(vector, k=args.top_k, target=args.target)[0]
    if not hits:
        print(f"no {args.target} in {args.index}")
    for hit in hits:
        if args.json:
            print(json.dumps(hit.to_json(), ensure_ascii=False))
        else:
            what = " | ".join(str(hit.item[key]) for key in ("image", "text") if key in hit.item)
            print(f"{hit.rank:>3}  {hit.score:.4f}  {hit.item['id']}  {what}")
    return 0
