"""Peak memory and step time of a stage-2 training step against the global batch, with and without
GradCache, on a tiny Qwen2-VL (LoRA on every linear layer, image queries and text positives).

Each setting runs in a fresh subprocess, whose peak resident memory (``resource.getrusage``'s
``ru_maxrss``) is the figure: Python's tracemalloc does not see torch's allocations. The process
first loads the model and prepares the batch, so the reported increment (peak during the steps
minus peak before them) is what the training step itself costs. Output: a markdown table.

    python benchmarks/gradcache_memory.py                      # batches 32..512, ~3-5 min on 2 cores
    python benchmarks/gradcache_memory.py --batches 32 64 --steps 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024  # ru_maxrss is in KiB on Linux


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MiB


def stage2_features(model, batch: int, image_size: int, seed: int = 0) -> list[dict]:
    """``batch`` (image query, text positive) rows, preprocessed: the two columns of a stage-2 batch."""
    import numpy as np
    from PIL import Image

    from unime.inputs import EmbedInput

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)) for _ in range(64)]
    queries = [EmbedInput(text=f"<|image_1|>\nRepresent the given image with the following question: "
                               f"what is object {i} doing?", image=images[i % 64]) for i in range(batch)]
    positives = [EmbedInput(text=f"object {i} is resting on the table") for i in range(batch)]
    return [model.preprocess(queries), model.preprocess(positives)]


def make_step(model, loss_fn, features: list[dict], labels=None, autocast=None):
    """One optimiser step of ``loss_fn`` on prebuilt ``features`` (AdamW on the trainable parameters),
    under ``autocast`` (a dtype, e.g. bf16 as the recipes' ``bf16: true``) when given."""
    import contextlib

    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    device_type = next(model.parameters()).device.type

    def step() -> None:
        context = torch.autocast(device_type, dtype=autocast) if autocast else contextlib.nullcontext()
        # backward inside autocast too: GradCache re-embeds every mini-batch during the backward pass,
        # which must run in the precision of the first, gradient-free pass.
        with context:
            loss = loss_fn([dict(f) for f in features], labels)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def worker(model_dir: str, batch: int, mini_batch: int, steps: int, image_size: int) -> dict[str, float]:
    """Load the model, build one batch of ``batch`` (image query, text positive) rows, run
    1 warm-up + ``steps`` optimiser steps; report peak memory and the fastest step's time (the
    least disturbed by other work on shared cores)."""
    import torch

    from unime.losses import HardNegativeInfoNCELoss
    from unime.modeling import build_model
    from unime.training.adapters import apply_tuning

    torch.manual_seed(0)
    model = build_model(model_dir)
    model.set_mode("joint")
    model[0].unime_config.image_size = image_size
    apply_tuning(model, "lora", "all", lora_r=8, lora_alpha=16, lora_dropout=0.1, target_regex="all-linear")
    model.train()
    features = stage2_features(model, batch, image_size)
    step = make_step(model, HardNegativeInfoNCELoss(model, mini_batch_size=mini_batch or None), features)
    before = _peak_mib()
    step()  # warm-up (allocator, AdamW state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = min(times)
    peak = _peak_mib()
    return {"peak_mib": peak, "step_mib": peak - before, "step_s": seconds}


def run_setting(model_dir: str, batch: int, mini_batch: int, args: argparse.Namespace) -> dict[str, float] | None:
    """One setting in a fresh interpreter; None when it failed (e.g. ran out of memory or time)."""
    command = [sys.executable, __file__, "--worker", model_dir, "--batch", str(batch), "--mini-batch",
               str(mini_batch), "--steps", str(args.steps), "--image-size", str(args.image_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"batch {batch} mini-batch {mini_batch}: over {args.timeout} s", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"batch {batch} mini-batch {mini_batch}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[tuple[int, int], dict[str, float] | None], batches: list[int], modes: list[int]) -> str:
    lines = ["| global batch | GradCache mini-batch | peak RSS (MiB) | step increment (MiB) | step time (s) | "
             "time / no GradCache |", "|---:|---:|---:|---:|---:|---:|"]
    for batch in batches:
        plain = results.get((batch, 0))
        for mode in modes:
            result = results.get((batch, mode))
            name = str(mode) if mode else "none"
            if result is None:
                lines.append(f"| {batch} | {name} | n/a | n/a | n/a | n/a |")
                continue
            ratio = f"{result['step_s'] / plain['step_s']:.2f}" if plain else "n/a"
            lines.append(f"| {batch} | {name} | {result['peak_mib']:.0f} | {result['step_mib']:.0f} | "
                         f"{result['step_s']:.2f} | {ratio} |")
    return "\n".join(lines)


def goals(results: dict[tuple[int, int], dict[str, float] | None], batches: list[int], mini_batch: int) -> str:
    """The two targets for one mini-batch size: cached peak at the largest batch within 1.25x of the
    smallest, and cached step time within 1.6x of uncached wherever uncached ran."""
    small, large = results.get((batches[0], mini_batch)), results.get((batches[-1], mini_batch))
    lines = []
    if small and large:
        growth = large["peak_mib"] / small["peak_mib"]
        lines.append(f"- mini-batch {mini_batch}: peak RSS at batch {batches[-1]} / batch {batches[0]} = "
                     f"{growth:.2f}x (goal <= 1.25x: {'met' if growth <= 1.25 else 'missed'})")
    ratios = [results[(b, mini_batch)]["step_s"] / results[(b, 0)]["step_s"] for b in batches
              if results.get((b, 0)) and results.get((b, mini_batch))]
    if ratios:
        worst = max(ratios)
        lines.append(f"- mini-batch {mini_batch}: step time / no GradCache, worst over the batches = {worst:.2f}x "
                     f"(goal <= 1.6x: {'met' if worst <= 1.6 else 'missed'})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--mini-batch", type=int, nargs="+", default=[32, 64], help="GradCache mini-batch sizes")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads per run (1: OpenMP threads spin badly on busy cores)")
    parser.add_argument("--timeout", type=int, default=240, help="seconds allowed per setting")
    parser.add_argument("--model", help="a model folder (default: a tiny Qwen2-VL built on the spot)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.mini_batch[0], args.steps, args.image_size)))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None:
            from unime.models.tiny import make_tiny

            model_dir = str(make_tiny("qwen2_vl", Path(scratch) / "tiny", image_size=args.image_size))
        results: dict[tuple[int, int], dict[str, float] | None] = {}
        modes = [0, *args.mini_batch]
        for batch in args.batches:
            for mini_batch in modes:
                results[(batch, mini_batch)] = run_setting(model_dir, batch, mini_batch, args)
                print(f"batch {batch:4d} mini-batch {mini_batch or '-':>3}: {results[(batch, mini_batch)]}",
                      file=sys.stderr, flush=True)
    print(f"Tiny Qwen2-VL, LoRA r8 (dropout 0.1) on every linear layer, {args.image_size} px image queries and "
          f"text positives, {args.threads} thread(s), fastest of {args.steps} steps after a warm-up; each "
          "setting in a fresh process.\n")
    print(table(results, args.batches, modes))
    print()
    print("\n".join(goals(results, args.batches, mini_batch) for mini_batch in args.mini_batch))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
