"""MMEB evaluation cost: each distinct input encoded once vs. every query's candidate list anew.

Builds an MMEB-style classification dataset (image queries, one shared label set as every query's
candidate list, the true label first), writes it in the MMEB-eval parquet layout and reads it back
with the library's reader, then times

- ``score_mmeb_dataset`` (queries + the distinct labels, encoded once each), on every query;
- the naive loop (encode the query and its whole candidate list, per query), on the first
  ``--naive-queries`` queries, extrapolated linearly to all of them (each query costs the same);

and checks both give the same hit, and the same candidate scores up to float32 rounding, for each
query the naive loop ran on.

    PYTHONPATH=src python benchmarks/eval_mmeb.py --queries 1000 --labels 1000 --naive-queries 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from unime.evaluation.common import input_key
from unime.evaluation.mmeb import load_mmeb_dataset, score_mmeb_dataset

QUERY_TEXT = "<|image_1|>\nRepresent the given image for classification"


class Recorder:
    """Passes ``encode`` through and keeps each input's embedding, to reuse for the per-query check."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.rows: dict[str, np.ndarray] = {}
        self.encoded = 0

    def encode(self, inputs: list[Any], batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        out = np.asarray(
            self.model.encode(inputs, batch_size=batch_size, show_progress_bar=show_progress_bar)
        )
        self.encoded += len(inputs)
        self.rows.update({input_key(item): row for item, row in zip(inputs, out, strict=True)})
        return out


def write_dataset(root: Path, queries: int, labels: int, image_size: int = 16) -> tuple[Path, Path]:
    """The set in the MMEB-eval layout; each query image is 16 x 16 noise, enlarged (smoothly, so the
    PNG stays small) to ``image_size`` when that is larger."""
    image_dir, folder = root / "images", root / "data" / "Bench"
    (image_dir / "Bench").mkdir(parents=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"label {j}" for j in range(labels)]
    rows = []
    for i in range(queries):
        relative = f"Bench/{i}.png"
        image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        if image_size != 16:
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        image.save(image_dir / relative)
        positive = i % labels
        order = [names[positive], *names[:positive], *names[positive + 1 :]]
        rows.append(
            {
                "qry_text": QUERY_TEXT,
                "qry_img_path": relative,
                "tgt_text": order,
                "tgt_img_path": [""] * labels,
            }
        )
    pd.DataFrame(rows).to_parquet(folder / "test.parquet", index=False)
    return folder, image_dir


def scores_and_hit(query: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, bool]:
    scores = candidates @ query
    return scores, bool(scores[0] > scores[1:].max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: a tiny random qwen2_vl built on the fly)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--naive-queries", type=int, default=3, help="queries the naive loop runs on")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", help="write the figures to this JSON file")
    args = parser.parse_args()

    import unime

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_path = args.model
        if model_path is None:
            from unime.models.tiny import make_tiny

            model_path = str(make_tiny("qwen2_vl", root / "tiny"))
        model = unime.load(model_path)
        folder, image_dir = write_dataset(root, args.queries, args.labels)
        dataset = load_mmeb_dataset(folder, image_dir)

        recorder = Recorder(model)
        start = time.perf_counter()
        score = score_mmeb_dataset(recorder, dataset, batch_size=args.batch_size)
        ours_s = time.perf_counter() - start

        naive, ours = [], []
        start = time.perf_counter()
        for query, target in list(zip(dataset.queries, dataset.targets, strict=True))[: args.naive_queries]:
            inputs = [query, *[dataset.pool[j] for j in target]]
            embeddings = np.asarray(model.encode(inputs, batch_size=args.batch_size, show_progress_bar=False))
            naive.append(scores_and_hit(embeddings[0], embeddings[1:]))
            recorded = np.stack([recorder.rows[input_key(x)] for x in inputs])
            ours.append(scores_and_hit(recorded[0], recorded[1:]))
        naive_per_query = (time.perf_counter() - start) / args.naive_queries

    naive_s = naive_per_query * args.queries
    figures = {
        "queries": args.queries,
        "labels": args.labels,
        "precision@1": score,
        "ours_seconds": round(ours_s, 1),
        "ours_inputs_encoded": recorder.encoded,
        "naive_queries_timed": args.naive_queries,
        "naive_seconds_per_query": round(naive_per_query, 2),
        "naive_seconds_extrapolated": round(naive_s, 0),
        "naive_inputs_encoded": args.queries * (args.labels + 1),
        "speedup": round(naive_s / ours_s, 1),
        "same_hits_on_timed_queries": [h for _, h in naive] == [h for _, h in ours],
        # Batches are padded differently in the two loops: scores agree to float32 rounding only.
        "max_score_difference": float(
            max(np.abs(a - b).max() for (a, _), (b, _) in zip(naive, ours, strict=True))
        ),
    }
    print(json.dumps(figures, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
