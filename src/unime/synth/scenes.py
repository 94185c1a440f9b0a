"""Scenes of coloured shapes on a 3 x 3 grid, and their rendering with PIL.

A scene holds one to a few objects, each with a colour, a shape, a size and a grid cell. Objects
sit in distinct cells and an object never outgrows its cell, so boxes never overlap and the
spatial relations used by the captions ("left of" = smaller column, "above" = smaller row) are
always unambiguous. Within a scene each (colour, shape) pair is unique, so "the red circle" always
names exactly one object.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

# Colour names start with a consonant so that the article is always "a": swapping two colours in a
# caption then keeps its bag of words (the SugarCrepe swap splits rely on it).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 200, 20),
    "purple": (128, 50, 170),
    "pink": (247, 120, 190),
    "brown": (140, 86, 40),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon")
SIZES: tuple[str, ...] = ("small", "large")
COLUMNS: tuple[str, ...] = ("left", "center", "right")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
GRID = 3
# Fraction of a cell's side taken by an object of each size (a large one nearly fills its cell).
_SIZE_FRACTION = {"small": 0.5, "large": 0.88}
# Pale backgrounds: a nuisance the captions never mention.
_BACKGROUNDS = ((246, 246, 246), (236, 236, 230), (240, 234, 222), (226, 234, 242), (232, 242, 230))
_SUPERSAMPLE = 3

Pair = tuple[str, str]  # (colour, shape)


@dataclass(frozen=True)
class SceneObject:
    """One object: its attributes and its grid cell (row 0 is the top, column 0 the left)."""

    colour: str
    shape: str
    size: str
    row: int
    col: int
    tint: tuple[int, int, int] = (0, 0, 0)  # per-object colour jitter, a nuisance

    @property
    def pair(self) -> Pair:
        return (self.colour, self.shape)

    @property
    def attributes(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.size)


@dataclass(frozen=True)
class Scene:
    """A set of objects in distinct cells on one background."""

    objects: tuple[SceneObject, ...]
    background: int = 0

    def box(self, obj: SceneObject, image_size: int) -> tuple[int, int, int, int]:
        """Pixel bounding box (x0, y0, x1, y1), exclusive end, of ``obj`` at ``image_size``."""
        cell = image_size / GRID
        side = cell * _SIZE_FRACTION[obj.size]
        cx, cy = (obj.col + 0.5) * cell, (obj.row + 0.5) * cell
        return (
            int(round(cx - side / 2)),
            int(round(cy - side / 2)),
            int(round(cx + side / 2)),
            int(round(cy + side / 2)),
        )

    def layout_signature(self) -> tuple[tuple[str, str, str, int, int], ...]:
        """Everything a caption or an edit can speak of: attributes and cells, sorted."""
        return tuple(sorted((o.colour, o.shape, o.size, o.row, o.col) for o in self.objects))

    def with_object(self, index: int, **changes: object) -> Scene:
        """A copy with object ``index`` changed (attributes or cell)."""
        objects = list(self.objects)
        objects[index] = replace(objects[index], **changes)  # type: ignore[arg-type]
        return Scene(tuple(objects), self.background)


def all_pairs() -> list[Pair]:
    return [(colour, shape) for shape in SHAPES for colour in COLOURS]


def held_out_pairs(rng: random.Random, count: int) -> frozenset[Pair]:
    """``count`` (colour, shape) pairs kept out of training: one colour per shape, all distinct.

    Every colour and every shape still appears in training with other partners, so a held-out pair
    tests composition of known attributes, not unknown words.
    """
    colours = list(COLOURS)
    rng.shuffle(colours)
    return frozenset((colours[i], SHAPES[i]) for i in range(count))


def free_cells(scene: Scene) -> list[tuple[int, int]]:
    taken = {(o.row, o.col) for o in scene.objects}
    return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in taken]


def _tint(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(-12, 12), rng.randint(-12, 12), rng.randint(-12, 12))


def make_object(
    rng: random.Random, pair: Pair, cell: tuple[int, int], size: str | None = None
) -> SceneObject:
    return SceneObject(pair[0], pair[1], size or rng.choice(SIZES), cell[0], cell[1], _tint(rng))


def sample_scene(
    rng: random.Random,
    pairs: Sequence[Pair],
    n_objects: int,
    *,
    focus: Pair | None = None,
    focus_size: str | None = None,
    sizes: Sequence[str] = SIZES,
) -> Scene:
    """A random scene of ``n_objects`` objects drawn from ``pairs`` (no pair twice).

    ``focus``, when given, is placed first (objects[0]) whether or not it is in ``pairs``: this is
    how out-of-distribution scenes get exactly their held-out pair.
    """
    if not 1 <= n_objects <= GRID * GRID:
        raise ValueError(f"n_objects must be in [1, {GRID * GRID}], got {n_objects}")
    chosen: list[Pair] = [focus] if focus is not None else []
    pool = [p for p in pairs if p not in chosen]
    if len(pool) < n_objects - len(chosen):
        raise ValueError(f"only {len(pool)} colour-shape pairs available for {n_objects} objects")
    chosen += rng.sample(pool, n_objects - len(chosen))
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], n_objects)
    objects = []
    for index, (pair, cell) in enumerate(zip(chosen, cells, strict=True)):
        size = focus_size if (index == 0 and focus_size) else rng.choice(list(sizes))
        objects.append(make_object(rng, pair, cell, size))
    return Scene(tuple(objects), rng.randrange(len(_BACKGROUNDS)))


def _regular_polygon(
    cx: float, cy: float, radius: float, sides: int, rotation: float
) -> list[tuple[float, float]]:
    return [
        (
            cx + radius * math.cos(rotation + 2 * math.pi * k / sides),
            cy + radius * math.sin(rotation + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + math.pi * k / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: Iterable[float], fill: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        # Shrunk so its area is close to the circle's: size, not shape, should carry "large".
        s = r * 0.88
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1 - r * 0.15), (x0, y1 - r * 0.15)], fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy + r * 0.08, r * 1.05), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6, 0.0), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, image_size: int) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``image_size`` pixels a side.

    Drawn at 3x and box-downsampled (each pixel the mean of a 3 x 3 block), because PIL's
    polygons are not anti-aliased and a 64-pixel star would otherwise be a jagged blob.
    """
    big = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), _BACKGROUNDS[scene.background % len(_BACKGROUNDS)])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        base = COLOURS[obj.colour]
        fill = tuple(min(255, max(0, c + t)) for c, t in zip(base, obj.tint, strict=True))
        box = [v * _SUPERSAMPLE for v in scene.box(obj, image_size)]
        _draw_shape(draw, obj.shape, box, fill)  # type: ignore[arg-type]
    return image.reduce(_SUPERSAMPLE)


def crop(
    image: Image.Image, scene: Scene, obj: SceneObject, out_size: int
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The square region around ``obj`` (its box grown by 30 %), resized to ``out_size``.

    Returns the crop and the region's box in the source image. Crops are resized up because many
    image processors refuse or distort images of a dozen pixels.
    """
    x0, y0, x1, y1 = scene.box(obj, image.width)
    half = (x1 - x0) * 0.65
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    region = (
        max(0, int(round(cx - half))),
        max(0, int(round(cy - half))),
        min(image.width, int(round(cx + half))),
        min(image.height, int(round(cy + half))),
    )
    return image.crop(region).resize((out_size, out_size), Image.Resampling.BICUBIC), region
