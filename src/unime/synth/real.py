"""Real-image classification sets built from images that ship inside PyPI wheels.

- ``Digits``: scikit-learn's ``load_digits()`` (1,797 handwritten digits, 8 x 8 grey levels),
  upscaled; train and eval use disjoint digit images (a fixed 70/30 split of the seed).
- ``Photos``: 19 photographs from ``skimage.data`` and the 2 of scikit-learn's
  ``load_sample_images()``; each photo is one class and examples are random square crops
  (55-100 % of the short side) with random horizontal flips. A query therefore asks to recognise a
  view of a known photo, not a category: a small real-image sanity set, not a benchmark of
  generalisation.

Both need the ``demo`` extra (scikit-learn, scikit-image).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from PIL import Image

from unime.synth.base import Context, DatasetSpec, Example

# (skimage.data function, label)
SKIMAGE_PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut", "an astronaut"),
    ("chelsea", "a cat"),
    ("coffee", "a cup of coffee"),
    ("rocket", "a rocket on its launch pad"),
    ("camera", "a man with a camera"),
    ("coins", "old coins"),
    ("moon", "the surface of the moon"),
    ("page", "a page of printed text"),
    ("clock", "a clock"),
    ("hubble_deep_field", "galaxies in deep space"),
    ("immunohistochemistry", "stained tissue under a microscope"),
    ("retina", "a retina"),
    ("colorwheel", "a colour wheel"),
    ("brick", "a brick wall"),
    ("grass", "grass"),
    ("gravel", "gravel"),
    ("cell", "a cell under a microscope"),
    ("horse", "the silhouette of a horse"),
    ("logo", "the scikit-image logo"),
)
# (file name in sklearn.datasets.load_sample_images(), label)
SKLEARN_PHOTOS: tuple[tuple[str, str], ...] = (("china.jpg", "a Chinese temple"), ("flower.jpg", "a flower"))
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_PHOTO_QUERY = "<|image_1|>\nRepresent the given image for classification\n"
_DIGIT_QUERY = "<|image_1|>\nRepresent the given image of a handwritten digit for classification\n"
_MAX_SIDE = 256  # photos are shrunk once; crops of 64 pixels never need more


def _missing(package: str) -> ImportError:
    return ImportError(
        f"the real-image tasks need {package} (pip install 'unime[demo]'); "
        "or set SynthConfig.real_images=False (CLI: --no-real-images)"
    )


def _to_rgb(array: np.ndarray) -> Image.Image:
    """Any skimage/sklearn sample (bool, float, grey, RGBA) as an 8-bit RGB image."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = ((array - low) / max(high - low, 1e-9) * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("RGB")
    image.thumbnail((_MAX_SIDE, _MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def load_photos() -> list[tuple[str, str, Image.Image]]:
    """(source, label, image) for every photo, in a fixed order."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as error:
        raise _missing("scikit-image and scikit-learn") from error
    photos = [
        (f"skimage.data.{name}", label, _to_rgb(getattr(skimage.data, name)()))
        for name, label in SKIMAGE_PHOTOS
    ]
    samples = load_sample_images()
    by_name = {
        path.replace("\\", "/").rsplit("/", 1)[-1]: array
        for path, array in zip(samples.filenames, samples.images, strict=True)
    }
    for name, label in SKLEARN_PHOTOS:
        photos.append((f"sklearn.datasets.load_sample_images/{name}", label, _to_rgb(by_name[name])))
    return photos


def _random_view(image: Image.Image, rng: random.Random, size: int) -> Image.Image:
    short = min(image.size)
    side = max(8, int(short * rng.uniform(0.55, 1.0)))
    x = rng.randint(0, image.width - side)
    y = rng.randint(0, image.height - side)
    view = image.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC)
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def _balanced(rng: random.Random, classes: int, n: int) -> list[int]:
    """``n`` class indices, each class as often as possible, in random order."""
    order = [i % classes for i in range(n)]
    rng.shuffle(order)
    return order


def build_photos(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """Random views of the real photos; the label is the photo's description."""
    if "photos" not in ctx.cache:
        ctx.cache["photos"] = load_photos()
    photos = ctx.cache["photos"]
    labels = [label for _, label, _ in photos]  # type: ignore[misc]
    examples = []
    for i, cls in enumerate(_balanced(rng, len(labels), n)):
        source, label, image = photos[cls]  # type: ignore[index]
        view = _random_view(image, rng, ctx.config.image_size)
        path = ctx.store.save(
            view, ctx.path(split, "Photos", i), {"kind": "photo", "source": source, "label": label}
        )
        wrong = rng.choice([x for x in labels if x != label])
        examples.append(Example(_PHOTO_QUERY, path, label, neg_text=wrong))
    return examples


def load_digit_split(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits split 70/30 into "train" and "IND" by a permutation of ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise _missing("scikit-learn") from error
    digits = load_digits()
    order = list(range(len(digits.target)))
    random.Random(f"unime-synth/{seed}/digits-split").shuffle(order)
    cut = int(len(order) * 0.7)
    parts = {"train": order[:cut], "IND": order[cut:]}
    return {k: (digits.images[idx], digits.target[idx]) for k, idx in parts.items()}


def _draw(rng: random.Random, size: int, n: int) -> Sequence[int]:
    """``n`` indices below ``size``, without repeats until all were used."""
    picks: list[int] = []
    while len(picks) < n:
        block = list(range(size))
        rng.shuffle(block)
        picks += block[: n - len(picks)]
    return picks


def build_digits(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """Handwritten digits, dark on white, upscaled; the label is "the digit seven" etc."""
    if "digits" not in ctx.cache:
        ctx.cache["digits"] = load_digit_split(ctx.config.seed)
    images, targets = ctx.cache["digits"][split]  # type: ignore[index]
    examples = []
    for i, k in enumerate(_draw(rng, len(targets), n)):
        pixels = (255 - images[k] * (255 / 16)).round().astype(np.uint8)
        image = (
            Image.fromarray(pixels)
            .resize((ctx.config.image_size,) * 2, Image.Resampling.BICUBIC)
            .convert("RGB")
        )
        label = f"the digit {DIGIT_WORDS[int(targets[k])]}"
        path = ctx.store.save(
            image, ctx.path(split, "Digits", i), {"kind": "digit", "label": label, "source_index": int(k)}
        )
        wrong = rng.choice([f"the digit {w}" for w in DIGIT_WORDS if f"the digit {w}" != label])
        examples.append(Example(_DIGIT_QUERY, path, label, neg_text=wrong))
    return examples


REAL_DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "Digits",
        "classification",
        build_digits,
        labels=lambda c: [f"the digit {w}" for w in DIGIT_WORDS],
        has_ood=False,
        source="sklearn.datasets.load_digits",
    ),
    DatasetSpec(
        "Photos",
        "classification",
        build_photos,
        labels=lambda c: [label for _, label in SKIMAGE_PHOTOS + SKLEARN_PHOTOS],
        has_ood=False,
        source="skimage.data + sklearn.datasets.load_sample_images",
    ),
)
