"""``generate``: write the whole synthetic benchmark to a folder."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from unime.data.mmeb import write_parquet
from unime.synth.base import Context, DatasetSpec
from unime.synth.config import SynthConfig
from unime.synth.corpora import write_karpathy, write_nli, write_sts, write_sugarcrepe
from unime.synth.mmeb import eval_rows, train_rows
from unime.synth.scenes import COLOURS, SHAPES, SIZES, all_pairs, held_out_pairs
from unime.synth.store import ImageStore
from unime.synth.tasks import SYNTH_DATASETS

FORMAT_VERSION = 1
# What generate() writes; with overwrite=True only these are removed, never other files.
OUTPUTS = (
    "images",
    "mmeb_train",
    "mmeb_eval",
    "sugarcrepe",
    "retrieval",
    "text",
    "scenes.jsonl",
    "manifest.json",
)


def _unime_version() -> str:
    try:
        from unime import __version__

        return str(__version__)
    except ImportError:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("unime")
        except PackageNotFoundError:
            return "unknown"


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output folder {out} is not empty; use overwrite=True (CLI: --overwrite) to replace it"
            )
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _datasets(config: SynthConfig) -> tuple[DatasetSpec, ...]:
    if not config.real_images:
        return SYNTH_DATASETS
    from unime.synth.real import REAL_DATASETS

    return SYNTH_DATASETS + REAL_DATASETS


def _stream(config: SynthConfig, *names: str) -> random.Random:
    """The random stream of one part of the benchmark.

    Seeding with a string hashes it (SHA-512), so streams are stable across processes, and each
    part has its own, so resizing one part leaves the others unchanged.
    """
    return random.Random("/".join(("unime-synth", str(config.seed), *names)))


def _write_mmeb(out: Path, context: Context, bar: tqdm) -> tuple[dict, dict[str, dict[str, str]]]:
    """Build and write every MMEB-train and MMEB-eval set; return counts and the split map."""
    config = context.config
    jobs = [
        (spec, split)
        for spec in _datasets(config)
        for split in ("train", "IND", "OOD")
        if split != "OOD" or (spec.has_ood and context.held_out)
    ]
    counts: dict[str, dict[str, int]] = {"mmeb_train": {}, "mmeb_eval": {}}
    splits: dict[str, dict[str, str]] = {}
    for spec, split in jobs:
        bar.set_postfix_str(f"{spec.name} {split}")
        rng = _stream(config, spec.name, split)
        size = config.train_per_dataset if split == "train" else config.eval_queries
        examples = spec.build(context, rng, split, size)
        if split == "train":
            write_parquet(out / "mmeb_train" / spec.name / "train.parquet", train_rows(examples))
            counts["mmeb_train"][spec.name] = len(examples)
        else:
            name = f"{spec.name}-{split}"
            write_parquet(out / "mmeb_eval" / name / "test.parquet", eval_rows(spec, examples, rng, config))
            counts["mmeb_eval"][name] = len(examples)
            splits[name] = {"meta_task": spec.meta_task, "split": split}
        bar.update()
    return counts, splits


def _write_corpora(out: Path, context: Context, bar: tqdm) -> dict[str, dict[str, int]]:
    """Write the SugarCrepe splits, the Karpathy retrieval set and the NLI / STS text."""
    config, store, pairs = context.config, context.store, context.train_pairs
    counts: dict[str, dict[str, int]] = {}
    bar.set_postfix_str("sugarcrepe")
    counts["sugarcrepe"] = write_sugarcrepe(
        out / "sugarcrepe",
        store,
        _stream(config, "sugarcrepe"),
        pairs,
        config.sugarcrepe_per_split,
        config.max_objects,
    )
    bar.update()
    bar.set_postfix_str("retrieval")
    counts["retrieval"] = write_karpathy(
        out / "retrieval" / "synth_karpathy.json",
        store,
        _stream(config, "retrieval"),
        pairs,
        config.retrieval_images,
        config.captions_per_image,
        config.max_objects,
    )
    bar.update()
    bar.set_postfix_str("text")
    nli = write_nli(
        out / "text" / "nli.csv",
        _stream(config, "nli"),
        pairs,
        context.held_out,
        config.nli_rows,
        config.max_objects,
    )
    sts = write_sts(out / "text" / "sts.jsonl", _stream(config, "sts"), config.sts_pairs)
    counts["text"] = {"nli": nli, "sts": sts}
    bar.update()
    return counts


def generate(
    out_dir: str | Path, config: SynthConfig | None = None, *, overwrite: bool = False, progress: bool = False
) -> dict:
    """Write the synthetic benchmark of ``config`` to ``out_dir`` and return its manifest.

    Layout (image paths in every file are relative to ``out_dir/images``):
    ``mmeb_train/<Dataset>/train.parquet``, ``mmeb_eval/<Dataset>-IND|OOD/test.parquet`` with
    ``mmeb_eval/splits.json``, ``sugarcrepe/<split>.json``, ``retrieval/synth_karpathy.json``,
    ``text/nli.csv``, ``text/sts.jsonl``, ``scenes.jsonl`` (what every image shows) and
    ``manifest.json``. The same config gives byte-identical files. A non-empty ``out_dir`` is
    refused (``FileExistsError``) unless ``overwrite``. ``progress`` shows a tqdm bar.
    """
    config = config or SynthConfig()
    out = Path(out_dir)
    _prepare(out, overwrite)
    held_out = sorted(held_out_pairs(_stream(config, "held-out"), config.ood_pairs))
    train_pairs = [p for p in all_pairs() if p not in held_out]
    store = ImageStore(out / "images", config.image_size, config.png_compress_level)
    context = Context(config, store, train_pairs, held_out)
    datasets = _datasets(config)
    total = sum(2 + (spec.has_ood and bool(held_out)) for spec in datasets) + 3
    with tqdm(total=total, desc="unime synth", unit="set", disable=not progress) as bar:
        counts, splits = _write_mmeb(out, context, bar)
        counts.update(_write_corpora(out, context, bar))
    (out / "mmeb_eval" / "splits.json").write_text(json.dumps(splits, indent=1) + "\n", encoding="utf-8")
    store.write_index(out / "scenes.jsonl")
    counts["images"] = {"files": len(store.index)}
    manifest = {
        "generator": "unime.synth",
        "format_version": FORMAT_VERSION,
        "unime_version": _unime_version(),
        "seed": config.seed,
        "image_size": config.image_size,
        "config": config.to_dict(),
        "vocabulary": {"colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES)},
        "held_out_pairs": [list(p) for p in held_out],
        "sources": {spec.name: spec.source for spec in datasets},
        "counts": counts,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest
