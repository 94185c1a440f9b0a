"""A ``unime tune-bank`` step against a ``unime tune`` step on the same photos, in one run: seconds per
image, achieved FLOP/s, and the matmul throughput of the same cores at the model's own linear shapes.

``unime tune`` (stage 2 on both sides: LoRA on the whole model, each pair's photo and caption embedded
every step, GradCache per the ``tune-cpu`` recipe) is what ``benchmarks/step_flops.py`` measures; it
runs here first, on the same model, image size and photos. Then ``unime tune-bank`` (the text side
frozen: the captions embedded once into a bank, each step embeds only the photos through the frozen
LLM and the projector learns) trains warm-up + N steps of ``--bank-batch-size`` photos of the shipped
Flickr8k subset against the bank of their captions. For each timed bank step: the wall time between
optimiser steps, its FLOPs (``FlopCounterMode`` over a replay of that batch through the trainer's
own ``training_step``, as step_flops.py counts them), and the matmul ceiling at the step's token
count, measured right after. The bank's own cost (embedding every caption once) is timed too.

    python benchmarks/bank_step.py --steps 3 --output bank_step.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bank_step.py --steps 2
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import step_flops as sf
import torch

GIGA = 1e9


class TimedImageCollator:
    """The tune-bank collator, recording each batch and how long it took to make."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[dict[str, Any]] = []
        self.seconds: list[float] = []

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        start = time.perf_counter()
        batch = self.inner(indices)
        self.seconds.append(time.perf_counter() - start)
        self.batches.append(copy.copy(batch))
        return batch


