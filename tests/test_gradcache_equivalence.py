"""GradCache on real MLLM inputs: cached gradients equal uncached ones, through the stage-2 loss class
and ``model.preprocess`` features of tiny Qwen2-VL, LLaVA-NeXT and LLaVA-OneVision models.

The batches mix image and text rows inside each column (queries with an image and text-only
queries; text positives and image positives; mixed explicit negatives), so the engine must slice
Qwen2-VL's flattened patches by ``image_grid_thw`` and LLaVA-NeXT's per-image tiles and
``image_sizes`` through ``num_images_per_sample``, and skip image tensors in text-only mini-batches.
"""

from __future__ import annotations

import pytest
import torch

from unime.inputs import EmbedInput
from unime.losses import HardNegativeInfoNCELoss
from unime.modeling import build_model
from unime.training.adapters import apply_tuning

MMEB_IMAGE = "<|image_1|>\nRepresent the given image with the following question: "

pytestmark = pytest.mark.usefixtures("one_thread")



def _mixed_columns(images) -> list[list[EmbedInput]]:
    """Six (query, positive, negative) rows: image query -> text positive, text query -> image positive.

    In mini-batches of 4 rows, the second query mini-batch has no image and the second positive
    mini-batch has only images."""
    red, grey, tall = images
    queries = [
        EmbedInput(text=MMEB_IMAGE + "what colour is the shape?", image=red),
        EmbedInput(text="Find me an everyday image that matches the given caption: a red circle"),
        EmbedInput(text=MMEB_IMAGE + "how many objects are there?", image=grey),
        EmbedInput(text=MMEB_IMAGE + "where is the square?", image=tall),
        EmbedInput(text="Find me an everyday image that matches the given caption: two dogs run"),
        EmbedInput(text="a man is playing a guitar"),
    ]
    positives = [
        EmbedInput(text="red"),
        EmbedInput(text="<|image_1|>\nRepresent the given image.", image=red),
        EmbedInput(text="three"),
        EmbedInput(text="bottom left"),
        EmbedInput(text="<|image_1|>\nRepresent the given image.", image=grey),
        EmbedInput(image=tall),
    ]
    negatives = [
        EmbedInput(text="blue"),
        EmbedInput(image=tall),
        EmbedInput(text="seven"),
        EmbedInput(text="top right"),
        EmbedInput(text="<|image_1|>\nRepresent the given image.", image=red),
        EmbedInput(text="a woman reads a book"),
    ]
    return [queries, positives, negatives]


def _uniform_columns(images) -> list[list[EmbedInput]]:
    """Every query with an image, every positive a text: one modality per column."""
    queries = [EmbedInput(text=MMEB_IMAGE + f"question {i}?", image=images[i % 3]) for i in range(6)]
    positives = [EmbedInput(text=word) for word in ("red", "blue", "three", "seven", "left", "a guitar")]
    return [queries, positives]


def _model(folder, lora_dropout: float = 0.0):
    """The tiny model in joint mode with LoRA on every linear layer (as stage 2); the LoRA B matrices are made non-zero
    (peft starts them at zero, which would leave every A matrix without gradient)."""
    model = build_model(str(folder))
    model.set_mode("joint")
    torch.manual_seed(0)
    apply_tuning(model, "lora", "all", lora_r=4, lora_alpha=8, lora_dropout=lora_dropout, target_regex="all-linear")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    # float64: cached and uncached agree to ~1e-8 (Qwen2-VL keeps some rotary maths in float32),
    # so near-tied negatives do not swap places.
    model.to(torch.float64)
    model.train()
    return model


def _preprocess(model, column: list[EmbedInput]) -> dict:
    features = model.preprocess(column)
    if "pixel_values" in features:
        features["pixel_values"] = features["pixel_values"].to(torch.float64)
    return features


def _loss(model, mini_batch_size: int | None) -> HardNegativeInfoNCELoss:
    return HardNegativeInfoNCELoss(model, temperature=0.05, num_hard_negatives=3, false_negative_margin=0.01,
                                   mini_batch_size=mini_batch_size)


