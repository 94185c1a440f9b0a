"""Make the Flickr8k subset that ships with the package (``src/unime/assets/flickr8k``).

A maintainer script: users never need it, the subset is committed. It reads the full split (by
default ``../shared/data/flickr8k``: ``train.csv``, ``dev.csv``, ``images/``), draws a fixed seeded
random sample of images from each split separately (dev images only from dev.csv, so the subset's
dev is never trained on), keeps every caption of each chosen image in the source file's order,
copies the photos byte for byte, and writes the folder's README.md with provenance, terms, how the
subset was chosen and its size. Running it twice gives the same files.

    python scripts/make_photo_subset.py                       # ../shared/data/flickr8k -> the package
    python scripts/make_photo_subset.py --source DIR --output DIR
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "flickr8k"
DEFAULT_OUTPUT = ROOT / "src" / "unime" / "assets" / "flickr8k"
SIZES = {"train": 600, "dev": 400}
SEED = 0
BUDGET_MB = 20

README = """# Flickr8k subset (ships with unime)

{images:,} real photographs with their human captions, a subset of Flickr8k (M. Hodosh, P. Young and
J. Hockenmaier, *Framing Image Description as a Ranking Task: Data, Models and Evaluation Metrics*,
JAIR 47, 2013). `unime demo` uses it by default for its real-photo sets, and the tests use it.

- `train.csv`: {train_images} images, {train_rows:,} captions; `dev.csv`: {dev_images} images,
  {dev_rows:,} captions. Columns `image,caption`, one caption a row, all 5 captions of each image.
- `images/<name>.jpg`: the photos, 224 x 224 (squashed to square by the source), JPEG quality 85.
- Size: {megabytes:.1f} MB in all ({bytes:,} bytes), of which the photos {image_megabytes:.1f} MB.

## Provenance

Images from github.com/RlNZLER/Image-Text-Matching at 56a15d913c3f290e2ee896386ece6076c1eea02e
(`data/images/`); captions from the Kaggle release of Flickr8k's `captions.txt`, as kept in
github.com/quantumnaan/sic_translator at d27da85cff2dbf143fcaf365aece667d66c4298f
(`data/ignore_captions.txt`). Collected into a full split of 7,091 images, train 6,091 images /
30,455 captions and dev 1,000 images / 5,000 captions (a fixed random split of image names), whose
files had these SHA-256 hashes:

- train.csv {train_sha256}
- dev.csv {dev_sha256}

## How the subset was chosen

`python scripts/make_photo_subset.py` (in the repository) draws `random.Random({seed}).sample` of
{train_images} of the train split's images and, separately, {dev_images} of the dev split's images
(dev stays dev: no image is in both), keeps the rows of the chosen images in the source files'
order, and copies the photos unchanged.

## Terms

Flickr8k is for research use; the photos belong to their authors.

## The full split

The default model's projector was trained on the full train split, and the figures in the
project's documentation are scored on the full dev split (1,000 images). To run the demo on the full
split, give its folder: `unime demo --photos DIR` (`DIR` holds `train.csv`, `dev.csv` and `images/`).
"""


def read_rows(path: Path) -> list[tuple[str, str]]:
    """``(image name, raw line)`` of each data row; the file has one record a line, kept verbatim."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if not lines or next(csv.reader([lines[0]])) != ["image", "caption"]:
        raise ValueError(f"{path}: expected the header image,caption")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = next(csv.reader([line]))
        if len(fields) != 2:
            raise ValueError(f"{path}: line {number}: expected image,caption, got {fields!r}")
        rows.append((fields[0], line))
    return rows


def choose(rows: list[tuple[str, str]], count: int) -> set[str]:
    images = list(dict.fromkeys(image for image, _ in rows))
    if count > len(images):
        raise ValueError(f"asked for {count} images, the split has {len(images)}")
    return set(random.Random(SEED).sample(images, count))


def make_subset(source: Path, output: Path) -> dict[str, int]:
    rows = {split: read_rows(source / f"{split}.csv") for split in SIZES}
    chosen = {split: choose(rows[split], count) for split, count in SIZES.items()}
    if chosen["train"] & chosen["dev"]:
        raise ValueError(f"{source}: images in both train.csv and dev.csv: {sorted(chosen['train'] & chosen['dev'])[:5]}")
    # Replace only what this script writes, so a wrong --output loses nothing else.
    shutil.rmtree(output / "images", ignore_errors=True)
    (output / "images").mkdir(parents=True)
    facts: dict[str, int | float | str] = {"seed": SEED}
    for split in SIZES:
        kept = [line for image, line in rows[split] if image in chosen[split]]
        header = (source / f"{split}.csv").read_text(encoding="utf-8").splitlines(keepends=True)[0]
        with (output / f"{split}.csv").open("w", encoding="utf-8", newline="") as handle:
            handle.write(header + "".join(kept))
        for image in sorted(chosen[split]):
            shutil.copyfile(source / "images" / image, output / "images" / image)
        facts[f"{split}_images"] = len(chosen[split])
        facts[f"{split}_rows"] = len(kept)
        facts[f"{split}_sha256"] = hashlib.sha256((source / f"{split}.csv").read_bytes()).hexdigest()
    image_bytes = sum(path.stat().st_size for path in (output / "images").iterdir())
    csv_bytes = sum((output / f"{split}.csv").stat().st_size for split in SIZES)
    # The README's own size is part of the total: write it once to measure, then with the figure.
    facts.update(images=len(chosen["train"]) + len(chosen["dev"]), image_megabytes=image_bytes / 1e6)
    readme = output / "README.md"
    total = image_bytes + csv_bytes
    for _ in range(3):
        facts.update(bytes=total, megabytes=total / 1e6)
        readme.write_text(README.format(**facts), encoding="utf-8")
        total = image_bytes + csv_bytes + readme.stat().st_size
    if total != facts["bytes"]:
        raise RuntimeError("the README's size figure did not settle")
    if total >= BUDGET_MB * 1e6:
        raise ValueError(f"the subset is {total / 1e6:.1f} MB, over the {BUDGET_MB} MB budget")
    return {key: value for key, value in facts.items() if isinstance(value, int)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the full Flickr8k folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the subset folder (its images/, CSVs and README.md are replaced)")
    args = parser.parse_args()
    facts = make_subset(args.source, args.output)
    print(f"wrote {args.output}: " + ", ".join(f"{key} {value}" for key, value in facts.items()))


if __name__ == "__main__":
    main()
