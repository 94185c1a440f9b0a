"""Feature-alignment (``unime align``) step time and peak memory, bf16 autocast vs fp32 side by side.

One run per precision through the real alignment trainer (same model, data, seed and settings);
the step time is the wall time between consecutive optimiser steps (data loading included), the
first step left out as warm-up. Peak memory is the process's resident-set high-water mark after
each run (so the second run's figure is at least the first's; the fp32 run goes first).

    python benchmarks/align_step.py --model unime-smol --data ../shared/data/flickr8k/train.csv \\
        --image-root ../shared/data/flickr8k/images --batch-size 32 --steps 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile

from step_timer import StepTimer

from unime.training.align import build_trainer
from unime.training.caption_data import read_caption_data
from unime.training.captioning import load_captioner
from unime.training.recipes import AlignRecipe


def run(args: argparse.Namespace, bf16: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        recipe = AlignRecipe(model=args.model, data=[args.data], image_root=args.image_root or "", output_dir=out,
                             batch_size=args.batch_size,
                             max_steps=args.steps + 1, warmup_steps=0, bf16=bf16, logging_steps=1,
                             save_steps=10_000, max_rows=args.batch_size * (args.steps + 1))
        data = read_caption_data(recipe.data, recipe.image_root or None, max_rows=recipe.max_rows)
        captioner = load_captioner(recipe.model)
        timer = StepTimer()
        trainer = build_trainer(recipe, captioner, data, [timer])
        trainer.train()
        return statistics.median(timer.step_times()[1:]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a unime model folder (e.g. unime build-default's)")
    parser.add_argument("--data", required=True, help="caption file (image,caption)")
    parser.add_argument("--image-root", help="folder the caption file's image paths are relative to")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    args = parser.parse_args()
    rows = [(name, *run(args, bf16)) for name, bf16 in (("fp32", False), ("bf16 autocast", True))]
    print(f"{args.model}, batch {args.batch_size}, median of {args.steps} steps\n")
    print("| precision | s / step | image-caption pairs / s | peak RSS (GB) |")
    print("|---|---|---|---|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.2f} | {args.batch_size / seconds:.1f} | {peak:.1f} |")


if __name__ == "__main__":
    main()
