"""The pieces every data set builder shares: examples, data set specs and the generation context."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from unime.synth.config import SynthConfig
from unime.synth.scenes import SIZES, Pair, Scene, sample_scene
from unime.synth.store import ImageStore

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
SPLITS = ("train", "IND", "OOD")

# Instructions in the MMEB style (TIGER-Lab/MMEB-train and MMEB-eval).
IMAGE_TARGET = "<|image_1|>\nRepresent the given image.\n"
CROP_TARGET = "<|image_1|>\nRepresent the given cropped image of the object.\n"


def image_question(question: str) -> str:
    return f"<|image_1|>\nRepresent the given image with the following question: {question}\n"


@dataclass
class Example:
    """One query with its positive, an optional hard negative, and what the eval lists need.

    ``hard`` are extra (text, image path) candidates known to be wrong for this query (put right
    after the positive in eval lists); ``meta`` is whatever the data set's ``conflicts`` rule
    reads to decide if another query's target would also be right for this one.
    """

    qry_text: str
    qry_image: str
    pos_text: str
    pos_image: str = ""
    neg_text: str = ""
    neg_image: str = ""
    hard: tuple[tuple[str, str], ...] = ()
    meta: object = None


Builder = Callable[["Context", random.Random, str, int], list[Example]]


@dataclass(frozen=True)
class DatasetSpec:
    """A data set of the benchmark.

    ``build(context, rng, split, n)`` returns ``n`` examples for split "train", "IND" or "OOD".
    Eval candidates come from ``labels`` (classification: the full label set), else from
    ``answers`` (VQA: an answer vocabulary), else from the other queries' positives, skipping
    those for which ``conflicts(query, other)`` says the other's positive is also right.
    """

    name: str
    meta_task: str
    build: Builder
    labels: Callable[[SynthConfig], list[str]] | None = None
    answers: Callable[[SynthConfig], list[str]] | None = None
    conflicts: Callable[[Example, Example], bool] | None = None
    has_ood: bool = True
    source: str = "synthetic"

    def __post_init__(self) -> None:
        if self.meta_task not in META_TASKS:
            raise ValueError(
                f"data set {self.name}: meta_task must be one of {META_TASKS}, got {self.meta_task!r}"
            )


@dataclass
class Context:
    """The run's settings, image store and the split of colour-shape pairs into seen and held out."""

    config: SynthConfig
    store: ImageStore
    train_pairs: list[Pair]
    held_out: list[Pair]
    cache: dict[str, object] = field(default_factory=dict)

    def path(self, split: str, name: str, index: int, suffix: str = "") -> str:
        """Relative image path of item ``index`` of data set ``name`` in ``split``."""
        folder = "train" if split == "train" else "eval"
        dataset = name if split == "train" else f"{name}-{split}"
        return f"{folder}/{dataset}/{index:05d}{suffix}.png"

    def focus_pair(self, rng: random.Random, split: str) -> Pair:
        """The pair a query is about: a held-out one in the OOD split, a seen one otherwise."""
        return rng.choice(self.held_out if split == "OOD" else self.train_pairs)

    def scene(
        self, rng: random.Random, split: str, *, min_objects: int = 1, sizes: tuple[str, ...] = SIZES
    ) -> Scene:
        """A random scene of seen pairs; in the OOD split objects[0] is a held-out pair."""
        n = rng.randint(min_objects, self.config.max_objects)
        focus = self.focus_pair(rng, split) if split == "OOD" else None
        return sample_scene(rng, self.train_pairs, n, focus=focus, sizes=sizes)
