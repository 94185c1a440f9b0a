"""``unime eval``: MMEB, image-text retrieval, SugarCrepe and STS benchmarks, and result comparison.

Each task writes ``--output`` (JSON) and a markdown table beside it, prints the table, and with
``--compare A.json ...`` also prints the new result side by side with earlier ones. Launched with
``torchrun``, every process loads the model and the encoding is split between them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from unime.choices import DTYPES
from unime.cli import DIMENSIONS_HELP, DTYPE_HELP, CLIError
from unime.cli.recipe_flags import split_names

logger = logging.getLogger(__name__)


def _model_options(parser: argparse.ArgumentParser, several_dimensions: bool = False) -> None:
    parser.add_argument("--model", required=True, help="unime model folder, UniME checkpoint, MLLM or hub id")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (under torchrun: cuda:LOCAL_RANK)"
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    if several_dimensions:
        parser.add_argument("--dimensions", type=int, nargs="+", default=None, metavar="N",
                            help=DIMENSIONS_HELP + "; several sizes: one table, a row per size, from embeddings "
                            "computed once at the full size and truncated")
    else:
        parser.add_argument("--dimensions", type=int, default=None, metavar="N", help=DIMENSIONS_HELP)
    parser.add_argument("--mode", default=None, choices=["sum", "joint"], help="override the saved mode")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow hub remote code (Phi-3.5-V)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--compare", nargs="+", metavar="RESULT.json", help="print this run beside earlier results"
    )


def _rerank_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--rerank", metavar="JUDGE", default=None,
                        help=f"also re-order {what} with this judge model's yes-probability (UniME-V2's reranking; "
                        "a model with an LM head, see unime judge) and report both tables")
    parser.add_argument("--rerank-top", type=int, default=5,
                        help="candidates re-ordered per query (default: %(default)s)")
    parser.add_argument("--rerank-batch-size", type=int, default=8,
                        help="judge pairs per batch (default: %(default)s)")


def _check_rerank(args: argparse.Namespace) -> None:
    if args.rerank_top <= 0 or args.rerank_batch_size <= 0:
        raise CLIError(f"--rerank-top and --rerank-batch-size must be positive, got {args.rerank_top} and "
                       f"{args.rerank_batch_size}")
    if args.rerank:
        from unime.model_names import check_model_name

        check_model_name(args.rerank, option="--rerank")


def _judge(args: argparse.Namespace) -> Any:
    """The ``--rerank`` judge, on this process's device."""
    from unime.environment import default_device, rank_device
    from unime.judge import Judge

    return Judge(args.rerank, trust_remote_code=args.trust_remote_code,
                 device=rank_device(args.device) or default_device())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="run a benchmark (mmeb, mmeb-v2, retrieval, sugarcrepe, sts) or compare results",
        description="Benchmarks of the UniME paper. Every score is a percentage.",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True

    mmeb = tasks.add_parser("mmeb", help="MMEB-eval precision@1 and the paper's table")
    _model_options(mmeb, several_dimensions=True)
    mmeb.add_argument(
        "--data-dir", required=True, help="local TIGER-Lab/MMEB-eval: one folder of parquet per dataset"
    )
    mmeb.add_argument("--image-dir", required=True, help="MMEB image root; row paths are relative to it")
    mmeb.add_argument("--datasets", nargs="+", help="dataset folder names, space- or comma-separated (default: all found)")
    mmeb.add_argument("--output", required=True, help="result JSON; the markdown table goes beside it")
    mmeb.add_argument(
        "--cache-dir", help="per-dataset embeddings and scores (default: OUTPUT without .json + .cache)"
    )
    mmeb.add_argument("--overwrite", action="store_true", help="drop cached embeddings and scores first")
    mmeb.add_argument("--chunk-size", type=int, default=1024, help="inputs per cached chunk")
    mmeb.add_argument(
        "--groups",
        help='JSON {dataset: {"meta_task": ..., "split": "IND"|"OOD"}} replacing the paper\'s 36-dataset split '
        "(e.g. the synthetic benchmark's mmeb_eval/splits.json)",
    )
    mmeb.add_argument(
        "--protocol",
        default="vlm2vec",
        choices=["vlm2vec", "unime"],
        help="vlm2vec (default): VLM2Vec v1 eval.py, which produced UniME's MMEB numbers: the raw text with "
        "<|image_1|> as the backbone's bare image token, no chat template or summary prompt, square image "
        "resize, per-backbone max length, argmax ties, bf16 (--dtype auto keeps it where bf16 is native, else "
        "float32; the result records the dtype used); unime: the model's "
        "own prompts and mode, the processor's own image size, strict ties (docs/evaluation.md)",
    )
    mmeb.add_argument(
        "--image-resolution",
        default="high",
        choices=["high", "mid", "low", "none"],
        help="vlm2vec: resize every image to 1344 (high), 672 (mid) or 128 (low) px square before the "
        "processor; none: only images above 1344 px (Phi-3.5-V: never resized)",
    )
    mmeb.add_argument(
        "--max-length",
        type=int,
        help="vlm2vec: token limit per sequence (default: Phi-3.5-V 256, LLaVA-1.6 4096, other backbones none)",
    )
    mmeb.add_argument(
        "--ties",
        choices=["argmax", "strict"],
        help="precision@1 tie rule: argmax (a tie with the positive, at index 0, is a hit; vlm2vec's default) "
        "or strict (the positive must win outright; unime's default)",
    )
    mmeb.add_argument(
        "--save-scores",
        metavar="DIR",
        help="write DIR/<dataset>.npy per dataset: float32 [queries, candidates], row i the cosine scores of "
        "query i against its own candidate list in the data's order (NaN pads shorter lists)",
    )
    _rerank_options(mmeb, "each query's top candidates")
    mmeb.set_defaults(func=run_mmeb_command)

    v2 = tasks.add_parser("mmeb-v2", help="MMEB-V2 (image, video, visual documents) as VLM2Vec-V2 scores it")
    _model_options(v2)
    v2.add_argument("--data-dir", required=True,
                    help="root of the MMEB-V2 data: the image_root / frame_root of the YAML entries are relative to it")
    v2.add_argument("--config", required=True, nargs="+", metavar="YAML",
                    help="VLM2Vec-V2 eval configs (image.yaml, video.yaml, visdoc.yaml)")
    v2.add_argument("--hf-dir", help="each set's hub data saved as parquet, one folder per dataset_name "
                    "(default: DATA_DIR/hf)")
    v2.add_argument("--mmeb-dir", help="MMEB-eval parquet folders for the image group (default: DATA_DIR/MMEB-eval)")
    v2.add_argument("--sets", nargs="+", help="set names (YAML keys), space- or comma-separated (default: all)")
    v2.add_argument("--output", required=True, help="result JSON; the markdown table goes beside it")
    v2.add_argument("--cache-dir", help="per-set embeddings and scores (default: OUTPUT without .json + .cache)")
    v2.add_argument("--overwrite", action="store_true", help="drop cached embeddings and scores first")
    v2.add_argument("--chunk-size", type=int, default=1024, help="inputs per cached chunk")
    v2.set_defaults(func=run_mmeb_v2_command)

    retrieval = tasks.add_parser("retrieval", help="image-text R@1/5/10 in both directions")
    _model_options(retrieval, several_dimensions=True)
    retrieval.add_argument(
        "--data",
        required=True,
        action="append",
        help="Karpathy JSON, CSV/TSV/JSONL (image,caption), ShareGPT4V JSON or Urban1K folder; repeatable",
    )
    retrieval.add_argument(
        "--image-dir", action="append", help="image root, once for all --data or once per --data"
    )
    retrieval.add_argument(
        "--name", action="append", help="dataset name, once per --data (default: from the file)"
    )
    retrieval.add_argument(
        "--format", default="auto", choices=["auto", "karpathy", "table", "sharegpt4v", "urban1k"]
    )
    retrieval.add_argument("--split", default="test", help="Karpathy split (default test)")
    retrieval.add_argument("--limit", type=int, default=1000, help="ShareGPT4V entries to use (default 1000)")
    retrieval.add_argument(
        "--captions-per-image", type=int, default=5,
        help="Karpathy files: the first N captions of each image, as the official scripts cut COCO's (0: all)",
    )
    retrieval.add_argument("--output", help="result JSON; the markdown table goes beside it")
    _rerank_options(retrieval, "each query's top candidates (an image's captions, a caption's images)")
    retrieval.set_defaults(func=run_retrieval_command)

    sugarcrepe = tasks.add_parser("sugarcrepe", help="SugarCrepe compositionality accuracy")
    _model_options(sugarcrepe)
    sugarcrepe.add_argument("--data-dir", required=True, help="folder with the <split>.json files")
    sugarcrepe.add_argument("--image-dir", required=True, help="COCO val2017 images")
    sugarcrepe.add_argument("--splits", nargs="+", help="subset of the 7 splits, space- or comma-separated (default: all present)")
    sugarcrepe.add_argument("--output", help="result JSON; the markdown table goes beside it")
    sugarcrepe.set_defaults(func=run_sugarcrepe_command)

    sts = tasks.add_parser("sts", help="STS-B / SICK Spearman x100 of cosine similarity")
    _model_options(sts)
    sts.add_argument(
        "--data",
        required=True,
        action="append",
        help="STS-B or SICK file (TSV/CSV/JSONL/SICK.txt); repeatable",
    )
    sts.add_argument("--split", help="keep rows of this split (SemEval_set / split column), e.g. test")
    sts.add_argument("--name", action="append", help="dataset name, once per --data (default: from the file)")
    sts.add_argument("--output", help="result JSON; the markdown table goes beside it")
    sts.set_defaults(func=run_sts_command)

    compare = tasks.add_parser("compare", help="side-by-side markdown table of result files")
    compare.add_argument("results", nargs="+", metavar="RESULT.json")
    compare.add_argument("--output", help="also write the table to this markdown file")
    compare.set_defaults(func=run_compare_command)


