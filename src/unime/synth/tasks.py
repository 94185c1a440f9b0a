"""The synthetic MMEB-style data sets: classification, VQA, retrieval and grounding on scenes.

Each builder draws scenes, renders and saves their images, and returns ``Example`` rows. In the
OOD split the query is always about a held-out colour-shape pair (``Scene.objects[0]``); train and
IND scenes contain seen pairs only.
"""

from __future__ import annotations

import random

from unime.synth.base import (
    CROP_TARGET,
    IMAGE_TARGET,
    Builder,
    Context,
    DatasetSpec,
    Example,
    image_question,
)
from unime.synth.config import SynthConfig
from unime.synth.language import NUMBERS, Caption, describe, mentions
from unime.synth.perturb import negative_caption, sample_edit
from unime.synth.questions import (
    ATTRIBUTE_KINDS,
    COUNT_KINDS,
    QA,
    SPATIAL_KINDS,
    answer_vocabulary,
    attribute_questions,
    count_questions,
    pick_question,
    referring_expressions,
    spatial_questions,
)
from unime.synth.scenes import SHAPES, Scene, all_pairs, sample_scene

_SHAPE_QUERY = "<|image_1|>\nRepresent the given image for classification of the shape of its large object\n"
_COLOUR_SHAPE_QUERY = "<|image_1|>\nRepresent the given image for classification\n"
_COUNT_QUERY = "<|image_1|>\nRepresent the given image for counting the objects in it\n"
_T2I_QUERY = "Find me an everyday image that matches the given caption: {}\n"
_I2T_QUERY = "<|image_1|>\nFind an image caption describing the given everyday image.\n"
_EDIT_QUERY = "<|image_1|>\nGiven an image, find a similar everyday image with the described changes: {}\n"
_GROUND_QUERY = (
    "<|image_1|>\nSelect the portion of the image that isolates the object of the given label: {}\n"
)
_REFER_QUERY = '<|image_1|>\nSelect the portion of the image that follows the language expression: "{}"\n'


def _label(pair: tuple[str, str]) -> str:
    return f"{pair[0]} {pair[1]}"


# Classification -------------------------------------------------------------------------------


