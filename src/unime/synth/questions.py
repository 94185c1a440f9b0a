"""Questions with answers, and referring expressions, generated from a scene.

Everything here is derived from the scene's objects, so every answer is correct by construction
and every referring expression names exactly one object. Each item records which objects it
involves, which lets out-of-distribution sets keep only items about a held-out colour-shape pair.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from unime.synth.language import (
    NUMBERS,
    RELATIONS,
    Desc,
    cell_name,
    cell_phrase,
    grid_cells,
    plural,
    relation_holds,
    relation_text,
)
from unime.synth.scenes import COLOURS, SHAPES, SIZES, Scene

# Field subsets a referring phrase may use, shortest first.
_REFERRING_FIELDS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("colour",),
    ("size", "shape"),
    ("colour", "shape"),
    ("size",),
    ("size", "colour"),
    ("size", "colour", "shape"),
)

ATTRIBUTE_KINDS = ("colour", "shape", "size")
COUNT_KINDS = ("count_shape", "count_colour", "count_all", "count_size")
SPATIAL_KINDS = ("what_rel", "yes_no", "where")


@dataclass(frozen=True)
class QA:
    """A question about a scene, its answer, its kind and the indices of the objects it involves."""

    question: str
    answer: str
    kind: str
    involves: frozenset[int]


def _phrase(scene: Scene, index: int, fields: tuple[str, ...]) -> str | None:
    """ "the <fields> <shape|object>" when exactly one object of the scene fits it, else None."""
    target = scene.objects[index]
    fits = [o for o in scene.objects if all(getattr(o, f) == getattr(target, f) for f in fields)]
    if len(fits) != 1:
        return None
    words = [getattr(target, f) for f in ("size", "colour") if f in fields]
    words.append(target.shape if "shape" in fields else "object")
    return "the " + " ".join(words)


def refer(scene: Scene, index: int, rng: random.Random, avoid: str | None = None) -> str:
    """A phrase naming object ``index`` and no other, without the attribute ``avoid``.

    Picks at random among the attribute phrases that are unique; falls back to the object's cell,
    which is always unique.
    """
    options = [
        phrase
        for fields in _REFERRING_FIELDS
        if avoid not in fields and (phrase := _phrase(scene, index, fields)) is not None
    ]
    if options:
        return rng.choice(options)
    obj = scene.objects[index]
    return f"the object {cell_phrase(obj.row, obj.col)}"


def _count(word: int) -> str:
    return NUMBERS[word]


def attribute_questions(scene: Scene, rng: random.Random) -> list[QA]:
    items = []
    for i, obj in enumerate(scene.objects):
        one = frozenset({i})
        items.append(QA(f"What colour is {refer(scene, i, rng, 'colour')}?", obj.colour, "colour", one))
        items.append(QA(f"What shape is {refer(scene, i, rng, 'shape')}?", obj.shape, "shape", one))
        items.append(QA(f"Is {refer(scene, i, rng, 'size')} large or small?", obj.size, "size", one))
    return items


def count_questions(scene: Scene) -> list[QA]:
    objs = scene.objects
    items = []
    for shape in SHAPES:
        hit = frozenset(i for i, o in enumerate(objs) if o.shape == shape)
        items.append(QA(f"How many {plural(shape)} are there?", _count(len(hit)), "count_shape", hit))
    for colour in COLOURS:
        hit = frozenset(i for i, o in enumerate(objs) if o.colour == colour)
        items.append(QA(f"How many {colour} objects are there?", _count(len(hit)), "count_colour", hit))
    for size in SIZES:
        hit = frozenset(i for i, o in enumerate(objs) if o.size == size)
        items.append(QA(f"How many {size} objects are there?", _count(len(hit)), "count_size", hit))
    items.append(
        QA("How many objects are there?", _count(len(objs)), "count_all", frozenset(range(len(objs))))
    )
    return items


def unique_related(scene: Scene, relation: str, index: int) -> int | None:
    """The one object that is ``relation`` object ``index``, or None when there are 0 or several."""
    ref = scene.objects[index]
    hits = [i for i, o in enumerate(scene.objects) if i != index and relation_holds(relation, o, ref)]
    return hits[0] if len(hits) == 1 else None


def spatial_questions(scene: Scene, rng: random.Random) -> list[QA]:
    objs = scene.objects
    items = []
    for b in range(len(objs)):
        for relation in RELATIONS:
            a = unique_related(scene, relation, b)
            if a is not None:
                question = f"What is {relation_text(relation)} {refer(scene, b, rng)}?"
                items.append(QA(question, Desc.of(objs[a]).text(), "what_rel", frozenset({a, b})))
    for a in range(len(objs)):
        for b in range(len(objs)):
            if a == b:
                continue
            for relation in RELATIONS:
                answer = "yes" if relation_holds(relation, objs[a], objs[b]) else "no"
                question = f"Is {refer(scene, a, rng)} {relation_text(relation)} {refer(scene, b, rng)}?"
                items.append(QA(question, answer, "yes_no", frozenset({a, b})))
    for i, obj in enumerate(objs):
        items.append(
            QA(f"Where is {refer(scene, i, rng)}?", cell_name(obj.row, obj.col), "where", frozenset({i}))
        )
    return items


def answer_vocabulary(kind: str, max_objects: int) -> list[str]:
    """Every answer a question of ``kind`` can have; VQA candidate lists are drawn from these."""
    if kind == "colour":
        return list(COLOURS)
    if kind == "shape":
        return list(SHAPES)
    if kind == "size":
        return list(SIZES)
    if kind.startswith("count_"):
        return [_count(n) for n in range(max_objects + 1)]
    if kind == "what_rel":
        return [Desc(s, c, z).text() for s in SHAPES for c in COLOURS for z in SIZES]
    if kind == "yes_no":
        return ["yes", "no"]
    if kind == "where":
        return [cell_name(r, c) for r, c in grid_cells()]
    raise ValueError(f"unknown question kind {kind!r}")


def pick_question(
    items: list[QA], kinds: tuple[str, ...], rng: random.Random, focus: int | None
) -> QA | None:
    """A random item of one of ``kinds``: first a kind, then an answer, then a question, each
    uniformly, so that no answer ("zero", "no") dominates by being the most common.

    With ``focus`` set only items involving that object qualify.
    """
    pool = [q for q in items if q.kind in kinds and (focus is None or focus in q.involves)]
    present = sorted({q.kind for q in pool}, key=kinds.index)
    if not present:
        return None
    kind = rng.choice(present)
    pool = [q for q in pool if q.kind == kind]
    answer = rng.choice(sorted({q.answer for q in pool}))
    return rng.choice([q for q in pool if q.answer == answer])


@dataclass(frozen=True)
class Reference:
    """A referring expression, the index of the object it names, and the objects it involves."""

    text: str
    target: int
    involves: frozenset[int]


def referring_expressions(scene: Scene, rng: random.Random) -> list[Reference]:
    """Relational expressions ("the object to the left of the blue square") where they are unique,
    plus one attribute or cell expression per object."""
    items = []
    for b in range(len(scene.objects)):
        for relation in RELATIONS:
            a = unique_related(scene, relation, b)
            if a is not None:
                text = f"the object {relation_text(relation)} {refer(scene, b, rng)}"
                items.append(Reference(text, a, frozenset({a, b})))
    for i in range(len(scene.objects)):
        items.append(Reference(refer(scene, i, rng), i, frozenset({i})))
    return items
