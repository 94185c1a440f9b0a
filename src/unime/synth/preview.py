"""A labelled grid of examples from a generated benchmark, for the documentation.

    python -m unime.synth.preview OUT docs/figures/synthetic-examples.png

reads ``OUT`` (written by ``unime.synth.generate``) and draws tiles of images with their text:
captions, SugarCrepe negatives, VQA questions, grounding queries with the target crop, edits, and
the real-image classes.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_TILE = 150  # image side in the grid (the 64-pixel images are enlarged)
_TEXT_LINES = 7
_LINE = 13


def _instruction(text: str) -> str:
    """The part of an MMEB query after its image tag and fixed instruction."""
    body = text.replace("<|image_1|>\n", "").strip()
    for marker in (
        "following question: ",
        "described changes: ",
        "given label: ",
        "language expression: ",
        "caption: ",
    ):
        if marker in body:
            return body.split(marker, 1)[1]
    return body


def _first_rows(path: Path, count: int) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).slice(0, count).to_pylist()


def preview_items(out: Path) -> list[tuple[str, str]]:
    """(image path relative to ``out/images``, caption) for each tile, in display order."""
    items: list[tuple[str, str]] = []
    karpathy = json.loads((out / "retrieval" / "synth_karpathy.json").read_text(encoding="utf-8"))
    for entry in karpathy["images"][:5]:
        items.append((f"{entry['filepath']}/{entry['filename']}", entry["sentences"][0]["raw"]))
    for split in ("swap_att", "replace_rel", "add_obj"):
        item = json.loads((out / "sugarcrepe" / f"{split}.json").read_text(encoding="utf-8"))["0"]
        items.append((item["filename"], f"{split}: {item['caption']}  NOT: {item['negative_caption']}"))
    for name in ("SynthSpatialQA", "SynthCountQA"):
        row = _first_rows(out / "mmeb_train" / name / "train.parquet", 1)[0]
        items.append((row["qry_image_path"], f"Q: {_instruction(row['qry'])} A: {row['pos_text']}"))
    edit = _first_rows(out / "mmeb_train" / "SynthEdit" / "train.parquet", 1)[0]
    items.append((edit["qry_image_path"], f"edit: {_instruction(edit['qry'])}"))
    items.append((edit["pos_image_path"], "edited target"))
    for name in ("SynthRefExp", "SynthGround"):
        row = _first_rows(out / "mmeb_train" / name / "train.parquet", 1)[0]
        items.append((row["qry_image_path"], f"grounding: {_instruction(row['qry'])}"))
        items.append((row["pos_image_path"], "target crop"))
    for name in ("Digits", "Photos"):
        folder = out / "mmeb_train" / name / "train.parquet"
        if folder.exists():
            for row in _first_rows(folder, 2):
                items.append((row["qry_image_path"], f"real ({name}): {row['pos_text']}"))
    return items


def make_grid(images_root: Path, items: list[tuple[str, str]], columns: int = 5) -> Image.Image:
    """Tiles of ``_TILE`` pixels with up to seven wrapped lines of text under each."""
    font = ImageFont.load_default(size=11)
    rows = -(-len(items) // columns)
    tile_h = _TILE + _TEXT_LINES * _LINE + 8
    grid = Image.new("RGB", (columns * (_TILE + 8) + 8, rows * tile_h + 8), "white")
    draw = ImageDraw.Draw(grid)
    for k, (rel, text) in enumerate(items):
        x = 8 + (k % columns) * (_TILE + 8)
        y = 8 + (k // columns) * tile_h
        with Image.open(images_root / rel) as image:
            grid.paste(image.convert("RGB").resize((_TILE, _TILE), Image.Resampling.NEAREST), (x, y))
        lines = textwrap.wrap(text, width=26)[:_TEXT_LINES]
        for j, line in enumerate(lines):
            draw.text((x, y + _TILE + 3 + j * _LINE), line, fill="black", font=font)
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw a labelled grid of examples of a synthetic benchmark.")
    parser.add_argument("out", type=Path, help="folder written by unime.synth.generate")
    parser.add_argument("figure", type=Path, help="PNG file to write")
    parser.add_argument("--columns", type=int, default=5)
    args = parser.parse_args(argv)
    if not (args.out / "manifest.json").is_file():
        raise SystemExit(f"{args.out} has no manifest.json: not a folder written by unime.synth.generate")
    grid = make_grid(args.out / "images", preview_items(args.out), args.columns)
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.figure, optimize=True)
    print(f"wrote {args.figure} ({grid.width} x {grid.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
