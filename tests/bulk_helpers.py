"""Helpers of the bulk-embedding tests (imported by test_bulk.py and test_bulk_ray.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

import unime

COLUMNS = ("id", "text", "image", "instruction")


def mixed_rows(count: int, ids: str | None = None) -> list[dict]:
    """``count`` rows cycling through a text, an image, and a text with an image and an instruction
    (images ``a.png``, ``img/b.png``, ``c.png`` beside the file); texts of growing length, so that
    sorting by length reorders each batch. ``ids``: None (row positions), ``"str"`` or ``"int"``."""
    images = ["a.png", "img/b.png", "c.png"]
    rows = []
    for index in range(count):
        kind = index % 3
        if kind == 0:
            row = {"text": f"sentence {index} " + "about a dog " * (index % 5)}
        elif kind == 1:
            row = {"image": images[index % 3]}
        else:
            row = {"text": f"what is in picture {index}?", "image": images[(index + 1) % 3],
                   "instruction": "Represent the given image with the following question:"}
        if ids == "str":
            row["id"] = f"doc-{count - index:03d}"  # not sorted like the rows: the order must come from the rows
        elif ids == "int":
            row["id"] = 1000 - 7 * index
        rows.append(row)
    return rows


def save_images(folder: Path, images) -> None:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    images[0].save(folder / "a.png")
    images[1].save(folder / "img" / "b.png")
    images[2].save(folder / "c.png")


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a .jsonl, .csv or .parquet file, by ``path``'s suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        columns = [name for name in COLUMNS if any(name in row for row in rows)]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [name for name in COLUMNS if any(name in row for row in rows)]
        pq.write_table(pa.table({name: [row.get(name) for row in rows] for name in columns}), path)
    return path


def expected_embeddings(model_dir: str, folder: Path, rows: list[dict], batch_size: int = 2) -> np.ndarray:
    """What ``model.encode`` returns in this process for ``rows`` (images resolved against ``folder``)."""
    model = unime.load(model_dir, dtype="float32")
    inputs = []
    for row in rows:
        item = {key: value for key, value in row.items() if key != "id"}
        if "image" in item:
            item["image"] = str(folder / item["image"])
        inputs.append(item)
    return model.encode(inputs, batch_size=batch_size, show_progress_bar=False)


def shard_times(folder: Path) -> dict[str, int]:
    """Each finished shard's modification time in nanoseconds, by name."""
    return {path.name: path.stat().st_mtime_ns for path in sorted(folder.glob("part-*.parquet"))}
