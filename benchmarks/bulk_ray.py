"""Bulk embedding throughput: in-process ``unime encode`` (.npy) against the parquet-shard engines.

Embeds the same rows four ways, each into a fresh output, and prints a markdown table of the wall
time (model loading and, for Ray, the actors' start included) and rows per second:

1. ``unime encode --output x.npy``: one process, one model;
2. ``--engine local``: the same in-process model, writing resumable parquet shards;
3. ``--engine ray`` with 1 actor;
4. ``--engine ray`` with 2 actors (or ``--actors``).

The rows are a mix, in thirds, of Flickr8k dev captions (texts), photos (images) and photos with a
question and an instruction, from the subset that ships with unime (``src/unime/assets/flickr8k``).
A warm-up load and encode comes first, untimed. Every run's embeddings are compared with the .npy (the largest difference is printed). Ray: a
local instance of ``--cpus`` CPUs, or the cluster of ``RAY_ADDRESS`` when set.

    python benchmarks/bulk_ray.py                          # the seeing default (or a tiny model), 2000 rows
    python benchmarks/bulk_ray.py --model PATH --rows 5000 --shard-rows 500 --actors 1 2 4
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTOS = Path(__file__).resolve().parents[1] / "src" / "unime" / "assets" / "flickr8k"


def write_rows(path: Path, count: int, photos: Path = PHOTOS) -> Path:
    """``count`` rows as JSON Lines: a caption, a photo, a photo with a question, in turn."""
    with open(photos / "dev.csv", newline="") as handle:
        pairs = [(row["image"], row["caption"]) for row in csv.DictReader(handle)]
    lines = []
    for index in range(count):
        image, caption = pairs[index % len(pairs)]
        image_path = str(photos / "images" / image)
        row = [{"text": caption}, {"image": image_path},
               {"text": "What is happening in this photo?", "image": image_path,
                "instruction": "Represent the given image with the following question:"}][index % 3]
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def default_model(work: Path) -> tuple[str, str]:
    """The seeing default built from its wheels, or a tiny random Qwen2-VL where they are missing."""
    try:
        from unime.models.default import build_default

        return str(build_default(work / "unime-smol")), "unime-smol (the seeing default)"
    except (ImportError, FileNotFoundError) as error:
        from unime.models.tiny import make_tiny

        print(f"the seeing default could not be built ({error}); timing a tiny random Qwen2-VL", file=sys.stderr)
        return str(make_tiny("qwen2_vl", work / "tiny-qwen2_vl")), "tiny random Qwen2-VL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a unime model (default: the seeing default, else a tiny one)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--shard-rows", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray pool sizes to time")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    parser.add_argument("--cpus-per-actor", type=float, default=None,
                        help="CPUs (and threads) per actor (default: the CPUs shared among the actors)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the rows and outputs (default: a temporary one)")
    args = parser.parse_args()

    import ray

    from unime.bulk import embed_to_parquet, read_embeddings
    from unime.cli import main as cli

    with tempfile.TemporaryDirectory(prefix="bulk-ray-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        model, label = (args.model, args.model) if args.model else default_model(work)
        rows = write_rows(work / "rows.jsonl", args.rows)
        common = {"shard_rows": args.shard_rows, "batch_size": args.batch_size, "dtype": args.dtype,
                  "progress": lambda line: None}
        results: list[tuple[str, str, float, np.ndarray]] = []
        # Warm-up, not timed: the first load and encode in a process pay one-time import and set-up costs
        # that would otherwise fall on whichever run comes first. (Each Ray actor pays them in its start.)
        import unime

        warm = [json.loads(line) for line in rows.read_text().splitlines()[:3]]
        unime.load(model, dtype=args.dtype).encode(warm, show_progress_bar=False)

        started = time.perf_counter()
        assert cli(["encode", "--model", model, "--input", str(rows), "--output", str(work / "encode.npy"),
                    "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--no-progress"]) == 0
        reference = np.load(work / "encode.npy")
        results.append(("unime encode (.npy)", "-", time.perf_counter() - started, reference))

        started = time.perf_counter()
        embed_to_parquet(model, rows, work / "local", engine="local", **common)
        results.append(("--engine local", "-", time.perf_counter() - started, read_embeddings(work / "local")[1]))

        started = time.perf_counter()
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        try:
            for actors in args.actors:
                out = work / f"ray-{actors}"
                started = time.perf_counter()
                embed_to_parquet(model, rows, out, engine="ray", actors=actors, num_cpus=args.cpus_per_actor, **common)
                results.append(("--engine ray", str(actors), time.perf_counter() - started, read_embeddings(out)[1]))
        finally:
            ray.shutdown()

    import torch

    print(f"\n{label}: {args.rows} rows (a third each texts, photos, photos with a question), shards of "
          f"{args.shard_rows}, batch size {args.batch_size}, dtype {args.dtype}; {os.cpu_count()} CPUs, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}; ray.init {ray_start:.1f} s (not counted)\n")
    print("| run | actors | wall s | rows/s | max abs diff to the .npy |")
    print("|---|---|---|---|---|")
    for name, actors, seconds, matrix in results:
        difference = float(np.abs(matrix - reference).max())
        print(f"| {name} | {actors} | {seconds:.1f} | {args.rows / seconds:.1f} | {difference:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
