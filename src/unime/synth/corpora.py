"""The non-MMEB outputs: SugarCrepe splits, a Karpathy-layout retrieval set, NLI and STS text."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from unime.synth.language import INVERSE, RELATIONS, Clause, Desc, describe, mentions, paraphrase
from unime.synth.perturb import SUGARCREPE_SPLITS, negative_caption, weaken
from unime.synth.scenes import COLOURS, SHAPES, SIZES, Pair, sample_scene
from unime.synth.store import ImageStore

_CONTRADICTIONS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def write_sugarcrepe(
    out: Path, store: ImageStore, rng: random.Random, pairs: Sequence[Pair], per_split: int, max_objects: int
) -> dict[str, int]:
    """``out/<split>.json`` = ``{id: {filename, caption, negative_caption}}`` for the 7 splits.

    The splits share one pool of scenes with 2 or more objects (as SugarCrepe shares COCO images);
    each item's caption is true and its negative false for the image.
    """
    scenes = [sample_scene(rng, pairs, rng.randint(2, max_objects)) for _ in range(per_split)]
    files = [store.scene(scene, f"sugarcrepe/{i:05d}.png")[0] for i, scene in enumerate(scenes)]
    counts = {}
    out.mkdir(parents=True, exist_ok=True)
    for split in SUGARCREPE_SPLITS:
        items: dict[str, dict[str, str]] = {}
        # A few passes over the pool with fresh captions, since an operation can fail on a caption.
        for _ in range(5):
            for k in rng.sample(range(len(scenes)), len(scenes)):
                if len(items) >= per_split:
                    break
                caption = describe(scenes[k], rng, relation_prob=0.9)
                if split == "add_att":
                    caption = weaken(caption, rng)
                negative = negative_caption(split, caption, scenes[k], rng)
                if negative is not None:
                    items[str(len(items))] = {
                        "filename": files[k],
                        "caption": caption.text(),
                        "negative_caption": negative.text(),
                    }
        (out / f"{split}.json").write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
        counts[split] = len(items)
    return counts


def write_karpathy(
    path: Path,
    store: ImageStore,
    rng: random.Random,
    pairs: Sequence[Pair],
    images: int,
    captions: int,
    max_objects: int,
) -> dict[str, int]:
    """A retrieval test set in the Karpathy JSON layout, several distinct true captions per image."""
    entries = []
    sentid = 0
    for i in range(images):
        scene = sample_scene(rng, pairs, rng.randint(1, max_objects))
        filename = f"{i:05d}.png"
        store.scene(scene, f"retrieval/{filename}")
        texts: list[str] = []
        for _ in range(captions * 20):
            text = describe(scene, rng, alt=rng.random() < 0.3).text()
            if text not in texts:
                texts.append(text)
            if len(texts) == captions:
                break
        sentences = [
            {"raw": t, "tokens": t.split(), "imgid": i, "sentid": sentid + j} for j, t in enumerate(texts)
        ]
        entries.append(
            {
                "filepath": "retrieval",
                "filename": filename,
                "imgid": i,
                "split": "test",
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
        )
        sentid += len(sentences)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": "unime-synth", "images": entries}) + "\n", encoding="utf-8")
    return {"images": len(entries), "captions": sentid}


def write_nli(
    path: Path,
    rng: random.Random,
    pairs: Sequence[Pair],
    held_out: Sequence[Pair],
    rows: int,
    max_objects: int,
) -> int:
    """SimCSE-layout triplets: a caption, an equivalent paraphrase, a caption false for its scene.

    Training text: no held-out pair is named, not even in the negatives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sent0", "sent1", "hard_neg"])
        while written < rows:
            scene = sample_scene(rng, pairs, rng.randint(1, max_objects))
            caption = describe(scene, rng)
            negative = negative_caption(rng.choice(_CONTRADICTIONS), caption, scene, rng)
            if negative is None or mentions(negative.text(), held_out):
                continue
            writer.writerow([caption.text(), paraphrase(caption, rng).text(), negative.text()])
            written += 1
    return written


def _agreement(a: Clause, b: Clause, exchanged: bool) -> int:
    """Fields of ``a`` that ``b`` repeats when b's noun phrases are matched to a's (in order, or
    exchanged with the relation inverted): 6 attributes + 1 relation."""
    first, second = (b.other, b.subject) if exchanged else (b.subject, b.other)
    relation = INVERSE[b.relation] if exchanged else b.relation  # type: ignore[index]
    same = sum(
        getattr(x, f) == getattr(y, f)
        for x, y in ((a.subject, first), (a.other, second))
        for f in ("colour", "shape", "size")
    )
    return same + int(relation == a.relation)


def sts_score(a: Clause, b: Clause) -> float:
    """Similarity 0-5 of two relational statements: 5 x the share of their 7 fields that agree
    under the better matching of their noun phrases; "A left of B" and "B right of A" score 5."""
    if a.relation is None or b.relation is None or a.other is None or b.other is None:
        raise ValueError("sts_score compares two relational clauses (subject, relation, other)")
    return round(5 * max(_agreement(a, b, False), _agreement(a, b, True)) / 7, 3)


def _change(clause: Clause, field: str, rng: random.Random) -> Clause:
    if field == "relation":
        return replace(clause, relation=rng.choice([r for r in RELATIONS if r != clause.relation]))
    role, attribute = field.split(".")
    desc: Desc = getattr(clause, role)
    values = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}[attribute]
    new = rng.choice([v for v in values if v != getattr(desc, attribute)])
    return replace(clause, **{role: replace(desc, **{attribute: new})})


def write_sts(path: Path, rng: random.Random, rows: int) -> int:
    """STS-style pairs: a relational statement and a copy with 0-7 fields changed, sometimes
    reworded; the score comes from ``sts_score``."""
    fields = [f"{r}.{a}" for r in ("subject", "other") for a in ("colour", "shape", "size")] + ["relation"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            a = Desc(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))
            b = Desc(
                rng.choice([s for s in SHAPES if s != a.shape]), rng.choice(list(COLOURS)), rng.choice(SIZES)
            )
            first = Clause(a, rng.choice(RELATIONS), b)
            second = first
            for field in rng.sample(fields, rng.randint(0, len(fields))):
                second = _change(second, field, rng)
            if rng.random() < 0.5:
                second = second.inverted()
            record = {
                "sentence1": first.text(),
                "sentence2": second.text(alt=rng.random() < 0.5),
                "score": sts_score(first, second),
            }
            handle.write(json.dumps(record) + "\n")
    return rows
