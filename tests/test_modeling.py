"""The UniME embedding model: prompts, pooling, padding, modes, saving, adapters, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor

import unime
from unime.backbones import families, get_backbone
from unime.inputs import EmbedInput
from unime.models.tiny import TINY_FAMILIES

OFFICIAL = {
    "phi3_v": (
        "<|user|>\n<|image_1|>\nSummary above image in one word:<|end|>\n<|assistant|>\n",
        "<|user|>\n<sent>\nSummary above sentence in one word:<|end|>\n<|assistant|>\n",
    ),
    "llava_next": (
        "[INST] <image>\nSummary above image in one word: [/INST]",
        "[INST] <sent>\nSummary above sentence in one word: [/INST]",
    ),
}


@pytest.mark.parametrize("family", sorted(OFFICIAL))
def test_official_prompt_strings_are_rendered_exactly(family):
    config = get_backbone(family).default_config()
    assert (config.image_prompt, config.text_prompt) == OFFICIAL[family]
    assert config.padding_side == "left"


# The official bodies as typed chat content: the image as an image item, the text after it.
ONEVISION_TURNS = {
    "text_prompt": [{"type": "text", "text": "<sent>\nSummary above sentence in one word:"}],
    "image_prompt": [{"type": "image"}, {"type": "text", "text": "Summary above image in one word:"}],
}


def test_llava_onevision_prompts_are_the_processor_chat_template_string_for_string(tiny_model_factory):
    model = unime.load(str(tiny_model_factory("llava_onevision")))
    processor = model[0].processor
    assert processor.chat_template  # the tiny model carries a template in the released layout
    for key, content in ONEVISION_TURNS.items():
        expected = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        assert getattr(model.unime_config, key) == expected
    assert model.unime_config.image_prompt == (
        "<|im_start|>user <image>\nSummary above image in one word:<|im_end|>\n<|im_start|>assistant\n"
    )
    # A processor saved without a template: the hand-written rendition gives the same strings.
    fallback = get_backbone("llava_onevision").default_config(None)
    for key in ("text_prompt", "image_prompt", "joint_prompt"):
        assert getattr(fallback, key) == getattr(model.unime_config, key)


def test_every_required_family_has_an_adapter():
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_next", "llava_onevision", "llava", "phi3_v"} <= set(families())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_encode_text_image_and_both_gives_unit_float32_rows(tiny_model_factory, images, family):
    model = unime.load(str(tiny_model_factory(family)))
    assert "image" in model[0].modalities and "text" in model[0].modalities
    inputs = [
        "a red circle",
        images[0],
        {"text": "<|image_1|>\nRepresent the given image with the following question: what is it?", "image": images[1]},
        {"text": "a blue square", "image": images[2], "instruction": "Find the matching image"},
    ]
    for mode in ("sum", "joint"):
        model.set_mode(mode)
        embeddings = model.encode(inputs, batch_size=3)
        assert embeddings.dtype == np.float32 and embeddings.shape == (4, model.get_embedding_dimension())
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def _reference_embeddings(folder, prompts, images):
    """A hand-written HF forward: left padding, last position of the last hidden state, L2 norm."""
    processor = AutoProcessor.from_pretrained(folder)
    if not hasattr(processor, "image_processor"):
        from unime import processors

        classes = {
            "qwen2_vl": processors.ImageOnlyQwen2VLProcessor,
            "qwen2_5_vl": processors.ImageOnlyQwen2_5_VLProcessor,
            "qwen3_vl": processors.ImageOnlyQwen3VLProcessor,
            "qwen3_vl_moe": processors.ImageOnlyQwen3VLProcessor,
            "llava_onevision": processors.ImageOnlyLlavaOnevisionProcessor,
        }
        model_type = json.loads((folder / "config.json").read_text())["model_type"]
        processor = classes[model_type].from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    model = AutoModel.from_pretrained(folder).eval()
    rows = []
    for prompt, image in zip(prompts, images, strict=True):
        kwargs = {"text": [prompt], "return_tensors": "pt"}
        if image is not None:
            kwargs["images"] = [image]
        with torch.no_grad():
            hidden = model(**processor(**kwargs)).last_hidden_state
        rows.append(torch.nn.functional.normalize(hidden[:, -1, :], dim=-1)[0])
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_embeddings_equal_a_hand_written_forward_with_last_token_pooling(tiny_model_factory, images, family):
    folder = tiny_model_factory(family)
    model = unime.load(str(folder), mode="joint")
    config = model.unime_config
    token = model.backbone.image_token
    texts = ["a dog", "two people are playing football in the park"]
    prompts = [config.text_prompt.replace("<sent>", t) for t in texts]
    prompts += [config.image_prompt, config.joint_prompt.replace("<content>", f"{token}\nwhat colour?")]
    expected = _reference_embeddings(folder, prompts, [None, None, images[0], images[1]])
    got = model.encode(texts + [images[0], {"text": "<|image_1|>\nwhat colour?", "image": images[1]}], batch_size=4)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_model_loaded_in_bf16_embeds_images_close_to_fp32(tiny_model_factory, images, family):
    # The processors return float32 pixels; a bf16 model must take them (FastVLM does not cast itself).
    folder = str(tiny_model_factory(family))
    inputs = ["a dog", images[0], {"text": "what colour?", "image": images[1]}]
    full = unime.load(folder).encode(inputs, batch_size=3)
    half = unime.load(folder, dtype="bfloat16").encode(inputs, batch_size=3)
    assert half.dtype == np.float32
    assert (full * half).sum(axis=1).min() > 0.98


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_left_and_right_padding_give_the_same_embedding(tiny_model_factory, images, family):
    model = unime.load(str(tiny_model_factory(family)))
    inputs = ["short", "a considerably longer sentence that needs many more tokens", images[0]]
    left = model.encode(inputs, batch_size=3)
    model[0].unime_config.padding_side = "right"
    model[0].tokenizer.padding_side = "right"
    right = model.encode(inputs, batch_size=3)
    alone = np.stack([model.encode([x], batch_size=1)[0] for x in inputs])
    np.testing.assert_allclose(left, right, atol=1e-5)
    np.testing.assert_allclose(left, alone, atol=1e-5)


def test_sum_mode_is_the_normalised_sum_of_the_parts(tiny_model_factory, images):
    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    assert model.unime_config.mode == "sum"
    text, image = model.encode(["a cat on a mat", images[0]])
    both = model.encode({"text": "a cat on a mat", "image": images[0]})
    expected = (text + image) / np.linalg.norm(text + image)
    np.testing.assert_allclose(both, expected, atol=1e-6)


def test_mmeb_placeholder_becomes_the_backbone_image_token(tiny_model_factory, images):
    model = unime.load(str(tiny_model_factory("llava_next")), mode="joint")
    from unime.inputs import EmbedInput

    prompt, loaded = model[0].render(EmbedInput(text="<|image_1|>\nRepresent the given image.", image=images[0]))
    assert prompt == "[INST] <image>\nRepresent the given image. [/INST]"
    assert len(loaded) == 1


def test_save_and_reload_give_identical_embeddings_and_keep_settings(tiny_model_factory, images, tmp_path):
    model = unime.load(str(tiny_model_factory("llava_onevision")), mode="joint")
    inputs = ["hello", images[0], {"text": "what?", "image": images[1]}]
    before = model.encode(inputs)
    model.save(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "sentence_bert_config.json").read_text())["unime"]
    assert saved["family"] == "llava_onevision" and saved["mode"] == "joint"
    assert saved["padding_side"] == "left" and saved["pooling"] == "lasttoken"
    assert saved["unime_version"] == unime.__version__
    assert "<image>" in saved["image_prompt"]
    after = unime.load(str(tmp_path / "saved")).encode(inputs)
    np.testing.assert_allclose(before, after, atol=0)


def test_unknown_keys_from_a_newer_version_are_tolerated_and_kept(tiny_model_factory, tmp_path):
    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    model.save(str(tmp_path / "saved"))
    config_file = tmp_path / "saved" / "sentence_bert_config.json"
    config = json.loads(config_file.read_text())
    config["unime"]["future_setting"] = [64, 32]
    config_file.write_text(json.dumps(config))
    reloaded = unime.load(str(tmp_path / "saved"))
    assert reloaded.unime_config.extra == {"future_setting": [64, 32]}
    reloaded.save(str(tmp_path / "again"))
    again = json.loads((tmp_path / "again" / "sentence_bert_config.json").read_text())["unime"]
    assert again["future_setting"] == [64, 32]


def test_lora_adapter_saves_and_loads_identically(tiny_model_factory, images, tmp_path):
    from peft import LoraConfig

    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    regex = model.backbone.lora_target_regex(llm_only=True)
    model[0].model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=regex))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model[0].model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    inputs = ["an adapter changes this", images[0]]
    before = model.encode(inputs)
    base = unime.load(str(tiny_model_factory("qwen2_vl"))).encode(inputs)
    assert not np.allclose(before, base, atol=1e-3)
    model.save(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    after = unime.load(str(tmp_path / "adapter")).encode(inputs)
    np.testing.assert_allclose(before, after, atol=1e-6)


def test_released_checkpoints_load_in_joint_mode_and_folder_names_decide_nothing(tiny_model_factory, tmp_path):
    from unime.releases import released_checkpoint

    # A released checkpoint as the hub cache keeps it on disk: recognised by its hub id.
    cached = tmp_path / "hub" / "models--DeepGlint-AI--UniME-LLaVA-1.6-7B" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model_factory("llava_next"), cached)
    assert released_checkpoint(str(cached)) == "DeepGlint-AI/UniME-LLaVA-1.6-7B"
    assert released_checkpoint("deepglint-ai/unime-phi3.5-v-4.2b") == "DeepGlint-AI/UniME-Phi3.5-V-4.2B"
    assert unime.load(str(cached)).unime_config.mode == "joint"
    assert unime.load(str(cached), mode="sum").unime_config.mode == "sum"
    # A user's folder is never judged by its name: the same weights elsewhere keep the default mode
    # (its embeddings do not change when the folder is renamed).
    for name in ("UniME-LLaVA-1.6-7B", "my-unime-run", "plain"):
        folder = tmp_path / name
        shutil.copytree(tiny_model_factory("llava_next"), folder)
        assert released_checkpoint(str(folder)) is None
        assert unime.load(str(folder)).unime_config.mode == "sum"
        assert unime.load(str(folder), mode="joint").unime_config.mode == "joint"
    assert released_checkpoint(str(tmp_path / "hub" / "models--someone--other" / "snapshots" / "1")) is None


def test_bad_inputs_name_the_item(tiny_model_factory, tmp_path):
    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    with pytest.raises(FileNotFoundError, match="input 1: image file not found"):
        model.encode(["ok", {"image": str(tmp_path / "missing.png")}])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="input 0: cannot read image"):
        model.encode([{"image": str(corrupt)}])
    with pytest.raises(ValueError, match="input 0: empty text"):
        model.encode(["   "])
    with pytest.raises(ValueError, match="input 0: unknown keys"):
        model.encode([{"txt": "typo"}])
    with pytest.raises(ValueError, match="refers to an image"):
        model.set_mode("joint")
        model.encode([{"text": "<|image_1|> what is this?"}])


def test_unknown_model_type_and_remote_code_families_get_clear_errors(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mystery_vlm"}))
    with pytest.raises(ValueError, match="unsupported model_type 'mystery_vlm'"):
        unime.load(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "phi3_v"}))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        unime.load(str(folder))
    with pytest.raises(FileNotFoundError, match="model path not found"):
        unime.load(str(tmp_path / "nowhere"))


def test_saved_model_has_a_model_card_and_loads_in_plain_sentence_transformers(tiny_model_factory, images, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = unime.load(str(tiny_model_factory("llava")))
    model[0].unime_config.stages.append("distill")
    model.card_info.update(base_model="tiny-llava", datasets=["SNLI sentences"], results={"sts/sick/spearman": 71.2})
    model.save(str(tmp_path / "m"))
    card = (tmp_path / "m" / "README.md").read_text()
    assert "base_model: tiny-llava" in card and "stage 1, textual discriminative" in card
    assert "| sts/sick/spearman | 71.20 |" in card and "unime.load(" in card
    plain = SentenceTransformer(str(tmp_path / "m"), trust_remote_code=True)
    # Plain sentence-transformers wants one modality per call; unime's encode mixes them freely.
    for inputs in (["a text", "another"], [images[0], images[1]]):
        np.testing.assert_allclose(plain.encode(inputs), model.encode(inputs), atol=1e-6)


def test_prefetching_encode_equals_the_sentence_transformers_loop(tiny_model_factory, images):
    from sentence_transformers import SentenceTransformer

    model = unime.load(str(tiny_model_factory("llava_next")), mode="joint")
    inputs = ["short", images[0], "a rather long sentence " * 5, {"text": "q", "image": images[1]}, "mid length"]
    fast = model.encode(inputs, batch_size=2)
    reference = SentenceTransformer.encode(model, [unime.inputs.to_input(x) for x in inputs], batch_size=2)
    np.testing.assert_allclose(fast, reference, atol=1e-6)
    tensor = model.encode(inputs, batch_size=2, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and torch.allclose(tensor, torch.from_numpy(fast))


def test_forward_threads_split_the_cores_by_cpu_time():
    from unime.modeling import forward_threads

    # Preparation-bound (a tiny model, 1344 px images): 0.1 s x 2 threads against 0.6 s -> 1 thread.
    assert forward_threads(2, 0.1, 0.6) == 1
    # Forward-bound (a real model on small images): keeps every thread.
    assert forward_threads(2, 1.0, 0.08) == 2
    # 8 threads, forward 0.2 s x 8 = 1.6 s CPU against 1.6 s of preparation: half the cores.
    assert forward_threads(8, 0.2, 1.6) == 4
    assert forward_threads(4, 0.0, 0.0) == 4 and forward_threads(1, 0.0, 5.0) == 1


def test_encode_restores_the_torch_thread_count(tiny_model_factory, images, monkeypatch):
    import unime.modeling as modeling

    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    seen = []
    real = modeling.forward_threads
    monkeypatch.setattr(modeling, "forward_threads", lambda *args: seen.append(args) or 1)
    before = torch.get_num_threads()
    model.encode([images[0], images[1], images[2], images[0]], batch_size=1)
    assert torch.get_num_threads() == before and len(seen) == 1 and seen[0][0] == before
    monkeypatch.setattr(modeling, "forward_threads", real)


def test_a_bare_peft_adapter_folder_loads_on_top_of_its_base(tiny_model_factory, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = tiny_model_factory("llava_next")
    regex = get_backbone("llava_next").lora_target_regex(llm_only=True)
    peft_model = get_peft_model(AutoModel.from_pretrained(base), LoraConfig(r=4, target_modules=regex))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")  # adapter files only, no processor
    got = unime.load(str(tmp_path / "adapter")).encode(["an adapter on a base"])
    expected_model = unime.load(str(base))
    expected_model[0].model = PeftModel.from_pretrained(expected_model[0].model, tmp_path / "adapter")
    np.testing.assert_allclose(got, expected_model.encode(["an adapter on a base"]), atol=1e-6)
    assert not np.allclose(got, unime.load(str(base)).encode(["an adapter on a base"]), atol=1e-3)


def test_update_config_and_hf_model_are_the_model_api(tiny_model_factory):
    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    inner = model.hf_model
    assert inner is model[0].model and inner.__class__.__module__.startswith("transformers.")
    config = model.update_config(mode="joint", stages=["distill"])
    assert model.unime_config is config and config.mode == "joint" and config.stages == ["distill"]
    with pytest.raises(ValueError, match=r"unknown unime config settings \['moed'\]"):
        model.update_config(moed="joint")
    with pytest.raises(ValueError, match="mode"):
        model.update_config(mode="both")
    assert model.unime_config.mode == "joint"
    model.set_hf_model(None)
    assert model[0].model is None and model.hf_model is None
    model.set_hf_model(inner)
    assert model[0].model is inner and "hf_model" not in dict(model.named_children())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_embedding_is_the_final_normed_state_at_the_pooled_position(tiny_model_factory, family):
    """Pooling reads the language model's output after its final norm, not the last decoder layer's
    output before it (what ``hidden_states[-1]`` of some ``*ForConditionalGeneration`` models returns
    in recent transformers): captured here from the final norm module itself."""
    model = unime.load(str(tiny_model_factory(family)), mode="joint")
    llm = model.hf_model.get_submodule(model.backbone.llm_module)
    norm = llm.norm
    with torch.no_grad():  # a random model's norm weight is all ones (a pure rescale): give it a shape
        norm.weight.copy_(torch.linspace(0.2, 3.0, norm.weight.numel()))
    captured = {}

    def hook(module, args, output):
        captured["before"], captured["after"] = args[0].detach(), output.detach()

    handle = norm.register_forward_hook(hook)
    try:
        got = model.encode(["two people are playing football in the park"], batch_size=1, convert_to_tensor=True)
    finally:
        handle.remove()
    after = torch.nn.functional.normalize(captured["after"][0, -1].float(), dim=-1)
    before = torch.nn.functional.normalize(captured["before"][0, -1].float(), dim=-1)
    torch.testing.assert_close(got[0].float(), after, atol=1e-5, rtol=0)
    assert (got[0].float() - before).abs().max() > 1e-3  # the norm changes the direction: the test can tell


# ----------------------------------------------------------------------------- Qwen3-VL and Qwen3-VL-Embedding

QWEN3_USER = "<|im_start|>user\n"
QWEN3_END = "<|im_end|>\n<|im_start|>assistant\n"
QWEN3_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def test_qwen3_vl_prompts_and_token_ids(tiny_model_factory, images):
    """UniME's bodies in ChatML as Qwen3-VL's template writes it (no default system turn, unlike
    Qwen2-VL's), string for string; the processor expands the image token to one pad per 2 x 2
    merged 16 px patches, between the vision markers."""
    model = unime.load(str(tiny_model_factory("qwen3_vl")))
    config, processor = model.unime_config, model[0].processor
    assert config.text_prompt == f"{QWEN3_USER}<sent>\nSummary above sentence in one word:{QWEN3_END}"
    assert config.image_prompt == f"{QWEN3_USER}{QWEN3_IMAGE}\nSummary above image in one word:{QWEN3_END}"
    assert config.joint_prompt == f"{QWEN3_USER}<content>{QWEN3_END}"
    assert (config.padding_side, config.default_instruction) == ("left", None)
    assert (processor.image_processor.patch_size, processor.image_processor.merge_size) == (16, 2)
    model.set_mode("joint")
    assert model[0].render(EmbedInput(text="a dog", image=images[0], instruction="Find it"))[0] == (
        f"{QWEN3_USER}{QWEN3_IMAGE}\nFind it\na dog{QWEN3_END}")
    tokenizer = processor.tokenizer
    features = model.preprocess([images[0]])  # 40 x 48 px -> 32 x 64: 2 x 4 patches, 1 x 2 merged tokens
    assert features["image_grid_thw"].tolist() == [[1, 2, 4]]
    ids = features["input_ids"][0].tolist()
    expected = tokenizer(config.image_prompt.replace("<|image_pad|>", "<|image_pad|>" * 2))["input_ids"]
    assert ids == expected
    pad, start, end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>"))
    assert ids.count(pad) == 2 and ids[ids.index(start) + 3] == end
    assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["<|im_start|>", "user"]


# The model card's conversation (Qwen3VLEmbedder.format_model_input, the vLLM / SGLang examples): the
# instruction as the system turn's text, the image then the text as the user's content, the
# generation prompt; written out by hand here as Qwen3-VL's chat template renders it.
CARD_QUERY = ("<|im_start|>system\nRetrieve images or text relevant to the user's query.<|im_end|>\n"
              "<|im_start|>user\nA woman playing with her dog on a beach at sunset.<|im_end|>\n"
              "<|im_start|>assistant\n")
CARD_DOCUMENT = ("<|im_start|>system\nRepresent the user's input.<|im_end|>\n"
                 "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>A woman shares a joyful moment."
                 "<|im_end|>\n<|im_start|>assistant\n")
CARD_IMAGE = ("<|im_start|>system\nRepresent the user's input.<|im_end|>\n"
              "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def qwen3_embedding_2b(tmp_path_factory):
    """A tiny random Qwen3-VL as wide as Qwen3-VL-Embedding-2B (2048), where the hub cache keeps that
    release: recognised by its hub id without the network."""
    from unime.models.tiny import make_tiny

    root = tmp_path_factory.mktemp("hub")
    folder = root / "models--Qwen--Qwen3-VL-Embedding-2B" / "snapshots" / "0123abc"
    make_tiny("qwen3_vl", folder, hidden_size=2048)
    return folder


def _card_reference(folder, texts, images):
    """Qwen3VLEmbedder.process by hand: one right-padded processor call, the headless model's
    last_hidden_state at the last attended position of each row, L2 norm."""
    from unime.processors import ImageOnlyQwen3VLProcessor

    processor = ImageOnlyQwen3VLProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "right"
    processor.image_processor.size = {"shortest_edge": 4 * 32 * 32, "longest_edge": 1800 * 32 * 32}
    model = AutoModel.from_pretrained(folder).eval()
    kwargs = {"text": texts, "padding": True, "return_tensors": "pt"}
    if any(image is not None for image in images):
        kwargs["images"] = [image for image in images if image is not None]
    with torch.no_grad():
        inputs = processor(**kwargs)
        hidden = model(**inputs).last_hidden_state
    last = inputs["attention_mask"].shape[1] - 1 - inputs["attention_mask"].flip(dims=[1]).argmax(dim=1)
    return torch.nn.functional.normalize(hidden[torch.arange(len(texts)), last], dim=-1).numpy()


def test_qwen3_vl_embedding_loads_with_its_own_conventions(qwen3_embedding_2b, images, tmp_path):
    from unime.releases import QWEN3_VL_EMBEDDING_INSTRUCTION, released_checkpoint

    folder = qwen3_embedding_2b
    assert released_checkpoint(str(folder)) == "Qwen/Qwen3-VL-Embedding-2B"
    assert released_checkpoint("qwen/qwen3-vl-embedding-8b") == "Qwen/Qwen3-VL-Embedding-8B"
    model = unime.load(str(folder))
    config, module = model.unime_config, model[0]
    assert (config.family, config.mode, config.normalize, config.pooling) == ("qwen3_vl", "joint", True, "lasttoken")
    assert config.default_instruction == QWEN3_VL_EMBEDDING_INSTRUCTION == "Represent the user's input."
    assert config.matryoshka_dims == [2048, 1536, 1024, 768, 512, 256]
    size = module.processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (4096, 1843200)

    # Queries carry their instruction in the system turn (a period added where the card's code adds
    # one); candidates get the default instruction, never an instruction inside the user's turn.
    query = EmbedInput(text="A woman playing with her dog on a beach at sunset.",
                       instruction="Retrieve images or text relevant to the user's query")
    assert module.render(query)[0] == CARD_QUERY
    assert module.render(EmbedInput(text=query.text, instruction=query.instruction + ".  "))[0] == CARD_QUERY
    document = EmbedInput(text="A woman shares a joyful moment.", image=images[0])
    assert module.render(document)[0] == CARD_DOCUMENT
    assert module.render(EmbedInput(image=images[0]))[0] == CARD_IMAGE
    assert module.render(EmbedInput(text="<|image_1|>A woman shares a joyful moment.", image=images[0]))[0] == (
        CARD_DOCUMENT)
    assert module.render(EmbedInput(text="What?", instruction="Is it so?"))[0].startswith(
        "<|im_start|>system\nIs it so?<|im_end|>\n")  # ends in punctuation: kept as it is
    # The same strings as the processor's chat template renders the card's conversations.
    conversation = [{"role": "system", "content": [{"type": "text", "text": "Represent the user's input."}]},
                    {"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": "A woman shares a joyful moment."}]}]
    assert module.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) == (
        CARD_DOCUMENT)

    # The embedding: the final normed state at the last token of the generation prompt, L2-normalised,
    # as the card's Qwen3VLEmbedder computes it (right padding, the last attended position).
    inputs = [{"text": query.text, "instruction": query.instruction}, {"text": document.text, "image": images[0]},
              images[1], "a short one"]
    got = model.encode(inputs, batch_size=4)
    texts = [CARD_QUERY, CARD_DOCUMENT, CARD_IMAGE, CARD_QUERY.replace(
        "Retrieve images or text relevant to the user's query.", "Represent the user's input.").replace(
        query.text, "a short one")]
    expected = _card_reference(folder, texts, [None, images[0], images[1], None])
    assert got.shape == (4, 2048)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    assert config.fill_instruction(config.image_prompt) == CARD_IMAGE  # what captioning paths render
    # Saved as a unime model, it keeps every convention (the pixel bounds with its processor).
    model.save(str(tmp_path / "saved"))
    assert "for an input given none: `\"Represent the user's input.\"`" in (tmp_path / "saved" / "README.md").read_text()
    saved = unime.load(str(tmp_path / "saved"))
    assert saved.unime_config.to_dict() == {**config.to_dict()}
    size = saved[0].processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (4096, 1843200)
    np.testing.assert_allclose(saved.encode(inputs, batch_size=4), got, atol=1e-6)

    # Its Matryoshka sizes: a trained size is cut without a warning and normalised again.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_dimensions(256)
    cut = model.encode(inputs, batch_size=4)
    assert cut.shape == (4, 256)
    np.testing.assert_allclose(cut, got[:, :256] / np.linalg.norm(got[:, :256], axis=1, keepdims=True), atol=1e-5)
    with pytest.warns(UserWarning, match="not optimised in training"):
        model.set_dimensions(100)


def test_qwen3_vl_embedding_conventions_need_the_hub_id(qwen3_embedding_2b, tmp_path):
    # The same weights in a folder of another name: a plain Qwen3-VL with UniME's prompts.
    copy = tmp_path / "Qwen3-VL-Embedding-2B"
    shutil.copytree(qwen3_embedding_2b, copy)
    model = unime.load(str(copy))
    assert model.unime_config.default_instruction is None and model.unime_config.mode == "sum"
    assert model.unime_config.text_prompt == f"{QWEN3_USER}<sent>\nSummary above sentence in one word:{QWEN3_END}"
    # A folder named as the release that is no Qwen3-VL is refused, not embedded with its conventions.
    wrong = tmp_path / "hub" / "models--Qwen--Qwen3-VL-Embedding-8B" / "snapshots" / "1"
    shutil.copytree(qwen3_embedding_2b, wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "model_type": "qwen2_vl"}))
    with pytest.raises(ValueError, match="named as Qwen/Qwen3-VL-Embedding-8B, a qwen3_vl model, but its config says"):
        unime.load(str(wrong))


def test_instruction_slot_settings_are_checked_and_filled_once():
    from unime.config import UniMEConfig
    from unime.releases import QWEN3_VL_EMBEDDING_PROMPTS

    with pytest.raises(ValueError, match="need a default_instruction"):
        UniMEConfig(family="qwen3_vl", **QWEN3_VL_EMBEDDING_PROMPTS)
    with pytest.raises(ValueError, match="every prompt needs '<instruction>': missing in image_prompt"):
        UniMEConfig(family="qwen3_vl", **{**QWEN3_VL_EMBEDDING_PROMPTS, "image_prompt": "<image>"},
                    default_instruction="Represent it.")
    with pytest.raises(ValueError, match="non-empty"):
        UniMEConfig(family="qwen3_vl", **QWEN3_VL_EMBEDDING_PROMPTS, default_instruction=" ")
    config = UniMEConfig(family="qwen3_vl", **QWEN3_VL_EMBEDDING_PROMPTS, default_instruction="Represent it.",
                         content_separator="")
    # Content that names a slot stays as it is; the instruction goes to the system turn alone.
    assert config.fill_joint("say <instruction> and <content>", "Find it") == (
        "<|im_start|>system\nFind it.<|im_end|>\n<|im_start|>user\nsay <instruction> and <content>"
        f"{QWEN3_END}")
    assert config.slot_instruction("  Find it!  ") == "Find it!" and config.slot_instruction(None) == "Represent it."
    assert UniMEConfig.from_dict(config.to_dict()) == config