def write_captions(folder: Path, images: int) -> tuple[Path, Path]:
    """The first ``images`` photos of the shipped subset's train split with all their captions, as a CSV."""
    from unime.data.photos import find_photos

    photos = find_photos(None)
    rows = list(csv.DictReader((photos / "train.csv").open(encoding="utf-8")))
    keep = list(dict.fromkeys(row["image"] for row in rows))[:images]
    if len(keep) < images:
        raise ValueError(f"{photos}: {len(keep)} train photos, the run needs {images} (fewer --steps or a smaller "
                         "--bank-batch-size)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pairs.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows((row["image"], row["caption"]) for row in rows if row["image"] in set(keep))
    return path, photos / "images"


def measure_bank(model_dir: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from unime.environment import default_device, resolve_bf16
    from unime.training.bank import build_bank_trainer
    from unime.training.recipes import BankTuneRecipe

    steps = args.warmup + args.steps
    data, images = write_captions(work / "bank-data", args.bank_batch_size * (steps + 1))
    recipe = BankTuneRecipe.from_yaml("bank-smol").override(
        model=model_dir, data=[str(data)], image_root=str(images), eval_data="", output_dir=str(work / "bank"),
        batch_size=args.bank_batch_size, max_steps=steps, epochs=1.0, logging_steps=10_000, save_steps=10_000,
        warmup_steps=0, bf16=args.bf16)
    timer = sf.PhaseTimer()
    start = time.perf_counter()
    run = build_bank_trainer(recipe, [timer])
    setup_seconds = time.perf_counter() - start
    trainer = run.trainer
    from transformers.trainer_callback import ProgressCallback

    trainer.remove_callback(ProgressCallback)
    collator = TimedImageCollator(trainer.data_collator)
    trainer.data_collator = collator
    trainer.train()
    step_dtype = torch.bfloat16 if resolve_bf16(recipe.bf16, default_device()) else torch.float32
    timed = range(args.warmup, steps)
    step_seconds = [timer.step_times()[i] for i in timed]
    tokens = statistics.median(int(collator.batches[i]["features"]["input_ids"].numel()) for i in timed)
    shapes = sf.decoder_linear_shapes(trainer.model)
    ceilings = {str(d).removeprefix("torch."): sf.matmul_throughput(shapes, int(tokens), d, repeats=args.matmul_repeats)
                ["gflops"] for d in sf.matmul_dtypes(step_dtype)}
    flops = [sf.count_step_flops(trainer, collator.batches[i])[0] for i in timed]
    achieved = statistics.median(f / s / GIGA for f, s in zip(flops, step_seconds, strict=True))
    step_key = str(step_dtype).removeprefix("torch.")
    return {
        "command": "tune-bank", "images_per_step": args.bank_batch_size, "step_dtype": step_key,
        "bank_captions": len(run.bank.texts), "setup_seconds_with_bank": setup_seconds,
        "tokens_per_step": tokens, "step_seconds": statistics.median(step_seconds), "all_step_seconds": step_seconds,
        "seconds_per_image": statistics.median(step_seconds) / args.bank_batch_size,
        "preprocess_seconds": statistics.median(collator.seconds[i] for i in timed),
        "flops_per_step": statistics.median(flops), "flops_per_image": statistics.median(flops) / args.bank_batch_size,
        "achieved_gflops": achieved, "matmul_gflops": ceilings, "ratio": achieved / ceilings[step_key],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a unime model folder (default: unime-smol's stage-1 model, "
                        "build-default --stage distilled, built into a temporary folder)")
    parser.add_argument("--bank-batch-size", type=int, default=64, help="photos per tune-bank step (bank-smol's 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per tune step (tune-cpu's 16)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--bf16", choices=("auto", "true", "false"), default="auto")
    parser.add_argument("--matmul-repeats", type=int, default=15)
    parser.add_argument("--output", help="write every figure as JSON here")
    args = parser.parse_args(argv)
    args.bf16 = {"true": True, "false": False}.get(args.bf16, args.bf16)
    # What step_flops.measure reads for the tune step.
    args.mini_batch_size, args.recipe, args.profile, args.photos = None, "tune-cpu", False, None
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    from unime.models.default import DEFAULT_IMAGE_SIZE, build_default

    result: dict[str, Any] = {"cpu": sf.cpu_info(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="bank-step-") as folder:
        work = Path(folder)
        model_dir = args.model or str(build_default(work / "model", stage="distilled"))
        size = sf.model_image_size(model_dir) or DEFAULT_IMAGE_SIZE
        tune = sf.measure(model_dir, size, args, work, resize=False)
        result["tune"] = {"command": "tune", "pairs_per_step": args.batch_size, "step_dtype": tune["step_dtype"],
                          "mini_batch_size": tune["mini_batch_size"], "step_seconds": tune["step_seconds"]["median"],
                          "seconds_per_image": tune["step_seconds"]["median"] / args.batch_size,
                          "flops_per_step": tune["flops"]["median"],
                          "flops_per_image": tune["flops"]["median"] / args.batch_size,
                          "achieved_gflops": tune["achieved_gflops"], "matmul_gflops": tune["matmul_gflops"],
                          "ratio": tune["ratio"]}
        result["bank"] = measure_bank(model_dir, args, work)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args)
    cpu = result["cpu"]
    print(f"\n{cpu['model_name']} ({cpu['torch_threads']} threads, ATen {cpu['cpu_capability']}, oneDNN bf16 native "
          f"{cpu['bf16_native']}{', env ' + ' '.join(f'{k}={v}' for k, v in cpu['env'].items()) if cpu['env'] else ''})\n")
    print("| command | batch | dtype | s / step | s / image | GFLOP / image | achieved GFLOP/s | matmul GFLOP/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row, batch in ((result["tune"], args.batch_size), (result["bank"], args.bank_batch_size)):
        ceiling = row["matmul_gflops"][row["step_dtype"]]
        print(f"| {row['command']} | {batch} | {row['step_dtype']} | {row['step_seconds']:.2f} | "
              f"{row['seconds_per_image']:.3f} | {row['flops_per_image'] / GIGA:.1f} | {row['achieved_gflops']:.0f} | "
              f"{ceiling:.0f} | {100 * row['ratio']:.0f}% |")
    bank = result["bank"]
    print(f"\ntune-bank setup (model load + embedding {bank['bank_captions']} captions once): "
          f"{bank['setup_seconds_with_bank']:.0f} s")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