def _per_data(values: list[str] | None, count: int, option: str) -> list[str | None]:
    """An option given once for all ``--data``, once per ``--data``, or not at all."""
    if not values:
        return [None] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise CLIError(
            f"{option} given {len(values)} times for {count} --data; give it once or once per --data"
        )
    return list(values)


def _init_distributed() -> None:
    """Join the torchrun process group, if launched by torchrun and not joined yet."""
    from unime.environment import rank_and_world_size

    if rank_and_world_size()[1] <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)


def _check_options(args: argparse.Namespace) -> None:
    """Fail on bad options before reading data or loading the model, not after a long run."""
    from unime.evaluation.report import read_metrics

    if args.batch_size <= 0:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    dimensions = getattr(args, "dimensions", None)
    for size in dimensions if isinstance(dimensions, list) else [dimensions]:
        if size is not None and size <= 0:
            raise CLIError(f"--dimensions must be positive, got {size}")
    if isinstance(dimensions, list) and len(set(dimensions)) != len(dimensions):
        raise CLIError(f"--dimensions names a size twice: {' '.join(map(str, dimensions))}")
    for path in args.compare or []:
        read_metrics(path)


def _load_model(args: argparse.Namespace) -> Any:
    import unime
    from unime.environment import rank_and_world_size, resolve_dtype

    _init_distributed()
    device = args.device
    if device is None and rank_and_world_size()[1] > 1:
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    # The dtype actually used, which the mmeb result records: auto is the device's rule.
    args.dtype = resolve_dtype(args.dtype, device)
    model = unime.load(
        args.model, trust_remote_code=args.trust_remote_code, device=device, dtype=args.dtype, mode=args.mode
    )
    dimensions = getattr(args, "dimensions", None)
    if isinstance(dimensions, list):
        # Several sizes: each is checked against the model (too large: an error; untrained: a warning),
        # and the model embeds at its full size, truncated afterwards; one size: the model truncates.
        for size in dimensions:
            model.set_dimensions(size)
        model.set_dimensions(dimensions[0] if len(dimensions) == 1 else None)
    elif dimensions is not None:
        model.set_dimensions(dimensions)
    return model


