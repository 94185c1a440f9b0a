"""Turning examples into MMEB-train and MMEB-eval rows (written by :func:`unime.data.mmeb.write_parquet`)."""

from __future__ import annotations

import random

from unime.synth.base import DatasetSpec, Example
from unime.synth.config import SynthConfig

TRAIN_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
EVAL_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")

Candidate = tuple[str, str]  # (text, image path)


def train_rows(examples: list[Example]) -> dict[str, list[str]]:
    """MMEB-train columns; "" where a row has no image or no negative."""
    return {
        "qry": [e.qry_text for e in examples],
        "qry_image_path": [e.qry_image for e in examples],
        "pos_text": [e.pos_text for e in examples],
        "pos_image_path": [e.pos_image for e in examples],
        "neg_text": [e.neg_text for e in examples],
        "neg_image_path": [e.neg_image for e in examples],
    }


def candidates(
    spec: DatasetSpec, examples: list[Example], index: int, rng: random.Random, config: SynthConfig
) -> list[Candidate]:
    """The candidate list of query ``index``: its positive first, then distractors, no repeats.

    Classification: the whole label set. VQA: the query's hard answers (same question kind), then
    random answers of the shared vocabulary. Retrieval and grounding: the query's hard negatives,
    then other queries' positives that ``spec.conflicts`` does not flag as also right.
    """
    example = examples[index]
    positive = (example.pos_text, example.pos_image)
    if spec.labels is not None:
        labels = spec.labels(config)
        if example.pos_text not in labels:
            raise ValueError(f"data set {spec.name}: label {example.pos_text!r} is not in its label set")
        return [positive] + [(label, "") for label in labels if label != example.pos_text]
    chosen = [positive]
    seen = {positive}
    limit = config.eval_candidates + 1

    def offer(candidate: Candidate) -> None:
        if len(chosen) < limit and candidate not in seen:
            chosen.append(candidate)
            seen.add(candidate)

    for candidate in example.hard:
        offer(candidate)
    if spec.answers is not None:
        pool = [(answer, "") for answer in spec.answers(config)]
        rng.shuffle(pool)
        for candidate in pool:
            offer(candidate)
        return chosen
    others = [k for k in range(len(examples)) if k != index]
    rng.shuffle(others)
    for k in others:
        if len(chosen) >= limit:
            break
        other = examples[k]
        if spec.conflicts is not None and spec.conflicts(example, other):
            continue
        offer((other.pos_text, other.pos_image))
    return chosen


def eval_rows(
    spec: DatasetSpec, examples: list[Example], rng: random.Random, config: SynthConfig
) -> dict[str, list]:
    """MMEB-eval columns: one row per query with its own candidate list, positive at index 0."""
    rows: dict[str, list] = {name: [] for name in EVAL_COLUMNS}
    for index, example in enumerate(examples):
        listed = candidates(spec, examples, index, rng, config)
        rows["qry_text"].append(example.qry_text)
        rows["qry_img_path"].append(example.qry_image)
        rows["tgt_text"].append([text for text, _ in listed])
        rows["tgt_img_path"].append([image for _, image in listed])
    return rows