def _step(model, loss_fn, features) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn([dict(f) for f in features], None)
    loss.backward()
    # LLaVA-OneVision's SigLIP pooling head is adapted by "all-linear" but unused: no gradient.
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), loss_fn.last_mining.indices.clone(), grads


def _assert_same_gradients(cached: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert cached.keys() == reference.keys() and len(reference) > 20
    scale = max(float(g.abs().max()) for g in reference.values())
    assert scale > 0
    for name, grad in reference.items():
        # atol relative to the largest gradient: some gradients are zero in exact arithmetic (a key
        # bias shifts every score of a softmax equally) and only rounding noise in practice.
        torch.testing.assert_close(cached[name], grad, rtol=1e-5, atol=1e-7 * scale,
                                   msg=lambda message, name=name: f"{name}: {message}")


# LLaVA-OneVision included: its processor lists batch_num_images only for rows with images, which the
# input module rewrites to one entry per row so that the engine slices it correctly.
@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next", "llava_onevision"])
def test_cached_gradients_equal_uncached_with_mixed_image_and_text_rows(family, tiny_model_factory, images):
    model = _model(tiny_model_factory(family))
    assert "image" in model.modalities
    features = [_preprocess(model, column) for column in _mixed_columns(images)]
    assert features[0]["num_images_per_sample"].tolist() == [1, 0, 1, 1, 0, 0]
    assert features[1]["num_images_per_sample"].tolist() == [0, 1, 0, 0, 1, 1]
    loss_ref, mined_ref, grads_ref = _step(model, _loss(model, None), features)
    # Mini-batches of 4 rows: an uneven last chunk, a text-only and an image-only one.
    loss_cached, mined_cached, grads_cached = _step(model, _loss(model, 4), features)
    assert loss_cached == pytest.approx(loss_ref, rel=1e-8)
    assert torch.equal(mined_cached, mined_ref)
    _assert_same_gradients(grads_cached, grads_ref)


def test_cached_gradients_equal_uncached_on_llava_onevision_with_uniform_columns(tiny_model_factory, images):
    model = _model(tiny_model_factory("llava_onevision"))
    columns = _uniform_columns(images)
    for order in (columns, columns[::-1]):  # image queries -> text, then text queries -> image
        features = [_preprocess(model, column) for column in order]
        loss_ref, mined_ref, grads_ref = _step(model, _loss(model, None), features)
        loss_cached, mined_cached, grads_cached = _step(model, _loss(model, 4), features)
        assert loss_cached == pytest.approx(loss_ref, rel=1e-8)
        assert torch.equal(mined_cached, mined_ref)
        _assert_same_gradients(grads_cached, grads_ref)


def test_dropout_masks_are_replayed_in_the_second_forward(tiny_model_factory, images):
    """With LoRA dropout active, the cached gradient equals the exact gradient of the embeddings drawn
    in GradCache's first (no-grad) pass: the reference embeds the same mini-batches in the same order
    with gradient, so it draws the same masks; a second pass with fresh masks would not match."""
    from sentence_transformers.base.losses.gradcache import _create_minibatch

    model = _model(tiny_model_factory("qwen2_vl"), lora_dropout=0.3)
    features = [_preprocess(model, column) for column in _mixed_columns(images)]
    chunk = 4

    torch.manual_seed(123)
    model.zero_grad(set_to_none=True)
    reference = _loss(model, None)
    embeddings = [torch.cat([model(_create_minibatch(dict(f), begin, begin + chunk))["sentence_embedding"]
                             for begin in range(0, 6, chunk)]) for f in features]
    reference.compute(embeddings).backward()
    grads_ref = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    torch.manual_seed(123)
    _, _, grads_cached = _step(model, _loss(model, chunk), features)
    _assert_same_gradients(grads_cached, grads_ref)

    # The masks matter: a different draw gives a different gradient.
    torch.manual_seed(7)
    _, _, grads_other = _step(model, _loss(model, chunk), features)
    assert any(not torch.allclose(grads_other[n], g, rtol=1e-3) for n, g in grads_ref.items() if "lora" in n)