def _shared(model: Any) -> Any:
    """Under torchrun, split the encoding between the processes (in memory, nothing cached)."""
    from unime.evaluation.encoding import CachedEncoder, distributed_world

    return CachedEncoder(model) if distributed_world()[1] > 1 else model


def _finish(args: argparse.Namespace, task: str, metrics: dict[str, float], config: dict[str, Any]) -> int:
    """Print the table, write the result files (rank 0) and print any comparison."""
    from unime.evaluation.encoding import is_main_process
    from unime.evaluation.report import compare_markdown, markdown_report, read_metrics, write_results

    if not is_main_process():
        return 0
    print(markdown_report(task, metrics), end="")
    if args.output:
        # The dtype the model ran in (what --dtype auto resolved to on this device), beside the scores.
        config = {**config, "dtype": args.dtype}
        dimensions = getattr(args, "dimensions", None)
        if dimensions is not None:
            config["dimensions"] = dimensions[0] if isinstance(dimensions, list) and len(dimensions) == 1 else dimensions
        markdown = write_results(args.output, task, metrics, model=args.model, config=config)
        print(f"wrote {args.output} and {markdown}")
    if args.compare:
        label = Path(args.output).stem if args.output else "this run"
        earlier = [(Path(path).stem, read_metrics(path)) for path in args.compare]
        print(compare_markdown([*earlier, (label, metrics)]), end="")
    return 0


def read_groups(path: str) -> dict[str, tuple[str, str]]:
    """Read a --groups file: dataset -> (meta-task, IND/OOD)."""
    from unime.evaluation.mmeb import META_TASKS

    file = Path(path)
    if not file.is_file():
        raise CLIError(f"--groups {file}: file not found")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CLIError(f"--groups {file}: not valid JSON ({error.msg})") from None
    groups = {}
    for name, info in raw.items():
        meta, split = (info or {}).get("meta_task"), (info or {}).get("split")
        if meta not in META_TASKS or split not in ("IND", "OOD"):
            raise CLIError(f"--groups {file}: dataset {name!r} needs meta_task in {META_TASKS} and split IND or OOD")
        groups[name] = (meta, split)
    return groups


def run_mmeb_command(args: argparse.Namespace) -> int:
    from unime.evaluation.mmeb import MMEBProtocol
    from unime.evaluation.runner import model_identity, run_mmeb

    _check_options(args)
    if args.max_length is not None and args.max_length <= 0:
        raise CLIError(f"--max-length must be positive, got {args.max_length}")
    if args.protocol == "unime" and (args.max_length is not None or args.image_resolution != "high"):
        raise CLIError("--max-length and --image-resolution belong to --protocol vlm2vec; the unime protocol "
                       "uses the model's prompts and the processor's own image size")
    protocol = MMEBProtocol(args.protocol, args.image_resolution, args.max_length, args.ties)
    output = Path(args.output)
    if output.suffix.lower() != ".json":
        raise CLIError(f"--output {output}: expected a .json file")
    if args.chunk_size <= 0:
        raise CLIError(f"--chunk-size must be positive, got {args.chunk_size}")
    cache_dir = Path(args.cache_dir) if args.cache_dir else output.with_suffix(".cache")
    groups = read_groups(args.groups) if args.groups else None
    _check_rerank(args)
    table = args.dimensions if args.dimensions is not None and len(args.dimensions) > 1 else None
    if table and (args.rerank or args.save_scores):
        raise CLIError("--rerank and --save-scores take one size: give --dimensions once")
    # Reranking reads every data set's score matrix: kept where asked, else beside the cache.
    scores_dir = Path(args.save_scores) if args.save_scores else cache_dir / "scores"
    model = _load_model(args)
    if table:
        from unime.evaluation.runner import run_mmeb_dimensions

        metrics = run_mmeb_dimensions(
            model, args.data_dir, args.image_dir, cache_dir, table, names=split_names(args.datasets),
            model_id=model_identity(args.model), batch_size=args.batch_size, chunk_size=args.chunk_size,
            overwrite=args.overwrite, show_progress_bar=not args.no_progress, groups=groups, protocol=protocol)
        config = {"data_dir": args.data_dir, "image_dir": args.image_dir, "datasets": split_names(args.datasets),
                  "cache_dir": str(cache_dir), "protocol": protocol.describe(model)}
        return _finish(args, "mmeb", metrics, config)
    metrics = run_mmeb(
        model,
        args.data_dir,
        args.image_dir,
        cache_dir,
        names=split_names(args.datasets),
        model_id=model_identity(args.model),
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        show_progress_bar=not args.no_progress,
        groups=groups,
        protocol=protocol,
        save_scores=scores_dir if (args.save_scores or args.rerank) else None,
    )
    config = {
        "data_dir": args.data_dir,
        "image_dir": args.image_dir,
        "datasets": split_names(args.datasets),
        "cache_dir": str(cache_dir),
        "protocol": protocol.describe(model),
        "save_scores": args.save_scores,
    }
    if args.rerank:
        del model  # the judge needs the memory
        metrics.update(_rerank_mmeb(args, metrics, scores_dir, groups))
        config["rerank"] = {"model": args.rerank, "top": args.rerank_top}
    return _finish(args, "mmeb", metrics, config)


