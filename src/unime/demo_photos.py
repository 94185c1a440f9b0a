"""Real photos for ``unime demo``: Flickr8k (images with 5 human captions each, split train / dev).

The demo trains stage 2 on MMEB-train-style pairs of the train split (``Flickr8k_i2t`` /
``Flickr8k_t2i``, MSCOCO's instructions) beside the synthetic tasks, and evaluates every model on
a fixed subset of the dev split: image-text retrieval (R@1/5/10 both ways, every caption) and an
MMEB-style retrieval pair of data sets. Dev is never trained on. The whole dev split can be scored
afterwards with ``unime eval retrieval --data FLICKR8K/dev.csv --image-dir FLICKR8K/images``.

The folder is found as ``--photos DIR`` (``train.csv``, ``dev.csv`` with ``image,caption`` columns
and ``images/``), else ``../shared/data/flickr8k`` from the working directory when it is there;
without it the demo runs on the synthetic sets alone and says so.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from unime.captions import group_by_image, read_caption_pairs, write_eval_sets, write_train_pairs

DEFAULT_LOCATION = Path("..") / "shared" / "data" / "flickr8k"
NAME = "Flickr8k"
RETRIEVAL_FILE = "flickr8k_dev.csv"


@dataclass(frozen=True)
class PhotoSizes:
    """How much of Flickr8k one demo run uses."""

    train_images: int  # stage-2 pairs: the first N train images, one caption each, both directions
    dev_images: int  # retrieval: the first N dev images with all their captions
    mmeb_queries: int  # MMEB-style Flickr8k_i2t / _t2i: queries per set (from the same dev images)
    mmeb_candidates: int  # candidates per MMEB-style query, the positive included


def find_photos(explicit: str | Path | None) -> Path | None:
    """The Flickr8k folder: ``explicit`` (checked), else the default location when it exists, else None."""
    folder = Path(explicit) if explicit else DEFAULT_LOCATION
    needed = [folder / "train.csv", folder / "dev.csv", folder / "images"]
    if all(path.exists() for path in needed):
        return folder.resolve()
    if explicit:
        missing = ", ".join(str(path) for path in needed if not path.exists())
        raise FileNotFoundError(f"--photos {folder}: not a Flickr8k folder (missing {missing})")
    return None


def _absolute(pairs: list[tuple[str, str]], images: Path) -> list[tuple[str, str]]:
    return [(str(images / image), caption) for image, caption in pairs]


def prepare_photos(photos: Path, data: Path, sizes: PhotoSizes) -> dict[str, int]:
    """Write the demo's Flickr8k sets into the synthetic benchmark's folder ``data``: training pairs
    into ``mmeb_train``, the MMEB-style sets into ``mmeb_eval`` (and its ``splits.json``), and the
    retrieval subset as ``retrieval/flickr8k_dev.csv``. Image paths are absolute. Returns the
    training pairs per direction, MMEB-style queries per direction, retrieval images and captions."""
    images = photos / "images"
    train = _absolute(read_caption_pairs(photos / "train.csv", images), images)
    trained = write_train_pairs(train, data / "mmeb_train", NAME, captions_per_image=1, max_images=sizes.train_images)
    dev_groups = list(group_by_image(_absolute(read_caption_pairs(photos / "dev.csv", images), images)).items())
    dev_groups = dev_groups[:sizes.dev_images]
    dev = [(image, caption) for image, captions in dev_groups for caption in captions]
    queries = write_eval_sets(dev, data / "mmeb_eval", NAME, candidates=sizes.mmeb_candidates,
                              max_images=sizes.mmeb_queries, seed=0)
    (data / "retrieval").mkdir(parents=True, exist_ok=True)
    with (data / "retrieval" / RETRIEVAL_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(dev)
    return {"train_pairs": trained[f"{NAME}_i2t"], "mmeb_queries": queries[f"{NAME}_i2t"],
            "retrieval_images": len(dev_groups), "retrieval_captions": len(dev)}


def photo_examples(data: Path, n: int) -> list[str]:
    """The first ``n`` dev images of the retrieval subset (for figures)."""
    with (data / "retrieval" / RETRIEVAL_FILE).open(encoding="utf-8") as handle:
        images = list(dict.fromkeys(row["image"] for row in csv.DictReader(handle)))
    return images[:n]
