"""The VLM2Vec v1 MMEB protocol and Phi-3.5-V batching: what reaches each backbone's processor.

The expected values are written from the protocol as docs/evaluation.md, "MMEB", states it (what
VLM2Vec v1 ``eval.py`` feeds), independently of unime's code: the row's text with ``<|image_1|>``
replaced by the backbone's token, the image as opened and resized by ``process_image``, and the
processor arguments of one sample processed alone.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from eval_fixtures import write_mmeb_dataset
from PIL import Image
from transformers import BatchFeature

import unime
from unime.backbones import get_backbone
from unime.evaluation.mmeb import MMEBProtocol, evaluate_mmeb, load_mmeb_dataset
from unime.formats import PROMPTED, ImageResize, InputFormat, vlm2vec_format
from unime.processors import pad_samples

# ------------------------------------------------------ VLM2Vec, from docs/evaluation.md, "MMEB"

VLM2VEC_TOKEN = {"phi3_v": "<|image_1|>", "llava_next": "<image>", "qwen2_vl": "<|image_pad|>",
                 "qwen2_5_vl": "<|image_pad|>"}
README_MAX_LEN = {"phi3_v": 256, "llava_next": 4096}  # UniME's README commands; none for Qwen2-VL


def vlm2vec_text(family: str, text: str) -> str:
    return text if family == "phi3_v" else text.replace("<|image_1|>", VLM2VEC_TOKEN[family])


def vlm2vec_image(family: str, path: str, resolution: str) -> Image.Image:
    image = Image.open(path)  # as opened: no RGB conversion before the resize
    if family == "phi3_v":
        return image
    sides = {"high": 1344, "mid": 672, "low": 128}
    if resolution in sides:
        return image.resize((sides[resolution], sides[resolution]))
    return image.resize((1344, 1344)) if max(image.size) > 1344 else image


def vlm2vec_call(family: str, text: str, image_path: str, resolution: str) -> dict:
    """``processor(text=..., images=[image] or None, max_length=max_len, truncation=True)`` of one sample."""
    call = {"text": vlm2vec_text(family, text), "images": [vlm2vec_image(family, image_path, resolution)]
            if image_path else None}
    if family in README_MAX_LEN:
        call.update(max_length=README_MAX_LEN[family], truncation=True)
    # No pixel bounds: eval.py's processor is AutoProcessor.from_pretrained(model) with the folder's own.
    return call


# --------------------------------------------------------------------------- a Phi-3.5-V processor stand-in


class Phi3VStandIn:
    """The contract of Phi-3.5-V's remote-code ``Phi3VProcessor``: ONE prompt string per call; its
    ``<|image_N|>`` tags number that prompt's images from 1 (asserted, as the real one does); each tag
    becomes ``num_img_tokens`` ids of value -N; pixel_values [images, num_crops + 1, 3, H, W] and
    image_sizes [images, 2]; the text-only path is the tokenizer's. Records every call."""

    pattern = r"<\|image_\d+\|>"

    def __init__(self, tokenizer, num_img_tokens: int = 3, num_crops: int = 16) -> None:
        self.tokenizer = tokenizer
        self.image_processor = SimpleNamespace(num_crops=num_crops)
        self.num_img_tokens = num_img_tokens
        self.calls: list[dict] = []

    def __call__(self, text, images=None, padding=False, truncation=None, max_length=None, return_tensors="pt"):
        self.calls.append({"text": text, "images": images, "max_length": max_length, "truncation": truncation,
                           "num_crops": self.image_processor.num_crops})
        if not images:
            return BatchFeature(dict(self.tokenizer(text, padding=padding, truncation=truncation,
                                                    max_length=max_length, return_tensors=return_tensors)))
        chunks = [self.tokenizer(chunk).input_ids for chunk in re.split(self.pattern, text)]  # a list: TypeError
        tags = [int(tag.split("|")[1].split("_")[-1]) for tag in re.findall(self.pattern, text)]
        unique = sorted(set(tags))
        assert unique == list(range(1, len(unique) + 1)), f"image_ids must start from 1, got {unique}"
        assert len(unique) == len(images), f"{len(unique)} image tags and {len(images)} images"
        ids = list(chunks[0])
        for tag, chunk in zip(tags, chunks[1:], strict=True):
            ids += [-tag] * self.num_img_tokens + list(chunk)
        crops = self.image_processor.num_crops + 1
        pixels = torch.stack([torch.tensor(np.asarray(image.convert("RGB").resize((4, 4))), dtype=torch.float32)
                              .permute(2, 0, 1)[None].expand(crops, 3, 4, 4) for image in images])
        sizes = torch.tensor([[image.size[1], image.size[0]] for image in images])
        input_ids = torch.tensor(ids)[None]
        return BatchFeature({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                             "pixel_values": pixels, "image_sizes": sizes})


