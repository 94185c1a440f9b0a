"""The fast_vlm family on a tiny random FastVLM (thin MobileNetV2 tower, Llama LLM): prompts, module
layout, image tokens, a forward written from the parts, saving. Encoding, the reference forward and
padding sides are also pinned down for every family in test_modeling.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import unime
from unime.backbones import get_backbone
from unime.models.default import SMOL_IMAGE_PROMPT, SMOL_JOINT_PROMPT, SMOL_TEXT_PROMPT
from unime.models.tiny import make_tiny

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def tiny(tiny_model_factory, one_thread):
    return tiny_model_factory("fast_vlm")


def test_prompts_are_rendered_by_the_processor_chat_template(tiny):
    # The layout of transformers' FastVLM conversions of Apple's checkpoints: default system turn,
    # the image first, each text after a newline.
    config = unime.load(str(tiny)).unime_config
    assert config.family == "fast_vlm" and config.padding_side == "left" and config.mode == "sum"
    assert config.image_prompt == (
        f"{SYSTEM}<|im_start|>user\n<image>\nSummary above image in one word:<|im_end|>\n<|im_start|>assistant\n"
    )
    assert config.text_prompt == (
        f"{SYSTEM}<|im_start|>user\n\n<sent>\nSummary above sentence in one word:<|im_end|>\n<|im_start|>assistant\n"
    )
    assert config.joint_prompt == f"{SYSTEM}<|im_start|>user\n\n<content><|im_end|>\n<|im_start|>assistant\n"


def test_without_an_image_capable_template_prompts_are_plain_chatml_with_no_system_turn():
    backbone = get_backbone("fast_vlm")
    expected = (SMOL_TEXT_PROMPT, SMOL_IMAGE_PROMPT, SMOL_JOINT_PROMPT)
    config = backbone.default_config(None)
    assert (config.text_prompt, config.image_prompt, config.joint_prompt) == expected

    # A text-only LLM template (string contents), as a processor assembled around an LLM inherits.
    def text_only(messages, **kwargs):
        return "<|im_start|>user\n" + messages[0]["content"] + "<|im_end|>\n"

    processor = SimpleNamespace(chat_template="{{ messages }}", apply_chat_template=text_only)
    config = backbone.default_config(processor)
    assert (config.text_prompt, config.image_prompt, config.joint_prompt) == expected


def test_module_paths_and_lora_targets_fit_the_fastvlm_layout(tiny):
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText

    backbone = get_backbone("fast_vlm")
    model = unime.load(str(tiny))
    inner = model[0].model
    names = dict(inner.named_modules())
    for path in (backbone.llm_module, *backbone.vision_modules):
        assert path in names, path
    assert type(names["vision_tower"]).__name__ == "MobileNetV2Model"
    # The same paths, under "model.", in the generation class.
    generation = dict(AutoModelForImageTextToText.from_pretrained(tiny).named_modules())
    assert {"model.language_model", "model.vision_tower", "model.multi_modal_projector"} <= set(generation)

    inner.add_adapter(LoraConfig(r=2, target_modules=backbone.lora_target_regex(llm_only=True)))
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in inner.named_parameters() if ".lora_A" in name}
    assert adapted and all(name.startswith("language_model.layers.") for name in adapted)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                            "gate_proj", "up_proj", "down_proj"}


def test_an_image_is_its_feature_map_flattened_into_one_token_per_cell(tiny, images):
    model = unime.load(str(tiny))
    features = model[0].preprocess([images[0]])
    image_id = model[0].processor.tokenizer.convert_tokens_to_ids("<image>")
    assert features["pixel_values"].shape[-2:] == (64, 64)
    with torch.no_grad():
        grid = model[0].model.vision_tower(features["pixel_values"]).last_hidden_state
    assert grid.shape[-2:] == (2, 2)
    assert int((features["input_ids"] == image_id).sum()) == 4 == grid.shape[-1] * grid.shape[-2]


def test_embedding_equals_a_forward_written_from_the_parts(tiny, images):
    """Vision tower -> row-major flattening -> projector -> image token positions -> LLM -> last
    position, L2-normalised: FastVLM's forward, rebuilt by hand from its three modules."""
    model = unime.load(str(tiny), mode="joint")
    parts = model[0].model
    prompts = [model.unime_config.image_prompt,
               model.unime_config.joint_prompt.replace("<content>", "<image>\nwhat colour is it?")]
    got = model.encode([images[0], {"text": "<|image_1|>\nwhat colour is it?", "image": images[1]}], batch_size=2)
    processor = model[0].processor
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    rows = []
    for prompt, image in zip(prompts, images[:2], strict=True):
        batch = processor(text=[prompt], images=[image], return_tensors="pt")
        with torch.no_grad():
            grid = parts.vision_tower(batch["pixel_values"]).last_hidden_state  # 1 x C x H x W
            tokens = parts.multi_modal_projector(grid.flatten(2).transpose(1, 2))[0]
            embeds = parts.language_model.get_input_embeddings()(batch["input_ids"]).clone()
            embeds[0, batch["input_ids"][0] == image_id] = tokens
            hidden = parts.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
        rows.append(torch.nn.functional.normalize(hidden[0, -1], dim=-1))
    np.testing.assert_allclose(got, torch.stack(rows).numpy(), atol=1e-5)


def test_save_and_reload_give_identical_embeddings_and_keep_settings(tiny, images, tmp_path):
    model = unime.load(str(tiny))
    inputs = ["hello there", images[0], {"text": "a blue square", "image": images[2]}]
    before = model.encode(inputs)
    model.save(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "sentence_bert_config.json").read_text())["unime"]
    assert saved["family"] == "fast_vlm" and saved["image_prompt"] == model.unime_config.image_prompt
    reloaded = unime.load(str(tmp_path / "saved"))
    assert type(reloaded[0].processor).__name__ == "LlavaProcessor"
    np.testing.assert_allclose(reloaded.encode(inputs), before, atol=0)


def test_make_tiny_cli_builds_fast_vlm_and_refuses_sizes_the_tower_cannot_take(tmp_path, capsys):
    from unime.cli import main

    assert main(["make-tiny", "--family", "fast_vlm", "--out", str(tmp_path / "m"), "--image-size", "96"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "fast_vlm" and config["image_seq_length"] == 9
    assert config["vision_config"]["model_type"] == "mobilenet_v2"
    with pytest.raises(ValueError, match=r"--image-size\) 48: .*multiple of 32"):
        make_tiny("fast_vlm", tmp_path / "bad", image_size=48)
    assert main(["make-tiny", "--family", "fast_vlm", "--out", str(tmp_path / "bad"), "--image-size", "16"]) == 2
    assert "--image-size" in capsys.readouterr().err


def test_frozen_batchnorm_layers_keep_their_statistics_in_train_mode(tiny, images):
    model = unime.load(str(tiny))
    tower = model[0].model.vision_tower
    norms = [m for m in tower.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    expected = model.encode(images[:2])
    tower.requires_grad_(False)  # as stage-1 / scope "llm" tuning freezes the vision side
    model.train()
    assert model[0].model.language_model.training and not any(norm.training for norm in norms)
    statistics = [norm.running_mean.clone() for norm in norms]
    with torch.no_grad():
        got = model(model.preprocess(images[:2]))["sentence_embedding"]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    assert all(torch.equal(norm.running_mean, before) for norm, before in zip(norms, statistics, strict=True))
    tower.requires_grad_(True)  # a tower trained in full normalises as usual
    model.train()
    assert all(norm.training for norm in norms)
