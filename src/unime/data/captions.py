"""Image-caption pairs (a CSV / TSV / JSONL file with ``image`` and ``caption`` columns, as the
Flickr8k and COCO caption files) turned into the MMEB layouts: stage-2 training pairs and
MMEB-style retrieval evaluation sets.

The instructions are MMEB's for MSCOCO_i2t and MSCOCO_t2i, so a model tuned on these pairs meets
the same prompts in MMEB. Image paths stay relative to the caption file's image folder, so the
written sets move with it (``--image-root`` / ``--image-dir`` point at that folder).

- train (``<name>_i2t``, ``<name>_t2i``): one row per caption (``captions_per_image`` caps it), the
  image as query and its caption as positive, and the reverse. Copies of one image's other
  captions in a batch are not its negatives: stage 2's ``exclude_duplicates`` sees the same image.
- eval: one query per image (its first caption in t2i), the positive first in each candidate list,
  then ``candidates - 1`` other images (or their first captions) drawn with a fixed seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from unime.data.records import read_records, require_fields, resolve_image

I2T_QUERY = "<|image_1|>\nFind an image caption describing the given everyday image.\n"
T2I_QUERY = "Find me an everyday image that matches the given caption: {}\n"
IMAGE_TARGET = "<|image_1|>\nRepresent the given image.\n"


def read_caption_pairs(path: str | Path, image_dir: str | Path, *, check_images: bool = True) -> list[tuple[str, str]]:
    """``(image path relative to image_dir, caption)`` of every row; a bad row is named by file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    pairs = []
    for line, row in read_records(path):
        where = f"{path}: line {line}"
        require_fields(row, ("image", "caption"), where)
        image, caption = str(row["image"]).strip(), str(row["caption"]).strip()
        if not image or not caption:
            raise ValueError(f"{where}: empty {'image' if not image else 'caption'}")
        if check_images:
            resolve_image(image_dir, image, f"{where}: image")
        pairs.append((image, caption))
    if not pairs:
        raise ValueError(f"{path}: no image-caption rows")
    return pairs


def group_by_image(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """image -> its captions, images in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for image, caption in pairs:
        grouped.setdefault(image, []).append(caption)
    return grouped


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_train_pairs(pairs: Sequence[tuple[str, str]], out_dir: str | Path, name: str, *,
                      captions_per_image: int | None = None, max_images: int | None = None) -> dict[str, int]:
    """Write ``out_dir/<name>_i2t/train.jsonl`` and ``<name>_t2i/train.jsonl``; returns rows per set."""
    grouped = list(group_by_image(pairs).items())[:max_images]
    i2t, t2i = [], []
    for image, captions in grouped:
        for caption in captions[:captions_per_image]:
            i2t.append({"qry": I2T_QUERY, "qry_image_path": image, "pos_text": caption, "pos_image_path": ""})
            t2i.append({"qry": T2I_QUERY.format(caption), "qry_image_path": "", "pos_text": IMAGE_TARGET,
                        "pos_image_path": image})
    out_dir = Path(out_dir)
    _write_jsonl(out_dir / f"{name}_i2t" / "train.jsonl", i2t)
    _write_jsonl(out_dir / f"{name}_t2i" / "train.jsonl", t2i)
    return {f"{name}_i2t": len(i2t), f"{name}_t2i": len(t2i)}


def write_eval_sets(pairs: Sequence[tuple[str, str]], out_dir: str | Path, name: str, *, candidates: int = 1000,
                    max_images: int | None = None, seed: int = 0) -> dict[str, int]:
    """Write MMEB-eval ``<name>_i2t`` and ``<name>_t2i`` (``test.parquet``) and a ``splits.json`` for
    ``unime eval mmeb --groups``; returns queries per set."""
    from unime.data.mmeb import write_parquet

    grouped = list(group_by_image(pairs).items())[:max_images]
    if candidates < 2 or candidates > len(grouped):
        raise ValueError(f"--candidates must be between 2 and the number of images ({len(grouped)}), got {candidates}")
    rng = random.Random(seed)
    i2t = {"qry_text": [], "qry_img_path": [], "tgt_text": [], "tgt_img_path": []}
    t2i = {key: [] for key in i2t}
    for index, (image, captions) in enumerate(grouped):
        others = rng.sample([k for k in range(len(grouped)) if k != index], candidates - 1)
        i2t["qry_text"].append(I2T_QUERY)
        i2t["qry_img_path"].append(image)
        i2t["tgt_text"].append([captions[0]] + [grouped[k][1][0] for k in others])
        i2t["tgt_img_path"].append([""] * candidates)
        t2i["qry_text"].append(T2I_QUERY.format(captions[0]))
        t2i["qry_img_path"].append("")
        t2i["tgt_text"].append([IMAGE_TARGET] * candidates)
        t2i["tgt_img_path"].append([image] + [grouped[k][0] for k in others])
    out_dir = Path(out_dir)
    write_parquet(out_dir / f"{name}_i2t" / "test.parquet", i2t)
    write_parquet(out_dir / f"{name}_t2i" / "test.parquet", t2i)
    splits_file = out_dir / "splits.json"
    splits = json.loads(splits_file.read_text()) if splits_file.is_file() else {}
    splits.update({f"{name}_i2t": {"meta_task": "retrieval", "split": "OOD"},
                   f"{name}_t2i": {"meta_task": "retrieval", "split": "OOD"}})
    splits_file.write_text(json.dumps(splits, indent=2) + "\n")
    return {f"{name}_i2t": len(grouped), f"{name}_t2i": len(grouped)}