def build_shape(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """One large object among up to two small ones of other shapes; the label is its shape."""
    examples = []
    for i in range(n):
        focus = ctx.focus_pair(rng, split)
        others = [p for p in ctx.train_pairs if p[1] != focus[1]]
        count = rng.randint(1, min(3, ctx.config.max_objects))
        scene = sample_scene(rng, others, count, focus=focus, focus_size="large", sizes=("small",))
        path, _ = ctx.store.scene(scene, ctx.path(split, "SynthShape", i))
        wrong = rng.choice([s for s in SHAPES if s != focus[1]])
        examples.append(Example(_SHAPE_QUERY, path, focus[1], neg_text=wrong))
    return examples


def build_colour_shape(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """One object; the label is its colour and shape ("red circle")."""
    examples = []
    for i in range(n):
        focus = ctx.focus_pair(rng, split)
        scene = sample_scene(rng, [], 1, focus=focus)
        path, _ = ctx.store.scene(scene, ctx.path(split, "SynthColorShape", i))
        # A confusable wrong label that shares colour or shape; never a held-out pair, so no
        # held-out combination is seen in training even as text.
        near = [p for p in ctx.train_pairs if p != focus and (p[0] == focus[0] or p[1] == focus[1])]
        examples.append(Example(_COLOUR_SHAPE_QUERY, path, _label(focus), neg_text=_label(rng.choice(near))))
    return examples


def build_count(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """1 to ``max_objects`` objects; the label is their number as a word."""
    examples = []
    for i in range(n):
        scene = ctx.scene(rng, split)
        path, _ = ctx.store.scene(scene, ctx.path(split, "SynthCount", i))
        count = len(scene.objects)
        wrong = (
            count + 1 if count == 1 or (count < ctx.config.max_objects and rng.random() < 0.5) else count - 1
        )
        examples.append(Example(_COUNT_QUERY, path, NUMBERS[count], neg_text=NUMBERS[wrong]))
    return examples


# VQA ------------------------------------------------------------------------------------------


def _vqa_builder(name: str, kinds: tuple[str, ...]) -> Builder:
    def build(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
        examples: list[Example] = []
        while len(examples) < n:
            scene = ctx.scene(rng, split, min_objects=1 if kinds != SPATIAL_KINDS else 2)
            qa = pick_question(_questions(kinds, scene, rng), kinds, rng, 0 if split == "OOD" else None)
            if qa is None:
                continue
            path, _ = ctx.store.scene(scene, ctx.path(split, name, len(examples)))
            vocabulary = answer_vocabulary(qa.kind, ctx.config.max_objects)
            wrong = [
                a for a in vocabulary if a != qa.answer and (split == "OOD" or not mentions(a, ctx.held_out))
            ]
            rng.shuffle(wrong)
            examples.append(
                Example(
                    image_question(qa.question),
                    path,
                    qa.answer,
                    neg_text=wrong[0],
                    hard=tuple((w, "") for w in wrong),
                )
            )
        return examples

    build.__doc__ = f"Questions of kinds {', '.join(kinds)} about a scene; the positive is the answer."
    return build


def _questions(kinds: tuple[str, ...], scene: Scene, rng: random.Random) -> list[QA]:
    if kinds == ATTRIBUTE_KINDS:
        return attribute_questions(scene, rng)
    if kinds == COUNT_KINDS:
        return count_questions(scene)
    return spatial_questions(scene, rng)


def vqa_answers(config: SynthConfig) -> list[str]:
    """The answer vocabulary shared by all VQA sets: distractors beyond the query's own kind."""
    words: list[str] = []
    for kind in ATTRIBUTE_KINDS + COUNT_KINDS[:1] + SPATIAL_KINDS:
        words += [w for w in answer_vocabulary(kind, config.max_objects) if w not in words]
    return words


# Retrieval ------------------------------------------------------------------------------------


def _contradicting_image(ctx: Context, rng: random.Random, scene: Scene, caption: Caption, rel: str) -> str:
    """Save an edit of ``scene`` for which ``caption`` is false (a hard negative image), or ""."""
    for _ in range(20):
        edit = sample_edit(scene, rng, ctx.train_pairs, kinds=("recolour", "reshape", "move", "remove"))
        if edit is not None and not caption.true_in(edit[1]):
            return ctx.store.scene(edit[1], rel)[0]
    return ""


def build_t2i(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """Caption -> image; the hard negative is an edited image for which the caption is false."""
    examples = []
    for i in range(n):
        scene = ctx.scene(rng, split)
        caption = describe(scene, rng)
        path, _ = ctx.store.scene(scene, ctx.path(split, "SynthT2I", i))
        negative = _contradicting_image(ctx, rng, scene, caption, ctx.path(split, "SynthT2I", i, "_neg"))
        hard = ((IMAGE_TARGET, negative),) if negative else ()
        examples.append(
            Example(
                qry_text=_T2I_QUERY.format(caption.text()),
                qry_image="",
                pos_text=IMAGE_TARGET,
                pos_image=path,
                neg_text=IMAGE_TARGET if negative else "",
                neg_image=negative,
                hard=hard,
                meta=(scene, caption),
            )
        )
    return examples


def build_i2t(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """Image -> caption; hard negatives are SugarCrepe-style captions false for the image."""
    examples = []
    for i in range(n):
        scene = ctx.scene(rng, split)
        caption = describe(scene, rng)
        path, _ = ctx.store.scene(scene, ctx.path(split, "SynthI2T", i))
        negatives = []
        for kind in rng.sample(["replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj"], 5):
            negative = negative_caption(kind, caption, scene, rng)
            if negative is None or (split != "OOD" and mentions(negative.text(), ctx.held_out)):
                continue
            if negative.text() not in negatives:
                negatives.append(negative.text())
        hard = tuple((t, "") for t in negatives[:2])
        examples.append(
            Example(
                qry_text=_I2T_QUERY,
                qry_image=path,
                pos_text=caption.text(),
                pos_image="",
                neg_text=negatives[0] if negatives else "",
                neg_image="",
                hard=hard,
                meta=(scene, caption),
            )
        )
    return examples


def build_edit(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """Image + change -> edited image (CIRR style); OOD edits create a held-out pair."""
    examples: list[Example] = []
    while len(examples) < n:
        i = len(examples)
        # The source image holds seen pairs only, in every split: OOD comes from the edit.
        source = ctx.scene(rng, "train")
        if split == "OOD":
            edit = sample_edit(source, rng, ctx.held_out, kinds=("recolour", "reshape", "add"))
        else:
            edit = sample_edit(source, rng, ctx.train_pairs)
        other = sample_edit(source, rng, ctx.train_pairs)
        if edit is None or other is None or other[1].layout_signature() == edit[1].layout_signature():
            continue
        source_path, _ = ctx.store.scene(source, ctx.path(split, "SynthEdit", i, "_src"))
        target_path, _ = ctx.store.scene(edit[1], ctx.path(split, "SynthEdit", i))
        other_path, _ = ctx.store.scene(other[1], ctx.path(split, "SynthEdit", i, "_alt"))
        hard = ((IMAGE_TARGET, other_path), (IMAGE_TARGET, source_path))
        examples.append(
            Example(
                qry_text=_EDIT_QUERY.format(edit[0]),
                qry_image=source_path,
                pos_text=IMAGE_TARGET,
                pos_image=target_path,
                neg_text=IMAGE_TARGET,
                neg_image=other_path,
                hard=hard,
                meta=edit[1].layout_signature(),
            )
        )
    return examples


# Grounding ------------------------------------------------------------------------------------


def _grounding(
    ctx: Context, rng: random.Random, split: str, n: int, name: str, relational: bool
) -> list[Example]:
    examples: list[Example] = []
    while len(examples) < n:
        i = len(examples)
        scene = ctx.scene(rng, split, min_objects=2)
        if relational:
            refs = [r for r in referring_expressions(scene, rng) if split != "OOD" or r.target == 0]
            # Prefer expressions that need a relation: they test composition, not attribute lookup.
            related = [r for r in refs if len(r.involves) > 1]
            ref = rng.choice(related if related and rng.random() < 0.75 else refs)
            target, query = ref.target, _REFER_QUERY.format(ref.text)
        else:
            target = 0 if split == "OOD" else rng.randrange(len(scene.objects))
            query = _GROUND_QUERY.format(_label(scene.objects[target].pair))
        scene_path, image = ctx.store.scene(scene, ctx.path(split, name, i))
        crops = {
            k: ctx.store.crop(scene, image, k, scene_path, ctx.path(split, name, i, f"_obj{k}"))
            for k in range(len(scene.objects))
            if k == target or split != "train" or k == (target + 1) % len(scene.objects)
        }
        others = [crops[k] for k in sorted(crops) if k != target]
        examples.append(
            Example(
                qry_text=query,
                qry_image=scene_path,
                pos_text=CROP_TARGET,
                pos_image=crops[target],
                neg_text=CROP_TARGET,
                neg_image=others[0],
                hard=tuple((CROP_TARGET, p) for p in others),
                meta=scene.objects[target],
            )
        )
    return examples


def build_ground(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """Image + object label -> the object's crop; other objects' crops are the hard negatives."""
    return _grounding(ctx, rng, split, n, "SynthGround", relational=False)


def build_refexp(ctx: Context, rng: random.Random, split: str, n: int) -> list[Example]:
    """Image + referring expression (often relational) -> the crop of the object it names."""
    return _grounding(ctx, rng, split, n, "SynthRefExp", relational=True)


# Conflict rules: when another query's target is also right for this query. --------------------


def _caption_fits_other_image(query: Example, other: Example) -> bool:
    return query.meta[1].true_in(other.meta[0])  # type: ignore[index]


def _other_caption_fits_image(query: Example, other: Example) -> bool:
    return other.meta[1].true_in(query.meta[0])  # type: ignore[index]


def _same_layout(query: Example, other: Example) -> bool:
    return query.meta == other.meta


def _same_pair(query: Example, other: Example) -> bool:
    return query.meta.pair == other.meta.pair  # type: ignore[union-attr]


def _same_object(query: Example, other: Example) -> bool:
    return query.meta.attributes == other.meta.attributes  # type: ignore[union-attr]


SYNTH_DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("SynthShape", "classification", build_shape, labels=lambda c: list(SHAPES)),
    DatasetSpec(
        "SynthColorShape",
        "classification",
        build_colour_shape,
        labels=lambda c: [_label(p) for p in all_pairs()],
    ),
    DatasetSpec(
        "SynthCount", "classification", build_count, labels=lambda c: list(NUMBERS[1 : c.max_objects + 1])
    ),
    DatasetSpec("SynthAttrQA", "vqa", _vqa_builder("SynthAttrQA", ATTRIBUTE_KINDS), answers=vqa_answers),
    DatasetSpec("SynthCountQA", "vqa", _vqa_builder("SynthCountQA", COUNT_KINDS), answers=vqa_answers),
    DatasetSpec("SynthSpatialQA", "vqa", _vqa_builder("SynthSpatialQA", SPATIAL_KINDS), answers=vqa_answers),
    DatasetSpec("SynthT2I", "retrieval", build_t2i, conflicts=_caption_fits_other_image),
    DatasetSpec("SynthI2T", "retrieval", build_i2t, conflicts=_other_caption_fits_image),
    DatasetSpec("SynthEdit", "retrieval", build_edit, conflicts=_same_layout),
    DatasetSpec("SynthGround", "grounding", build_ground, conflicts=_same_pair),
    DatasetSpec("SynthRefExp", "grounding", build_refexp, conflicts=_same_object),
)