def _rerank_mmeb(args: argparse.Namespace, metrics: dict[str, float], scores_dir: Path,
                 groups: dict[str, tuple[str, str]] | None) -> dict[str, float]:
    """Each data set's top candidates re-ordered by the judge (``--rerank``): precision@1 under
    ``mmeb/reranked/<dataset>/precision@1`` and the reranked means, printed as their own table."""
    import numpy as np

    from unime.evaluation.encoding import is_main_process
    from unime.evaluation.mmeb import load_mmeb_dataset, summarize_mmeb
    from unime.evaluation.report import mmeb_markdown
    from unime.evaluation.rerank import reranked_precision

    if not is_main_process():
        return {}
    judge = _judge(args)
    reranked: dict[str, float] = {}
    for key in metrics:
        name = key.split("/")[1]
        path = scores_dir / f"{name}.npy"
        if key.count("/") != 2 or not path.exists():
            continue
        dataset = load_mmeb_dataset(Path(args.data_dir) / name, Path(args.image_dir), name)
        reranked[name] = reranked_precision(judge, dataset, np.load(path), args.rerank_top, args.rerank_batch_size)
    summary = summarize_mmeb(reranked, groups)
    print(f"\nReranked: the top {args.rerank_top} of each query re-ordered by {args.rerank}\n")
    print(mmeb_markdown(summary), end="")
    return {key.replace("mmeb/", "mmeb/reranked/", 1): value for key, value in summary.items()}


def run_mmeb_v2_command(args: argparse.Namespace) -> int:
    from unime.evaluation.mmeb_v2 import Layout, describe_protocol, read_config, run_mmeb_v2, select_sets
    from unime.evaluation.runner import model_identity
    from unime.model_names import check_model_name

    _check_options(args)
    check_model_name(args.model)  # before the data is read: a wrong name is named first
    output = Path(args.output)
    if output.suffix.lower() != ".json":
        raise CLIError(f"--output {output}: expected a .json file")
    if args.chunk_size <= 0:
        raise CLIError(f"--chunk-size must be positive, got {args.chunk_size}")
    if not Path(args.data_dir).is_dir():
        raise CLIError(f"--data-dir {args.data_dir}: folder not found")
    try:
        configs = select_sets([entry for path in args.config for entry in read_config(path)],
                              split_names(args.sets))
    except (OSError, ValueError) as error:
        raise CLIError(str(error)) from None
    layout = Layout.under(args.data_dir, args.hf_dir, args.mmeb_dir)
    cache_dir = Path(args.cache_dir) if args.cache_dir else output.with_suffix(".cache")
    model = _load_model(args)
    run = run_mmeb_v2(model, configs, layout, cache_dir, model_id=model_identity(args.model),
                      batch_size=args.batch_size, chunk_size=args.chunk_size, overwrite=args.overwrite,
                      show_progress_bar=not args.no_progress)
    config = {
        "data_dir": args.data_dir, "hf_dir": str(layout.hf_dir), "mmeb_dir": str(layout.mmeb_dir),
        "configs": args.config, "sets": [entry.name for entry in configs], "cache_dir": str(cache_dir),
        "protocol": describe_protocol(model), "not_run": run.not_run, "set_notes": run.notes,
    }
    code = _finish(args, "mmeb-v2", run.metrics(), config)
    for name, reason in run.not_run.items():
        print(f"not run: {name} ({reason})")
    return code


