"""``unime plot``: the paper's figures: cross-modal similarity matrices and training curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from unime.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="similarity-matrix heat maps and training curves",
        description="Figures of the UniME paper's analyses (PNG, PDF or SVG by suffix).",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True

    similarity = kinds.add_parser(
        "similarity", help="image-caption cosine similarity matrix, models side by side"
    )
    similarity.add_argument(
        "--model", required=True, action="append", help="model to plot; repeat for several"
    )
    similarity.add_argument("--labels", nargs="+", help="one title per --model (default: the model paths)")
    source = similarity.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", help='JSONL/CSV of {"image", "caption"} rows')
    source.add_argument("--retrieval-data", help="any layout of `unime eval retrieval --data`")
    similarity.add_argument("--image-dir", help="image root (default: the data file's folder)")
    similarity.add_argument("--split", default="test", help="Karpathy split (default test)")
    similarity.add_argument("-n", type=int, default=50, help="number of image-caption pairs (default 50)")
    similarity.add_argument("--batch-size", type=int, default=16)
    similarity.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    similarity.add_argument(
        "--trust-remote-code", action="store_true", help="allow hub remote code (Phi-3.5-V)"
    )
    similarity.add_argument("--output", required=True, help="figure file")
    similarity.set_defaults(func=run_similarity)

    training = kinds.add_parser("training", help="loss and grad_norm curves from trainer logs")
    training.add_argument(
        "--log", required=True, action="append", help="trainer_state.json or .jsonl log; repeatable"
    )
    training.add_argument(
        "--labels", nargs="+", help="one legend entry per --log (default: the log's folder)"
    )
    training.add_argument("--output", required=True, help="figure file")
    training.set_defaults(func=run_training)


def _labels(labels: list[str] | None, count: int, option: str) -> list[str | None]:
    if labels is None:
        return [None] * count
    if len(labels) != count:
        raise CLIError(f"--labels has {len(labels)} entries for {count} {option}; give one per {option}")
    return list(labels)


def run_similarity(args: argparse.Namespace) -> int:
    import unime
    from unime.evaluation.plots import diagonal_summary, first_pairs, plot_similarity, similarity_matrix
    from unime.evaluation.retrieval import load_retrieval

    labels = _labels(args.labels, len(args.model), "--model")
    path = args.pairs or args.retrieval_data
    dataset = load_retrieval(path, args.image_dir, fmt="table" if args.pairs else "auto", split=args.split)
    images, captions = first_pairs(dataset, args.n)
    matrices = []
    for model_path, label in zip(args.model, labels, strict=True):
        model = unime.load(model_path, trust_remote_code=args.trust_remote_code, device=args.device)
        matrix = similarity_matrix(model, images, captions, args.batch_size)
        summary = diagonal_summary(matrix)
        print(f"{label or model_path}: " + ", ".join(f"{key} {value:.3f}" for key, value in summary.items()))
        matrices.append((label or Path(model_path).name, matrix))
    print(f"wrote {plot_similarity(matrices, args.output)}")
    return 0


def run_training(args: argparse.Namespace) -> int:
    from unime.evaluation.plots import plot_training, read_training_log

    labels = _labels(args.labels, len(args.log), "--log")
    logs = [read_training_log(path, label) for path, label in zip(args.log, labels, strict=True)]
    print(f"wrote {plot_training(logs, args.output)}")
    return 0
