"""Structured captions of scenes: noun phrases, clauses, their text and their truth in a scene.

A caption is a list of clauses joined by "and"; a clause is a noun phrase alone ("a red circle"),
with a grid position ("a red circle at the top left") or related to a second noun phrase ("a large
red circle to the left of a small blue square"). Every clause is existential: it holds when some
objects of the scene fit its noun phrases and relation. Keeping captions as structures, not
strings, lets the generator check that positives are true and negatives false for their image
(``Caption.true_in``), which is what makes the retrieval and SugarCrepe sets clean.

Grid positions are exact cells: "on the left" is the middle-left cell, "at the top left" the
top-left corner, "in the center" the middle cell.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, replace

from unime.synth.scenes import COLUMNS, GRID, ROWS, Scene, SceneObject

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_RELATION_TEXT = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
# Used by paraphrases only; the relation and size words are equivalent in meaning.
_RELATION_ALT = {
    "left of": "on the left of",
    "right of": "on the right of",
    "above": "above",
    "below": "beneath",
}
_SIZE_ALT = {"small": "little", "large": "big"}
TEMPLATES: tuple[str, ...] = (
    "{}",
    "a picture of {}",
    "an image of {}",
    "a drawing of {}",
    "a plain background with {}",
    "there is {}",
)
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def cell_name(row: int, col: int) -> str:
    """Short name of a grid cell: "top left", "top", "center", "right", ..."""
    if (row, col) == (1, 1):
        return "center"
    if row == 1:
        return COLUMNS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLUMNS[col]}"


def cell_phrase(row: int, col: int) -> str:
    """The prepositional phrase that places an object in one exact cell."""
    name = cell_name(row, col)
    if name == "center":
        return "in the center"
    if name in ("left", "right"):
        return f"on the {name}"
    return f"at the {name}"


def relation_text(relation: str) -> str:
    """The words of a relation in captions and questions: "to the left of", "above", ..."""
    return _RELATION_TEXT[relation]


def relation_holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    """Whether ``a`` is ``relation`` ``b`` (left of = smaller column, above = smaller row)."""
    if relation == "left of":
        return a.col < b.col
    if relation == "right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")


def true_relations(a: SceneObject, b: SceneObject) -> list[str]:
    return [r for r in RELATIONS if relation_holds(r, a, b)]


@dataclass(frozen=True)
class Desc:
    """A noun phrase: a shape, optionally with a colour and a size."""

    shape: str
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            self.shape == obj.shape
            and (self.colour is None or self.colour == obj.colour)
            and (self.size is None or self.size == obj.size)
        )

    def words(self, alt: bool = False) -> str:
        size = _SIZE_ALT[self.size] if (alt and self.size) else self.size
        return " ".join(w for w in (size, self.colour, self.shape) if w)

    def text(self, alt: bool = False) -> str:
        return f"a {self.words(alt)}"

    @staticmethod
    def of(obj: SceneObject, *, colour: bool = True, size: bool = True) -> Desc:
        return Desc(obj.shape, obj.colour if colour else None, obj.size if size else None)


@dataclass(frozen=True)
class Clause:
    """A noun phrase, optionally placed in a cell or related to a second noun phrase."""

    subject: Desc
    relation: str | None = None
    other: Desc | None = None
    cell: tuple[int, int] | None = None

    def text(self, alt: bool = False) -> str:
        words = self.subject.text(alt)
        if self.relation is not None and self.other is not None:
            relation = (_RELATION_ALT if alt else _RELATION_TEXT)[self.relation]
            return f"{words} {relation} {self.other.text(alt)}"
        if self.cell is not None:
            return f"{words} {cell_phrase(*self.cell)}"
        return words

    def holds(self, scene: Scene) -> bool:
        subjects = [o for o in scene.objects if self.subject.matches(o)]
        if self.relation is not None and self.other is not None:
            others = [o for o in scene.objects if self.other.matches(o)]
            return any(a is not b and relation_holds(self.relation, a, b) for a in subjects for b in others)
        if self.cell is not None:
            return any((o.row, o.col) == self.cell for o in subjects)
        return bool(subjects)

    def inverted(self) -> Clause:
        """The same statement with its two noun phrases exchanged ("A left of B" = "B right of A")."""
        if self.relation is None or self.other is None:
            return self
        return Clause(self.other, INVERSE[self.relation], self.subject)


@dataclass(frozen=True)
class Caption:
    """Clauses joined by "and", inside a template; ``alt`` picks the synonym wording."""

    clauses: tuple[Clause, ...]
    template: str = "{}"
    alt: bool = False

    def text(self) -> str:
        parts = [c.text(self.alt) for c in self.clauses]
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return self.template.format(body)

    def true_in(self, scene: Scene) -> bool:
        return all(c.holds(scene) for c in self.clauses)

    def with_clause(self, index: int, clause: Clause) -> Caption:
        clauses = list(self.clauses)
        clauses[index] = clause
        return replace(self, clauses=tuple(clauses))


def describe(
    scene: Scene, rng: random.Random, *, size_prob: float = 0.8, relation_prob: float = 0.8, alt: bool = False
) -> Caption:
    """A random true caption that mentions every object of ``scene`` with its colour.

    Objects are taken in random order and paired into relation clauses (with ``relation_prob``);
    the rest get a cell phrase or, sometimes, nothing. Sizes are mentioned with ``size_prob``.
    """
    order = list(scene.objects)
    rng.shuffle(order)
    descs = {id(o): Desc.of(o, size=rng.random() < size_prob) for o in order}
    clauses: list[Clause] = []
    index = 0
    while index < len(order):
        a = order[index]
        if index + 1 < len(order) and rng.random() < relation_prob:
            b = order[index + 1]
            clauses.append(Clause(descs[id(a)], rng.choice(true_relations(a, b)), descs[id(b)]))
            index += 2
            continue
        cell = (a.row, a.col) if (len(order) == 1 or rng.random() < 0.6) else None
        clauses.append(Clause(descs[id(a)], cell=cell))
        index += 1
    return Caption(tuple(clauses), rng.choice(TEMPLATES), alt)


def paraphrase(caption: Caption, rng: random.Random) -> Caption:
    """An equivalent caption worded differently: inverted relations, other clause order, synonyms,
    another template. Equivalent because every clause is existential and order-free."""
    clauses = [c.inverted() if rng.random() < 0.5 else c for c in caption.clauses]
    rng.shuffle(clauses)
    template = rng.choice([t for t in TEMPLATES if t != caption.template])
    return Caption(tuple(clauses), template, not caption.alt)


def mentions(text: str, pairs: Iterable[tuple[str, str]]) -> bool:
    """Whether ``text`` names any of the (colour, shape) ``pairs`` ("... red circle ...").

    Noun phrases always put the colour right before the shape, so this is exact for generated text.
    """
    return any(f"{colour} {shape}" in text for colour, shape in pairs)


def plural(shape: str) -> str:
    return shape + "s"


def grid_cells() -> list[tuple[int, int]]:
    return [(r, c) for r in range(GRID) for c in range(GRID)]