def run_retrieval_command(args: argparse.Namespace) -> int:
    from unime.evaluation.encoding import is_main_process
    from unime.evaluation.retrieval import load_retrieval, retrieval_embeddings, retrieval_metrics

    _check_options(args)
    _check_rerank(args)
    table = args.dimensions if args.dimensions is not None and len(args.dimensions) > 1 else None
    if args.rerank and table:
        raise CLIError("--rerank with several --dimensions: rerank at one size (give --dimensions once)")
    image_dirs = _per_data(args.image_dir, len(args.data), "--image-dir")
    names = args.name or []
    if names and len(names) != len(args.data):
        raise CLIError(
            f"--name given {len(names)} times for {len(args.data)} --data; give it once per --data"
        )
    datasets = [
        load_retrieval(path, image_dir, fmt=args.format, split=args.split, limit=args.limit, name=name,
                       captions_per_image=args.captions_per_image or None)
        for path, image_dir, name in zip(args.data, image_dirs, names or [None] * len(args.data), strict=True)
    ]
    model = _load_model(args)
    shared = _shared(model)
    embedded = [(dataset, *retrieval_embeddings(shared, dataset, args.batch_size, not args.no_progress))
                for dataset in datasets]
    metrics = retrieval_metrics(embedded, table)
    config = {"data": args.data, "image_dir": args.image_dir, "split": args.split, "limit": args.limit,
              "captions_per_image": args.captions_per_image or None}
    if args.rerank:
        del model, shared  # the judge needs the memory
        if is_main_process():
            metrics.update(_rerank_retrieval(args, embedded))
        config["rerank"] = {"model": args.rerank, "top": args.rerank_top}
    return _finish(args, "retrieval", metrics, config)


def _rerank_retrieval(args: argparse.Namespace, embedded: list[tuple[Any, Any, Any]]) -> dict[str, float]:
    """Each dataset's top candidates in both directions re-ordered by the judge (``--rerank``): R@K under
    ``retrieval/reranked/<dataset>/...`` and ``retrieval/reranked/mean_R@1``."""
    from unime.evaluation.rerank import rerank_retrieval_ranks
    from unime.evaluation.retrieval import query_ranks, ranks_metrics, unit_rows

    judge = _judge(args)
    reranked = []
    for dataset, text, image in embedded:
        before = query_ranks(unit_rows(text), unit_rows(image), dataset.caption_image)
        reranked.append((dataset.name, rerank_retrieval_ranks(judge, dataset, text, image, before, args.rerank_top,
                                                              args.rerank_batch_size)))
    return ranks_metrics(reranked, prefix="retrieval/reranked")


def run_sugarcrepe_command(args: argparse.Namespace) -> int:
    from unime.evaluation.sugarcrepe import evaluate_sugarcrepe, load_sugarcrepe

    _check_options(args)
    splits = load_sugarcrepe(args.data_dir, args.image_dir, split_names(args.splits))
    model = _load_model(args)
    metrics = evaluate_sugarcrepe(_shared(model), splits, args.batch_size, not args.no_progress)
    return _finish(args, "sugarcrepe", metrics, {"data_dir": args.data_dir, "image_dir": args.image_dir})


def run_sts_command(args: argparse.Namespace) -> int:
    from unime.evaluation.sts import evaluate_sts, load_sts

    _check_options(args)
    names = args.name or []
    if names and len(names) != len(args.data):
        raise CLIError(
            f"--name given {len(names)} times for {len(args.data)} --data; give it once per --data"
        )
    datasets = [
        load_sts(path, args.split, name)
        for path, name in zip(args.data, names or [None] * len(args.data), strict=True)
    ]
    model = _load_model(args)
    metrics = evaluate_sts(_shared(model), datasets, args.batch_size, not args.no_progress)
    return _finish(args, "sts", metrics, {"data": args.data, "split": args.split})


def run_compare_command(args: argparse.Namespace) -> int:
    from unime.evaluation.report import compare_files

    table = compare_files(args.results)
    print(table, end="")
    if args.output:
        Path(args.output).write_text(table, encoding="utf-8")
    return 0