@pytest.fixture
def phi3_model(tiny_model_factory):
    """A unime model whose input module carries the phi3_v adapter, its official prompts and the
    stand-in processor (the real Phi-3.5-V is hub remote code). Only preprocessing is exercised."""
    model = unime.load(str(tiny_model_factory("llava_next")))
    module = model[0]
    backbone = get_backbone("phi3_v")
    module.backbone = backbone
    module.processor = Phi3VStandIn(module.tokenizer)
    module.unime_config = backbone.default_config(mode="joint")
    model.set_input_format(None)
    return model


# --------------------------------------------------------------------------- rows


@pytest.fixture
def mmeb_rows(tmp_path):
    """An MMEB dataset with an image query (RGB), a palette image (resampled differently before and
    after RGB conversion) and an image wider than 1344 px, text and image candidates."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image_dir / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).convert("P").save(image_dir / "palette.png")
    Image.fromarray(rng.integers(0, 255, (8, 1400, 3), dtype=np.uint8)).save(image_dir / "wide.png")
    rows = [
        {"qry_text": "<|image_1|>\nRepresent the given image with the following question: What is in the image?",
         "qry_img_path": "rgb.png", "tgt_text": ["tench", "goldfish"], "tgt_img_path": ["", ""]},
        {"qry_text": "Find me an everyday image that matches the given caption: a wide field.",
         "qry_img_path": "", "tgt_text": ["<|image_1|>\nRepresent the given image.", "<|image_1|>\nRepresent the "
                                          "given image."], "tgt_img_path": ["wide.png", "palette.png"]},
    ]
    folder = write_mmeb_dataset(tmp_path / "data", "Rows", rows)
    return load_mmeb_dataset(folder, image_dir), rows, image_dir


def _pairs(rows, image_dir: Path) -> list[tuple[str, str]]:
    """(text, absolute image path or "") of every query and candidate, in data order."""
    pairs = []
    for row in rows:
        pairs.append((row["qry_text"], str(image_dir / row["qry_img_path"]) if row["qry_img_path"] else ""))
        pairs += [(t, str(image_dir / p) if p else "") for t, p in zip(row["tgt_text"], row["tgt_img_path"],
                                                                       strict=True)]
    return pairs


def _inputs(dataset) -> list:
    return [dataset.queries[0], *[dataset.pool[i] for i in dataset.targets[0]],
            dataset.queries[1], *[dataset.pool[i] for i in dataset.targets[1]]]


def _assert_calls_equal(ours: list[dict], expected: list[dict]) -> None:
    assert len(ours) == len(expected)
    for got, want in zip(ours, expected, strict=True):
        want = dict(want)
        want_images = want.pop("images")
        got = dict(got)
        got_images = got.pop("images", None)
        assert got == want  # the text string for string, and every processor argument
        if want_images is None:
            assert got_images is None
        else:
            assert [image.size for image in got_images] == [image.size for image in want_images]
            for image, reference in zip(got_images, want_images, strict=True):
                # Processors convert to RGB themselves; unime hands them the RGB of the same pixels.
                np.testing.assert_array_equal(np.asarray(image), np.asarray(reference.convert("RGB")))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("resolution", ["high", "low", "none"])
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava_next"])
def test_vlm2vec_protocol_feeds_the_processor_what_vlm2vec_feeds(tiny_model_factory, mmeb_rows, family, resolution):
    dataset, rows, image_dir = mmeb_rows
    model = unime.load(str(tiny_model_factory(family)), mode="sum")
    protocol = MMEBProtocol("vlm2vec", image_resolution=resolution)
    with model.using_format(protocol.input_format(family)):
        ours = model[0].processor_calls(_inputs(dataset))
    expected = [vlm2vec_call(family, text, path, resolution) for text, path in _pairs(rows, image_dir)]
    _assert_calls_equal(ours, expected)
    assert model.input_format == PROMPTED  # restored
    assert "Summary above" not in "".join(call["text"] for call in ours)


def test_vlm2vec_protocol_for_phi3_v_keeps_the_tag_and_the_image_as_opened(phi3_model, mmeb_rows):
    dataset, rows, image_dir = mmeb_rows
    with phi3_model.using_format(MMEBProtocol("vlm2vec").input_format("phi3_v")):
        ours = phi3_model[0].processor_calls(_inputs(dataset))
        phi3_model[0].preprocess(_inputs(dataset))
    _assert_calls_equal(ours, [vlm2vec_call("phi3_v", text, path, "high") for text, path in _pairs(rows, image_dir)])
    # num_crops 4 while the protocol runs (VLM2Vec's --num_crops 4), the processor's own value after.
    calls = phi3_model[0].processor.calls
    assert {call["num_crops"] for call in calls} == {4} and phi3_model[0].processor.image_processor.num_crops == 16


def test_raw_batches_hold_the_same_token_ids_as_samples_processed_alone(tiny_model_factory, mmeb_rows):
    # VLM2Vec processes each sample alone and pads; unime calls the processor on the batch: same ids.
    dataset, rows, image_dir = mmeb_rows
    for family in ("qwen2_vl", "llava_next"):
        model = unime.load(str(tiny_model_factory(family)))
        processor = model[0].processor
        with model.using_format(vlm2vec_format(family, "low")):
            features = model[0].preprocess(_inputs(dataset))
            for row, (text, path) in enumerate(_pairs(rows, image_dir)):
                call = {k: v for k, v in vlm2vec_call(family, text, path, "low").items() if v is not None}
                alone = processor(**call, return_tensors="pt")["input_ids"][0]
                mask = features["attention_mask"][row].bool()
                assert torch.equal(features["input_ids"][row][mask], alone), (family, row)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next"])
def test_last_token_pooling_is_right_for_both_padding_sides(tiny_model_factory, mmeb_rows, family):
    dataset, _, _ = mmeb_rows
    model = unime.load(str(tiny_model_factory(family)))
    inputs = _inputs(dataset)
    base = vlm2vec_format(family, "low")
    embeddings = {}
    for side in ("left", "right"):
        with model.using_format(dataclasses.replace(base, padding_side=side)):
            assert model[0].tokenizer.padding_side == side
            embeddings[side] = model.encode(inputs, batch_size=len(inputs))
            alone = np.stack([model.encode([item], batch_size=1)[0] for item in inputs])
        np.testing.assert_allclose(embeddings[side], alone, atol=1e-5)
    np.testing.assert_allclose(embeddings["left"], embeddings["right"], atol=1e-5)
    assert model[0].tokenizer.padding_side == "left"


def test_pooling_module_reads_the_last_non_padding_token_on_either_side():
    from sentence_transformers.sentence_transformer.modules import Pooling

    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    pooling = Pooling(3, pooling_mode="lasttoken")
    left = pooling({"token_embeddings": tokens, "attention_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])})
    right = pooling({"token_embeddings": tokens, "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])})
    torch.testing.assert_close(left["sentence_embedding"], tokens[:, 3])
    torch.testing.assert_close(right["sentence_embedding"], torch.stack([tokens[0, 1], tokens[1, 2]]))


def test_vlm2vec_format_embeds_one_sequence_even_for_a_sum_mode_model(tiny_model_factory, images):
    model = unime.load(str(tiny_model_factory("qwen2_vl")), mode="sum")
    item = {"text": "<|image_1|>\nRepresent the given image with the following question: what?", "image": images[0]}
    with model.using_format(vlm2vec_format("qwen2_vl", "low")):
        joint = model.encode([item])
        prompt, loaded = model[0].render(unime.inputs.to_input(item))
    assert prompt == "<|image_pad|>\nRepresent the given image with the following question: what?"
    assert loaded[0].size == (128, 128)
    summed = model.encode([item])
    assert not np.allclose(joint, summed, atol=1e-3)


def test_phi3_v_samples_are_processed_one_at_a_time_and_left_padded(phi3_model, images):
    inputs = ["a short text", {"text": "<|image_1|>\nwhat is it?", "image": images[0]}, images[1],
              "a considerably longer sentence with many more tokens in it"]
    processor = phi3_model[0].processor
    with pytest.raises(TypeError):
        processor(text=["two", "prompts"], images=[images[0]])  # why the batch call cannot be used
    processor.calls.clear()
    features = phi3_model[0].preprocess(inputs)
    assert len(processor.calls) == 4 and all(isinstance(call["text"], str) for call in processor.calls)
    assert [len(call["images"] or []) for call in processor.calls] == [0, 1, 1, 0]
    assert processor.calls[2]["text"] == "<|user|>\n<|image_1|>\nSummary above image in one word:<|end|>\n<|assistant|>\n"
    calls = list(processor.calls)
    alone = [processor(**{k: v for k, v in call.items() if k in ("text", "images")}) for call in calls]
    mask = features["attention_mask"].bool()
    pad = phi3_model[0].tokenizer.pad_token_id
    for row, sample in enumerate(alone):
        length = sample["input_ids"].shape[1]
        assert torch.equal(features["input_ids"][row][mask[row]], sample["input_ids"][0])
        assert bool(mask[row, -length:].all()) and not bool(mask[row, : mask.shape[1] - length].any())  # left
        assert bool((features["input_ids"][row, : mask.shape[1] - length] == pad).all())
    # Image tensors: one entry per image, in row order; the engine slices them by num_images_per_sample.
    torch.testing.assert_close(features["pixel_values"], torch.cat([alone[1]["pixel_values"], alone[2]["pixel_values"]]))
    torch.testing.assert_close(features["image_sizes"], torch.cat([alone[1]["image_sizes"], alone[2]["image_sizes"]]))
    assert features["num_images_per_sample"].tolist() == [0, 1, 1, 0] and features["modality"] == "image"
    assert int((features["input_ids"] < 0).sum()) == 2 * processor.num_img_tokens


def test_phi3_v_in_the_vlm2vec_protocol_pads_right_and_truncates_text(phi3_model, images):
    inputs = ["word " * 400, {"text": "<|image_1|>\nRepresent the given image.", "image": images[0]}]
    with phi3_model.using_format(vlm2vec_format("phi3_v")):
        features = phi3_model[0].preprocess(inputs)
    mask = features["attention_mask"]
    assert mask.shape[1] <= 256 and bool(mask[:, 0].all())  # right padding: every row starts real
    assert {call["max_length"] for call in phi3_model[0].processor.calls} == {256}
    assert phi3_model[0].processor.calls[1]["text"] == "<|image_1|>\nRepresent the given image."


def test_pad_samples_pads_ids_and_masks_and_concatenates_the_rest():
    samples = [{"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
                "pixel_values": torch.zeros(1, 2)},
               {"input_ids": torch.tensor([[8]]), "attention_mask": torch.ones(1, 1, dtype=torch.long)}]
    left = pad_samples(samples, 0, "left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    right = pad_samples(samples, 0, "right")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]] and right["pixel_values"].shape == (1, 2)


def test_a_saved_image_size_is_not_applied_at_inference(tiny_model_copy, images, tmp_path):
    # A stage-2 model records its training size; embedding later uses the processor's own resizing
    # (a released checkpoint's behaviour) unless a format asks for a resize.
    model = unime.load(str(tiny_model_copy("llava_next")), mode="joint")
    model[0].unime_config.image_size = 16
    model.save(str(tmp_path / "saved"))
    reloaded = unime.load(str(tmp_path / "saved"))
    assert reloaded.unime_config.image_size == 16 and reloaded.input_format == PROMPTED
    _, loaded = reloaded[0].render(unime.inputs.to_input(images[0]))
    assert loaded[0].size == images[0].size
    with reloaded.using_format(InputFormat(image_resize=ImageResize(16))):
        _, resized = reloaded[0].render(unime.inputs.to_input(images[0]))
    assert resized[0].size == (16, 16)


@pytest.mark.parametrize("input_format", ["raw", "prompted"])
def test_stage2_feeds_mmeb_train_rows_in_the_format_they_are_evaluated_in(tiny_model_factory, tmp_path, input_format):
    from unime.training.mmeb_data import MMEBTrainCollator
    from unime.training.recipes import TuneRecipe
    from unime.training.tune import prepare_model

    path = tmp_path / "q.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path)
    question = "<|image_1|>\nRepresent the given image with the following question: what colour is it?"
    feature = {"query": {"text": question, "image": str(path)}, "positive": {"text": "red", "image": ""}, "row": "r0"}
    inputs = MMEBTrainCollator.inputs(feature)
    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    prepare_model(model, TuneRecipe(image_size=32, input_format=input_format))
    calls = model[0].processor_calls([inputs["query"], inputs["positive"]])
    assert calls[0]["images"][0].size == (32, 32)  # the recipe's training size
    if input_format == "raw":
        # The MMEB evaluation's VLM2Vec protocol renders the same row to the same strings.
        with model.using_format(vlm2vec_format("qwen2_vl")):
            evaluated = model[0].processor_calls([{"text": question, "image": str(path)}, "red"])
        assert [c["text"] for c in calls] == [c["text"] for c in evaluated] == [
            "<|image_pad|>\nRepresent the given image with the following question: what colour is it?", "red"]
    else:
        # The model's prompts (the unime protocol): the joint prompt, a text alone in the summary prompt.
        config = model.unime_config
        assert calls[0]["text"] == config.joint_prompt.replace("<content>", question.replace(
            "<|image_1|>", "<|vision_start|><|image_pad|><|vision_end|>"))
        assert calls[1]["text"] == config.text_prompt.replace("<sent>", "red")
    assert TuneRecipe().input_format == "raw" and TuneRecipe.field_choices("input_format") == ("raw", "prompted")


# --------------------------------------------------------------------------- numerics of VLM2Vec v1 itself
# Found by running VLM2Vec v1's eval.py beside unime on the same tiny Qwen2-VL and rows
# (benchmarks/mmeb_parity.py, docs/evaluation.md "Parity with VLM2Vec v1").


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_vlm2vec_qwen_image_tokens_take_sequential_text_positions(tiny_model_factory, images, family):
    # VLM2Vec's copy of Qwen2-VL starts an image's 2-D positions at <|vision_start|>, which its raw
    # inputs never hold: every token, image tokens included, is numbered like text, 0, 1, 2, ...
    model = unime.load(str(tiny_model_factory(family)))
    item = {"text": "<|image_1|> Represent the given image for classification\n", "image": images[0]}
    with model.using_format(vlm2vec_format(family, "low")):
        features = model[0].preprocess([item, "a short text"])
        ours = model.encode([item, "a short text"], batch_size=2)
    assert not features["mm_token_type_ids"].any()
    hf = model[0].model
    batch = {k: v for k, v in features.items() if torch.is_tensor(v) and k not in ("num_images_per_sample",)}
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = hf(**batch, position_ids=positions.unsqueeze(0).expand(3, -1, -1),
                    output_hidden_states=True).hidden_states[-1]
    rows = torch.arange(2)
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    expected = torch.nn.functional.normalize(hidden[rows, last].float(), dim=-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # The model's own M-RoPE gives another embedding for the image row: the choice is visible.
    with model.using_format(dataclasses.replace(vlm2vec_format(family, "low"), sequential_positions=False)):
        mrope = model.encode([item], batch_size=1)
    assert np.abs(mrope[0] - ours[0]).max() > 1e-4


def test_vlm2vec_protocol_rounds_the_buffers_as_model_to_bfloat16_does(tiny_model_factory, images):
    import copy

    from unime.evaluation.mmeb import MMEBProtocol, using_protocol

    model = unime.load(str(tiny_model_factory("qwen2_vl")), dtype="bfloat16")
    inv_freq = [b for n, b in model.named_buffers() if n.endswith("inv_freq")]
    assert inv_freq and all(b.dtype == torch.float32 for b in inv_freq)  # as transformers loads it
    inputs = ["a dog", "two cats on a mat"]  # text rows: the vision rotary is the next test's
    cast = copy.deepcopy(model).to(torch.bfloat16)  # what VLM2Vec's eval.py does to its model
    with cast.using_format(vlm2vec_format("qwen2_vl", "low")):
        expected = cast.encode(inputs, batch_size=1)
    with using_protocol(model, MMEBProtocol("vlm2vec", image_resolution="low")):
        assert all(b.dtype == torch.bfloat16 for n, b in model.named_buffers() if n.endswith("inv_freq"))
        ours = model.encode(inputs, batch_size=1)
    np.testing.assert_array_equal(ours, expected)
    assert all(b.dtype == torch.float32 for n, b in model.named_buffers() if n.endswith("inv_freq"))
    with model.using_format(vlm2vec_format("qwen2_vl", "low")):
        unrounded = model.encode(inputs, batch_size=1)
    assert np.abs(unrounded - ours).max() > 0  # the rounding is visible in bf16


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_vlm2vec_protocol_forms_the_vision_rotary_angles_in_bfloat16_as_vlm2vecs_tower(tiny_model_factory, images,
                                                                                      family):
    """VLM2Vec's vendored tower, once cast to bf16: ``torch.outer(arange(n, bf16), inv_freq_bf16)``,
    indexed by each patch's (row, column), then cos / sin in bf16. transformers multiplies in float32."""
    from unime.evaluation.mmeb import MMEBProtocol, using_protocol

    model = unime.load(str(tiny_model_factory(family)), dtype="bfloat16")
    rotary = next(m for m in model.modules() if type(m).__name__.endswith("VisionRotaryEmbedding"))
    rows, columns = torch.meshgrid(torch.arange(300), torch.arange(7), indexing="ij")
    positions = torch.stack([rows.flatten(), columns.flatten()], dim=-1)  # beyond 256: bf16 rounds positions too
    x = torch.zeros(1, dtype=torch.bfloat16)
    table = torch.outer(torch.arange(300, dtype=torch.bfloat16), rotary.inv_freq.to(torch.bfloat16))
    angles = table[positions].flatten(1)
    expected_cos = angles.cos().repeat(1, 2).float()
    expected_sin = angles.sin().repeat(1, 2).float()
    before = rotary(x, positions)
    with using_protocol(model, MMEBProtocol("vlm2vec", image_resolution="low")):
        cos, sin = rotary(x, positions)
        assert torch.equal(cos.float(), expected_cos) and torch.equal(sin.float(), expected_sin)
        with model.using_format(vlm2vec_format(family, "low")):
            model.encode([{"text": "<|image_1|> Represent the given image\n", "image": images[0]}], batch_size=1)
    after = rotary(x, positions)  # transformers' own forward again
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not torch.equal(before[0].float(), expected_cos)  # float32 angles differ from the rounded ones


