"""Perturbations: SugarCrepe-style negative captions, and edits of scenes.

A negative caption is built from a true caption by one of the seven SugarCrepe operations and kept
only when it is false for the scene (checked with ``Caption.true_in``), so every negative is wrong
for its image. Swaps exchange words between two noun phrases, so a swapped caption has the same
bag of words as the original: only the composition tells them apart.

A scene edit ("make the red circle blue", "remove the star") returns the instruction and the edited
scene; it feeds the composed-retrieval task and the hard negative images of text-to-image
retrieval.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import replace

from unime.synth.language import RELATIONS, Caption, Clause, Desc, cell_name, cell_phrase
from unime.synth.scenes import COLOURS, SHAPES, SIZES, Pair, Scene, free_cells, make_object

SUGARCREPE_SPLITS: tuple[str, ...] = (
    "replace_obj",
    "replace_att",
    "replace_rel",
    "swap_obj",
    "swap_att",
    "add_obj",
    "add_att",
)

Slot = tuple[int, str]  # (clause index, "subject" | "other")


def _slots(caption: Caption) -> list[Slot]:
    return [
        (i, role) for i, c in enumerate(caption.clauses) for role in ("subject", "other") if getattr(c, role)
    ]


def _get(caption: Caption, slot: Slot) -> Desc:
    return getattr(caption.clauses[slot[0]], slot[1])


def _set(caption: Caption, slot: Slot, desc: Desc) -> Caption:
    clause = replace(caption.clauses[slot[0]], **{slot[1]: desc})
    return caption.with_clause(slot[0], clause)


def _other(values: Collection[str], current: str | None, rng: random.Random) -> str:
    return rng.choice([v for v in values if v != current])


def replace_obj(caption: Caption, scene: Scene, rng: random.Random) -> Caption | None:
    slot = rng.choice(_slots(caption))
    desc = _get(caption, slot)
    return _set(caption, slot, replace(desc, shape=_other(SHAPES, desc.shape, rng)))


def replace_att(caption: Caption, scene: Scene, rng: random.Random) -> Caption | None:
    slot = rng.choice(_slots(caption))
    desc = _get(caption, slot)
    if desc.size is not None and (desc.colour is None or rng.random() < 0.3):
        return _set(caption, slot, replace(desc, size=_other(SIZES, desc.size, rng)))
    return _set(caption, slot, replace(desc, colour=_other(COLOURS, desc.colour, rng)))


def replace_rel(caption: Caption, scene: Scene, rng: random.Random) -> Caption | None:
    related = [i for i, c in enumerate(caption.clauses) if c.relation is not None]
    if not related:
        return None
    index = rng.choice(related)
    clause = caption.clauses[index]
    return caption.with_clause(index, replace(clause, relation=_other(RELATIONS, clause.relation, rng)))


def _swap(caption: Caption, rng: random.Random, field: str) -> Caption | None:
    slots = _slots(caption)
    pairs = [
        (a, b)
        for i, a in enumerate(slots)
        for b in slots[i + 1 :]
        if getattr(_get(caption, a), field) is not None
        and getattr(_get(caption, b), field) is not None
        and getattr(_get(caption, a), field) != getattr(_get(caption, b), field)
    ]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    da, db = _get(caption, a), _get(caption, b)
    swapped = _set(caption, a, replace(da, **{field: getattr(db, field)}))
    return _set(swapped, b, replace(db, **{field: getattr(da, field)}))


def swap_obj(caption: Caption, scene: Scene, rng: random.Random) -> Caption | None:
    return _swap(caption, rng, "shape")


def swap_att(caption: Caption, scene: Scene, rng: random.Random) -> Caption | None:
    return _swap(caption, rng, "colour" if rng.random() < 0.7 else "size") or _swap(caption, rng, "colour")


def add_obj(caption: Caption, scene: Scene, rng: random.Random) -> Caption | None:
    present = {o.pair for o in scene.objects}
    absent = [(c, s) for s in SHAPES for c in COLOURS if (c, s) not in present]
    colour, shape = rng.choice(absent)
    size = rng.choice(SIZES) if rng.random() < 0.5 else None
    return replace(caption, clauses=caption.clauses + (Clause(Desc(shape, colour, size)),))


def weaken(caption: Caption, rng: random.Random) -> Caption:
    """The caption with the colour or the size of one noun phrase left out (still true)."""
    slot = rng.choice(_slots(caption))
    desc = _get(caption, slot)
    if desc.size is not None and rng.random() < 0.5:
        return _set(caption, slot, replace(desc, size=None))
    return _set(caption, slot, replace(desc, colour=None))


def add_att(caption: Caption, scene: Scene, rng: random.Random) -> Caption | None:
    open_slots = [
        s for s in _slots(caption) if _get(caption, s).colour is None or _get(caption, s).size is None
    ]
    if not open_slots:
        return None
    slot = rng.choice(open_slots)
    desc = _get(caption, slot)
    if desc.colour is None and (desc.size is not None or rng.random() < 0.6):
        return _set(caption, slot, replace(desc, colour=rng.choice(list(COLOURS))))
    return _set(caption, slot, replace(desc, size=rng.choice(SIZES)))


_OPERATIONS: dict[str, Callable[[Caption, Scene, random.Random], Caption | None]] = {
    "replace_obj": replace_obj,
    "replace_att": replace_att,
    "replace_rel": replace_rel,
    "swap_obj": swap_obj,
    "swap_att": swap_att,
    "add_obj": add_obj,
    "add_att": add_att,
}


def negative_caption(
    kind: str, caption: Caption, scene: Scene, rng: random.Random, tries: int = 30
) -> Caption | None:
    """A caption made from ``caption`` by the SugarCrepe operation ``kind`` that is false for
    ``scene``, or None when ``tries`` random attempts found none."""
    if kind not in _OPERATIONS:
        raise ValueError(f"unknown SugarCrepe split {kind!r}; known: {', '.join(SUGARCREPE_SPLITS)}")
    for _ in range(tries):
        negative = _OPERATIONS[kind](caption, scene, rng)
        if negative is not None and negative.text() != caption.text() and not negative.true_in(scene):
            return negative
    return None


EDIT_KINDS = ("recolour", "reshape", "resize", "remove", "add", "move")


def sample_edit(
    scene: Scene,
    rng: random.Random,
    allowed: Collection[Pair],
    *,
    kinds: tuple[str, ...] = EDIT_KINDS,
) -> tuple[str, Scene] | None:
    """A random edit instruction and the scene it produces, or None when none of ``kinds`` applies.

    Any colour-shape pair the edit creates is taken from ``allowed``; out-of-distribution edits pass
    the held-out pairs here with the kinds that create a pair (recolour, reshape, add).
    """
    present = {o.pair for o in scene.objects}
    kinds = tuple(kinds)
    for kind in rng.sample(kinds, len(kinds)):
        result = _edit(kind, scene, rng, [p for p in allowed if p not in present])
        if result is not None:
            return result
    return None


def _edit(kind: str, scene: Scene, rng: random.Random, new_pairs: list[Pair]) -> tuple[str, Scene] | None:
    index = rng.randrange(len(scene.objects))
    obj = scene.objects[index]
    name = f"the {obj.colour} {obj.shape}"
    if kind == "recolour":
        options = [c for c, s in new_pairs if s == obj.shape]
        if options:
            colour = rng.choice(options)
            return f"make {name} {colour}", scene.with_object(index, colour=colour)
    elif kind == "reshape":
        options = [s for c, s in new_pairs if c == obj.colour]
        if options:
            shape = rng.choice(options)
            return f"turn {name} into a {shape}", scene.with_object(index, shape=shape)
    elif kind == "resize":
        size = "small" if obj.size == "large" else "large"
        return f"make {name} {size}", scene.with_object(index, size=size)
    elif kind == "remove" and len(scene.objects) > 1:
        objects = scene.objects[:index] + scene.objects[index + 1 :]
        return f"remove {name}", Scene(objects, scene.background)
    elif kind in ("add", "move"):
        cells = free_cells(scene)
        if cells and (kind == "move" or new_pairs):
            cell = rng.choice(cells)
            if kind == "move":
                return f"move {name} to the {cell_name(*cell)}", scene.with_object(
                    index, row=cell[0], col=cell[1]
                )
            added = make_object(rng, rng.choice(new_pairs), cell)
            text = f"add a {added.size} {added.colour} {added.shape} {cell_phrase(*cell)}"
            return text, Scene(scene.objects + (added,), scene.background)
    return None
