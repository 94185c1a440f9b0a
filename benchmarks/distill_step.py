"""Stage-1 step time with the teacher cache vs with the teacher run inside the training loop.

One run per mode through the real stage-1 trainer (same model, data, seed and settings); the step
time is the wall time between consecutive optimiser steps (data loading included), the first step
left out as warm-up. Prints a markdown table.

    python benchmarks/distill_step.py --model unime-smol --data ../shared/data/snli/s1.dev --steps 6 --bf16
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
from step_timer import StepTimer

from unime.training.distill import DistillRecipe, build_trainer
from unime.training.teacher_cache import load_teacher, resolve_teacher
from unime.training.text_data import read_sentences


@dataclass
class OnlineTeacherCollator(SentenceTransformerDataCollator):
    """The alternative to the cache: embed each batch's sentences with the teacher as it is built."""

    teacher: Any = None
    sentences: list[str] | None = None
    teacher_seconds: list[float] | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [row["label"] for row in features]
        batch = super().__call__([{k: v for k, v in row.items() if k != "label"} for row in features])
        start = time.perf_counter()
        with torch.no_grad():
            embedded = self.teacher.encode([self.sentences[i] for i in rows], batch_size=len(rows),
                                           normalize_embeddings=True, convert_to_tensor=True)
        self.teacher_seconds = [*(self.teacher_seconds or []), time.perf_counter() - start]
        batch["label"] = embedded.float().cpu()
        return batch


def run(recipe: DistillRecipe, online: bool) -> dict[str, float]:
    timer = StepTimer()
    trainer = build_trainer(recipe, callbacks=[timer])
    collator = None
    if online:
        collator = OnlineTeacherCollator(preprocess_fn=trainer.model.preprocess,
                                         teacher=load_teacher(resolve_teacher(recipe.teacher)),
                                         sentences=read_sentences(recipe.data))
        trainer.data_collator = collator
    trainer.train()
    times = timer.step_times()[1:]
    result = {"steps": len(times), "mean": statistics.mean(times), "stdev": statistics.pstdev(times)}
    # The first teacher call (warm-up) belongs to the untimed first step.
    result["teacher"] = statistics.mean(collator.teacher_seconds[1:]) if collator else 0.0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--teacher", default="minilm")
    parser.add_argument("--cache", help="an existing teacher cache of this data (built in a temporary folder otherwise)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode (one more runs as warm-up)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for online in (False, True):
            recipe = DistillRecipe(model=args.model, data=args.data, teacher=args.teacher, output_dir=f"{folder}/{online}",
                                   cache=args.cache or f"{folder}/cache", max_steps=args.steps + 1, batch_size=args.batch_size,
                                   bf16=args.bf16, save_steps=10_000, logging_steps=10_000)
            rows.append(("teacher in the loop" if online else "teacher cache", run(recipe, online)))
    print(f"\nmodel {args.model}, teacher {args.teacher}, batch {args.batch_size}, bf16 {args.bf16}, "
          f"{torch.get_num_threads()} threads\n")
    print("| mode | timed steps | s / step | teacher s / step |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['steps']} | {r['mean']:.3f} ± {r['stdev']:.3f} | {r['teacher']:.3f} |")


if __name__ == "__main__":
    main()