def test_vlm2vec_protocol_pads_on_the_side_the_folders_tokenizer_loads_with(tiny_model_copy):
    folder = tiny_model_copy("qwen2_vl")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for side in ("left", "right"):
        config_path.write_text(json.dumps({**config, "padding_side": side}))
        model = unime.load(str(folder))
        saved = model[0].unime_config.padding_side
        with model.using_format(vlm2vec_format("qwen2_vl")):
            assert model[0].tokenizer.padding_side == side
            ids = model[0].preprocess(["a", "a much longer text"])["attention_mask"]
        assert bool(ids[0, -1] == (side == "left"))
        assert model[0].tokenizer.padding_side == saved  # the model's own side afterwards


def test_vlm2vec_format_keeps_the_folders_processor_settings():
    for family in ("qwen2_vl", "qwen2_5_vl", "llava_next", "phi3_v"):
        fmt = vlm2vec_format(family)
        assert dict(fmt.processor_kwargs) == {}  # no min_pixels / max_pixels: eval.py never sets them
        assert fmt.padding_side == "tokenizer"
        assert fmt.sequential_positions == family.startswith("qwen")


def test_vlm2vec_protocol_reads_image_files_as_stored_without_exif_turning(tiny_model_factory, tmp_path):
    # VLM2Vec opens files with Image.open: an EXIF orientation tag is not applied. unime's own
    # rendering turns the image as a viewer shows it.
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (60, 20), (200, 30, 30)).save(path, exif=exif)
    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    item = unime.inputs.to_input({"image": str(path)})
    assert model[0].render(item)[1][0].size == (20, 60)
    with model.using_format(dataclasses.replace(vlm2vec_format("qwen2_vl", "none"))):
        assert model[0].render(item)[1][0].size == (60, 20)
    assert vlm2vec_format("llava_next").exif_orientation is False and PROMPTED.exif_orientation is True


