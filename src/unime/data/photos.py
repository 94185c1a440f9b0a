"""Real photos for ``unime demo``: Flickr8k (images with 5 human captions each, split train / dev).

The demo trains stage 2 on MMEB-train-style pairs of the train split (``Flickr8k_i2t`` /
``Flickr8k_t2i``, MSCOCO's instructions) beside the synthetic tasks, and evaluates every model on
a fixed subset of the dev split: image-text retrieval (R@1/5/10 both ways, every caption) and an
MMEB-style retrieval pair of data sets. Dev is never trained on. The whole dev split can be scored
afterwards with ``unime eval retrieval --data FLICKR8K/dev.csv --image-dir FLICKR8K/images``.

The photos ship with the package: a 1,000-image subset in ``unime/assets/flickr8k`` (600 train and
400 dev images with all their captions, 15 MB; provenance and terms in its README.md). ``--photos
DIR`` takes another folder of the same layout (``train.csv``, ``dev.csv`` with ``image,caption``
columns and ``images/``), such as the full Flickr8k split.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from unime.data.captions import group_by_image, read_caption_pairs, write_eval_sets, write_train_pairs

# Resolved from the package, not the working directory: an installed unime finds it from anywhere.
SHIPPED_PHOTOS = Path(__file__).resolve().parents[1] / "assets" / "flickr8k"
NAME = "Flickr8k"
RETRIEVAL_FILE = "flickr8k_dev.csv"


@dataclass(frozen=True)
class PhotoSizes:
    """How much of Flickr8k one demo run uses, at most: a folder with fewer images gives what it has
    (the counts ``prepare_photos`` returns say how many)."""

    train_images: int  # stage-2 pairs: the first N train images, one caption each, both directions
    dev_images: int  # retrieval: the first N dev images with all their captions
    mmeb_queries: int  # MMEB-style Flickr8k_i2t / _t2i: queries per set (from the same dev images)
    mmeb_candidates: int  # candidates per MMEB-style query, the positive included


def find_photos(explicit: str | Path | None = None) -> Path:
    """The Flickr8k folder: ``explicit`` (``--photos DIR``) when given, else the subset that ships
    with the package. Either is checked: a folder without ``train.csv``, ``dev.csv`` or ``images/``
    is refused with what it lacks."""
    folder = Path(explicit) if explicit else SHIPPED_PHOTOS
    missing = [name for name, present in (("train.csv", (folder / "train.csv").is_file()),
                                          ("dev.csv", (folder / "dev.csv").is_file()),
                                          ("images/", (folder / "images").is_dir())) if not present]
    if not missing:
        return folder.resolve()
    if explicit:
        raise FileNotFoundError(f"--photos {folder}: not a Flickr8k folder (missing {', '.join(missing)})")
    raise FileNotFoundError(f"the Flickr8k subset that ships with unime is incomplete at {folder} "
                            f"(missing {', '.join(missing)}): reinstall unime, or give --photos DIR")


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
    if len(dev_groups) < 2:
        raise ValueError(f"{photos / 'dev.csv'}: {len(dev_groups)} image(s); the MMEB-style sets need at least 2")
    dev = [(image, caption) for image, captions in dev_groups for caption in captions]
    # A smaller folder than the sizes ask for: the MMEB-style sets use the dev images there are.
    mmeb_queries = min(sizes.mmeb_queries, len(dev_groups))
    queries = write_eval_sets(dev, data / "mmeb_eval", NAME, candidates=min(sizes.mmeb_candidates, mmeb_queries),
                              max_images=mmeb_queries, seed=0)
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