def test_image_processor_settings_hold_until_the_last_overlapping_block_leaves():
    from unime.processors import image_processor_settings

    processor = SimpleNamespace(image_processor=SimpleNamespace(num_crops=16))
    first = image_processor_settings(processor, {"num_crops": 4})
    second = image_processor_settings(processor, {"num_crops": 4})
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # another thread is still inside: the value stays
    assert processor.image_processor.num_crops == 4
    with pytest.raises(RuntimeError, match="in use"):
        with image_processor_settings(processor, {"num_crops": 8}):
            pass
    second.__exit__(None, None, None)
    assert processor.image_processor.num_crops == 16


def test_preprocessing_threads_give_the_embeddings_of_one_thread(tiny_model_factory, images, monkeypatch, tmp_path):
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    inputs = [f"caption number {i} " * (i % 5 + 1) for i in range(13)]
    inputs += [{"text": "<|image_1|> Represent the given image\n", "image": p} for p in paths * 3]
    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    results = {}
    for workers in ("1", "3"):
        monkeypatch.setenv("UNIME_PREPROCESS_WORKERS", workers)
        with model.using_format(vlm2vec_format("qwen2_vl", "low")):
            results[workers] = model.encode(inputs, batch_size=2)
    np.testing.assert_array_equal(results["1"], results["3"])
    monkeypatch.setenv("UNIME_PREPROCESS_WORKERS", "zero")
    with pytest.raises(ValueError, match="UNIME_PREPROCESS_WORKERS"):
        model.encode(inputs[:2])


def test_vlm2vec_protocol_refuses_qwen3_vl_which_vlm2vec_never_supported(tiny_model_factory, mmeb_rows):
    dataset = mmeb_rows[0]
    for family in ("qwen3_vl", "qwen3_vl_moe"):
        with pytest.raises(ValueError, match=rf"VLM2Vec v1 never supported Qwen3-VL \({family}\).*--protocol unime"):
            vlm2vec_format(family)
    with pytest.raises(ValueError, match="cannot embed a qwen3_vl model"):
        MMEBProtocol("vlm2vec").input_format("qwen3_vl")
    assert MMEBProtocol("unime").input_format("qwen3_vl") is PROMPTED
    model = unime.load(str(tiny_model_factory("qwen3_vl")))
    with pytest.raises(ValueError, match="VLM2Vec v1 never supported Qwen3-VL"):
        evaluate_mmeb(model, [dataset], protocol=MMEBProtocol("vlm2vec"))
    assert model.input_format is PROMPTED  # refused before anything changed
    metrics = evaluate_mmeb(model, [dataset], protocol=MMEBProtocol("unime"))
    assert 0.0 <= metrics["mmeb/Rows/precision@1"] <= 100.0
