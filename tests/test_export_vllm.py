"""``unime export vllm``, by contract: vLLM itself is not installed here (no CPU wheel), so each thing vLLM
relies on is checked against what unime computes.

- the exported chat template, applied by transformers (``apply_chat_template``, tokenized), gives the token
  ids of unime's own rendering for every family and input kind, before and after the processor expands
  the image tokens (vLLM renders the same template and runs the same processor);
- the pooling vLLM applies (the last token of the final hidden state, after the language model's final
  norm, normalised) on the exported weights, read by transformers' own class, equals
  ``unime.load(M).encode`` for a model whose LoRA adapter had to be merged;
- the folder loads with transformers' Auto classes alone, names its pooling in the form vLLM reads, and
  an unsupported family is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import unime
from unime.cli import main
from unime.export.vllm import (
    ST_NORMALIZE,
    ST_POOLING,
    VLLM_ARCHITECTURES,
    SpecialTokens,
    chat_template,
    check_template,
    export_vllm,
    messages_for,
)
from unime.inputs import to_input
from unime.modeling import UniMETransformer

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "llava_onevision")
TEXT = "a large green triangle above a small yellow star"
INSTRUCTION = "Represent the given image with the following question:"


def kinds(image: Any) -> dict[str, dict[str, Any]]:
    """Every input kind the template renders, in a joint-mode model."""
    return {
        "text": {"text": TEXT},
        "image": {"image": image},
        "text+image": {"text": TEXT, "image": image},
        "text+instruction": {"text": TEXT, "instruction": INSTRUCTION},
        "image+instruction": {"image": image, "instruction": INSTRUCTION},
        "text+image+instruction": {"text": TEXT, "image": image, "instruction": INSTRUCTION},
        "text placing the image": {"text": f"What is in <|image_1|> here? {TEXT}", "image": image},
    }


KINDS = tuple(kinds(None))


@pytest.fixture(scope="module")
def exported(tiny_model_factory, tmp_path_factory, one_thread):
    """``exported(family) -> (source, OUT)``: a tiny model exported in joint mode, once per family."""
    done: dict[str, tuple[Path, Path]] = {}

    def get(family: str) -> tuple[Path, Path]:
        if family not in done:
            source = tiny_model_factory(family)
            out = tmp_path_factory.mktemp(f"vllm-{family}") / "out"
            export_vllm(str(source), out, mode="joint")
            done[family] = (source, out)
        return done[family]

    return get


@pytest.fixture(scope="module")
def joint_models(tiny_model_factory):
    loaded: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in loaded:
            loaded[family] = unime.load(str(tiny_model_factory(family)), mode="joint")
        return loaded[family]

    return get


def processor_of(folder: Path) -> Any:
    """The exported processor, read with the transformers class its processor_config.json names. Without
    torchvision (this environment) transformers cannot build the video processors of Qwen2-VL and
    LLaVA-OneVision, so those are read through the image-only subclass of that very class."""
    import transformers

    from unime import processors

    name = json.loads((folder / "processor_config.json").read_text())["processor_class"]
    cls = getattr(transformers, name)
    image_only = {c.__mro__[1]: c for c in (processors.ImageOnlyQwen2VLProcessor,
                                            processors.ImageOnlyQwen2_5_VLProcessor,
                                            processors.ImageOnlyLlavaOnevisionProcessor)}
    return image_only.get(cls, cls).from_pretrained(str(folder))


# --- the template: token ids --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_template_tokens_equal_unime_tokens(family: str, kind: str, exported, joint_models, images) -> None:
    """The tokenizer's apply_chat_template (as vLLM renders chat requests: no special tokens added) gives
    unime's prompt tokens; image tokens still unexpanded."""
    from transformers import AutoTokenizer

    _, out = exported(family)
    model = joint_models(family)
    item = kinds(images[0])[kind]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    got = tokenizer.apply_chat_template(messages_for(item), tokenize=True, return_dict=False)
    prompt, _ = model[0].render(to_input(item))
    assert list(got) == list(model.tokenizer(prompt)["input_ids"])
    assert tokenizer.apply_chat_template(messages_for(item), tokenize=False) == prompt


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_processor_ids_equal_unime_input_ids(family: str, kind: str, exported, joint_models, images) -> None:
    """With the image expanded by the exported processor (the one vLLM runs), the ids and pixels are
    those unime feeds its model."""
    _, out = exported(family)
    model = joint_models(family)
    item = kinds(images[1])[kind]
    processor = processor_of(out)
    got = processor.apply_chat_template(messages_for(item, images[1]), tokenize=True, return_dict=True,
                                        return_tensors="pt")
    expected = model[0].preprocess([item])
    assert got["input_ids"].tolist() == expected["input_ids"].tolist()
    if "image" in item:
        torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], rtol=0, atol=1e-6)


def test_string_content_and_image_url_parts_render_alike(exported, joint_models, images) -> None:
    """vLLM passes an ``image_url`` part as ``{"type": "image"}`` or as it came; a string content is a text."""
    from transformers import AutoTokenizer

    _, out = exported("qwen2_vl")
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    as_string = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": TEXT}]
    as_parts = [{"role": "system", "content": [{"type": "text", "text": INSTRUCTION}]},
                {"role": "user", "content": [{"type": "text", "text": TEXT}]}]
    assert tokenizer.apply_chat_template(as_string, tokenize=False) == \
        tokenizer.apply_chat_template(as_parts, tokenize=False)
    url = [{"role": "user", "content": [{"type": "text", "text": TEXT},
                                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]
    prompt, _ = joint_models("qwen2_vl")[0].render(to_input({"text": TEXT, "image": images[0]}))
    assert tokenizer.apply_chat_template(url, tokenize=False) == prompt  # the image first, whatever the order


class RenderOnly:
    """What :meth:`UniMETransformer.render` reads, for a family whose model cannot be built here."""

    render = UniMETransformer.render
    render_media = UniMETransformer.render_media
    _media = UniMETransformer._media

    def __init__(self, backbone: Any, mode: str) -> None:
        from unime.formats import PROMPTED

        self.backbone, self.input_format = backbone, PROMPTED
        self.unime_config = backbone.default_config(None, mode=mode)

    def _images(self, item: Any, where: str) -> list[Any]:
        return [item.image] if item.has_image else []


def test_phi3_v_template_renders_its_official_prompts() -> None:
    """Phi-3.5-V exists only as hub remote code, not buildable offline: its template is checked against
    unime's rendering of the family's prompts at the string level, and token for token with a tokenizer
    holding its special tokens."""
    from unime.backbones import get_backbone
    from unime.models.tiny import build_tokenizer

    backbone = get_backbone("phi3_v")
    tokenizer = build_tokenizer(["<|user|>", "<|end|>", "<|assistant|>", "<|image_1|>"])
    for mode in ("joint", "sum"):
        stand_in = RenderOnly(backbone, mode)
        template = chat_template(stand_in.unime_config, backbone.image_token)
        assert check_template(stand_in, tokenizer, template) == []
    from PIL import Image

    image = Image.new("RGB", (8, 8))
    rendered = tokenizer.apply_chat_template(messages_for({"image": image}), chat_template=template, tokenize=False)
    assert rendered == "<|user|>\n<|image_1|>\nSummary above image in one word:<|end|>\n<|assistant|>\n"


def test_the_check_catches_a_template_that_differs(exported, joint_models) -> None:
    """The export's own token check is what refuses a template that misses unime's prompts by one token."""
    from transformers import AutoTokenizer

    _, out = exported("llava_next")
    model = joint_models("llava_next")
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    template = (out / "chat_template.jinja").read_text()
    assert check_template(model[0], tokenizer, template) == []
    broken = template.replace("Summary above image in one word:", "Summary above image in one word.")
    assert check_template(model[0], tokenizer, broken) == ["image"]
    assert check_template(model[0], tokenizer, template.replace("\\n' if parts.any", "' ' if parts.any")) == [
        "text with instruction", "image with instruction", "text and image", "text and image with instruction"]


def test_special_tokens_the_tokenizer_adds_are_written_by_the_template(tiny_model_copy, tmp_path, images) -> None:
    """A tokenizer that adds a BOS (Llama, Mistral): vLLM and transformers tokenize a template's output
    without special tokens, so the template writes the BOS itself and the ids still match."""
    from tokenizers import processors as tk_processors
    from transformers import AutoTokenizer

    source = tiny_model_copy("llava_next")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = tk_processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    tokenizer.save_pretrained(str(source))
    model = unime.load(str(source), mode="joint")
    assert model.tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    out = tmp_path / "out"
    export_vllm(str(source), out, mode="joint")
    template = (out / "chat_template.jinja").read_text()
    assert json.dumps(bos) in template
    exported_tokenizer = AutoTokenizer.from_pretrained(str(out))
    for kind, item in kinds(images[0]).items():
        prompt, _ = model[0].render(to_input(item))
        ids = exported_tokenizer.apply_chat_template(messages_for(item), tokenize=True, return_dict=False)
        assert list(ids) == list(model.tokenizer(prompt)["input_ids"]), kind
        assert ids[0] == tokenizer.bos_token_id and list(ids).count(tokenizer.bos_token_id) == 1, kind
        got = processor_of(out).apply_chat_template(messages_for(item, images[0]), tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        assert got["input_ids"].tolist() == model[0].preprocess([item])["input_ids"].tolist(), kind


@pytest.mark.parametrize("messages, refusal", [
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}], "in sum mode"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "one user message"),
    ([{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}], "at most one text and one image"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "not assistant"),
    ([{"role": "user", "content": [{"type": "input_audio"}]}], "not input_audio"),
    ([{"role": "user", "content": "look at <|image_1|>"}], "refers to an image but no image"),
    ([{"role": "system", "content": "i"}], "one user message"),
    ([{"role": "user", "content": "  "}], "needs a text or an image"),
])
def test_the_template_refuses_what_unime_would_not_embed_as_one_sequence(tiny_model_factory, messages,
                                                                           refusal) -> None:
    """A sum-mode model's template (the tiny model's saved mode) refuses text with an image, and every
    template refuses messages that are not one embedding input."""
    from jinja2.exceptions import TemplateError
    from transformers import AutoTokenizer

    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    assert model.unime_config.mode == "sum"
    template = chat_template(model.unime_config, model.backbone.image_token, SpecialTokens())
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_factory("qwen2_vl")))
    with pytest.raises(TemplateError, match=refusal):
        tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)


# --- the weights and the pooling ----------------------------------------------------------------------


def _with_random_final_norm(source: Path, out: Path, seed: int) -> Path:
    """A copy of ``source`` whose language model's final norm has random weights: a fresh model's are
    ones, and an RMSNorm of weight one changes no direction, so pooling before or after it would agree."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, out)
    tensors = load_file(str(out / "model.safetensors"))
    keys = [key for key in tensors if key.endswith("model.norm.weight")]
    assert len(keys) == 1, keys
    generator = torch.Generator().manual_seed(seed)
    tensors[keys[0]] = 0.5 + torch.rand(tensors[keys[0]].shape, generator=generator)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _random_lora(source: Path, seed: int) -> Any:
    """``source`` (joint mode) with a LoRA adapter whose B matrices are random (peft starts them at zero)."""
    from unime.training.adapters import apply_tuning

    model = unime.load(str(source), mode="joint")
    torch.manual_seed(seed)
    apply_tuning(model, "lora", "llm", lora_r=4, lora_alpha=8)
    with torch.no_grad():
        for name, parameter in model.hf_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    return model


def _with_random_lora(source: Path, out: Path, seed: int) -> Path:
    """:func:`_random_lora` saved as a unime model (the adapter alone, on ``source``)."""
    model = _random_lora(source, seed)
    model.save(str(out))
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    return out


def as_item(item: Any) -> dict[str, Any]:
    return {"text": item} if isinstance(item, str) else item if isinstance(item, dict) else {"image": item}


def pooled(model: Any, processor: Any, item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """vLLM's pooling by hand on a transformers generation model: the last position of the final
    hidden state, normalised; and the same position before the final norm, for contrast."""
    inputs = processor.apply_chat_template(messages_for(item, item.get("image")), tokenize=True,
                                           return_dict=True, return_tensors="pt")
    seen: dict[str, torch.Tensor] = {}
    norm = model.model.language_model.norm
    hook = norm.register_forward_hook(lambda m, args, output: seen.update(before=args[0], after=output))
    try:
        with torch.inference_mode():
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
    finally:
        hook.remove()
    assert torch.equal(hidden, seen["after"])  # the last hidden state is the final norm's output
    last = torch.nn.functional.normalize(hidden[0, -1].float(), dim=-1).numpy()
    before = torch.nn.functional.normalize(seen["before"][0, -1].float(), dim=-1).numpy()
    return last, before


@pytest.mark.parametrize("family", FAMILIES)
def test_last_token_after_the_final_norm_of_the_exported_weights_is_unime_s_embedding(
        family: str, tiny_model_factory, tmp_path, images, one_thread) -> None:
    from transformers import AutoModelForImageTextToText

    normed = _with_random_final_norm(tiny_model_factory(family), tmp_path / "base", seed=3)
    source = _with_random_lora(normed, tmp_path / "lora", seed=1)
    model = unime.load(str(source))
    assert model.has_adapter
    items = [TEXT, images[0], {"text": TEXT, "image": images[1], "instruction": INSTRUCTION},
             {"image": images[2], "instruction": INSTRUCTION}]
    expected = model.encode(items)
    base = unime.load(str(normed), mode="joint").encode(items)
    assert np.abs(base - expected).max() > 1e-2  # the adapter changes the embeddings: merging matters

    out = tmp_path / "out"
    result = export_vllm(str(source), out)
    assert result.merged_adapter and result.architecture == VLLM_ARCHITECTURES[family]
    hf = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == VLLM_ARCHITECTURES[family]
    processor = processor_of(out)
    for index, item in enumerate(items):
        last, before = pooled(hf, processor, as_item(item))
        np.testing.assert_allclose(last, expected[index], atol=2e-5, err_msg=f"{family} input {index}")
        assert np.abs(before - expected[index]).max() > 1e-3  # pooling before the norm would differ


def test_lm_head_is_the_source_s(exported, tiny_model_factory) -> None:
    from safetensors import safe_open

    source, out = exported("qwen2_vl")

    def head(folder: Path) -> torch.Tensor:
        with safe_open(str(folder / "model.safetensors"), "pt") as handle:
            key = next(k for k in handle.keys() if k.endswith("lm_head.weight"))  # noqa: SIM118
            return handle.get_tensor(key)

    assert torch.equal(head(source), head(out))


def test_tied_word_embeddings_stay_tied(tiny_model_copy, tmp_path) -> None:
    """A model whose LM head is its input embeddings (Qwen2-VL-2B): nothing to copy, tied again on loading."""
    from transformers import AutoModelForImageTextToText

    source = tiny_model_copy("qwen2_vl")
    config = json.loads((source / "config.json").read_text())
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = True
    (source / "config.json").write_text(json.dumps(config))
    result = export_vllm(str(source), tmp_path / "out")
    assert result.lm_head == "tied to the input embeddings"
    model, info = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not any(info.values()), info
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()


def test_a_merged_unime_save_exports_with_the_family_architecture(tiny_model_factory, tmp_path, images) -> None:
    """A unime save of merged weights (a training stage's final save) is the headless model (its config
    names Qwen2VLModel, no LM head): the export writes the generation architecture vLLM loads, the LM
    head as zeros (unused)."""
    from unime.training.adapters import merge_adapter

    model = _random_lora(tiny_model_factory("qwen2_vl"), seed=2)
    assert merge_adapter(model)
    model.save(str(tmp_path / "merged"))
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["architectures"] == ["Qwen2VLModel"]
    result = export_vllm(str(tmp_path / "merged"), tmp_path / "out")
    assert not result.merged_adapter and "zeros" in result.lm_head
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    from transformers import AutoModelForImageTextToText

    hf = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "out")).eval()
    items = [TEXT, images[0]]
    for item, row in zip(items, model.encode(items), strict=True):
        np.testing.assert_allclose(pooled(hf, processor_of(tmp_path / "out"), as_item(item))[0], row, atol=2e-5)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava_onevision"])
def test_processors_with_a_video_processor_find_its_settings(family: str, exported) -> None:
    """transformers builds these processors (vLLM does) with their video processor, whose settings unime's
    image-only processors never saved: the export gives it the image processor's, as transformers' own
    fallback for such checkpoints does. (Building it needs torchvision, absent here: the lookup is checked.)"""
    from transformers.video_processing_utils import BaseVideoProcessor

    _, out = exported(family)
    settings, _ = BaseVideoProcessor.get_video_processor_dict(str(out))
    image = json.loads((out / "processor_config.json").read_text())["image_processor"]
    assert settings == image


# --- the folder --------------------------------------------------------------------------------------


def test_the_folder_loads_with_transformers_alone(exported) -> None:
    """In a process where unime cannot be imported: the Auto classes read the model (no missing or
    unexpected weight), the tokenizer with its chat template, and (where torchvision is not needed for
    the video processor) the processor."""
    folders = {family: str(exported(family)[1]) for family in FAMILIES}
    script = """
import json, sys
sys.modules["unime"] = None  # any import of unime fails
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
folders = json.loads(sys.argv[1])
for family, folder in folders.items():
    model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), (family, info)
    assert type(model).__name__ == json.load(open(folder + "/config.json"))["architectures"][0]
    assert AutoTokenizer.from_pretrained(folder).chat_template == open(folder + "/chat_template.jinja").read()
    if family in ("llava", "llava_next"):
        processor = AutoProcessor.from_pretrained(folder)
        assert processor.chat_template == open(folder + "/chat_template.jinja").read(), family
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script, json.dumps(folders)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    for family, folder in folders.items():
        processor_class = json.loads(Path(folder, "processor_config.json").read_text())["processor_class"]
        assert not processor_class.startswith("ImageOnly"), family


def test_pooling_files_are_what_vllm_reads(exported, joint_models, images) -> None:
    """modules.json with sentence-transformers' legacy Pooling and Normalize names (the only ones vLLM
    matches), a pooling config whose one true pooling mode is the last token, and unime's own module
    first, so unime.load reads the folder with the same embeddings (for Qwen2-VL, Qwen2.5-VL and
    LLaVA-OneVision where torchvision is installed, as their processors need it)."""
    _, out = exported("llava_next")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["unime.modeling.UniMETransformer", ST_POOLING, ST_NORMALIZE]
    pooling = json.loads((out / modules[1]["path"] / "config.json").read_text())
    assert [k for k, v in pooling.items() if v is True and k.startswith("pooling_mode_")] == ["pooling_mode_lasttoken"]
    items = [TEXT, images[0], {"text": TEXT, "image": images[1], "instruction": INSTRUCTION}]
    again = unime.load(str(out))
    assert again.unime_config.mode == "joint"
    np.testing.assert_allclose(again.encode(items), joint_models("llava_next").encode(items), atol=1e-5)
    readme = (out / "README.md").read_text()
    assert "--runner pooling --convert embed" in readme and "--chat-template ./chat_template.jinja" in readme
    assert '"messages"' in readme and "image_url" in readme


def test_an_unsupported_family_is_refused_naming_it(tiny_model_factory, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="family 'fast_vlm' cannot be exported for vLLM: vLLM has no model class"):
        export_vllm(str(tiny_model_factory("fast_vlm")), out)
    code = main(["export", "vllm", str(out), "--model", str(tiny_model_factory("fast_vlm"))])
    assert code == 2 and "family 'fast_vlm' cannot be exported" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_writes_atomically_and_overwrites_only_when_asked(tiny_model_factory, tmp_path, capsys) -> None:
    source = str(tiny_model_factory("llava"))
    out = tmp_path / "out"
    assert main(["export", "vllm", str(out), "--model", source, "--mode", "joint"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((out / "sentence_bert_config.json").read_text())["unime"]["mode"] == "joint"
    (out / "extra.txt").write_text("x")
    assert main(["export", "vllm", str(out), "--model", source]) == 2
    assert "exists and is not empty (use --overwrite)" in capsys.readouterr().err
    assert main(["export", "vllm", str(out), "--model", source, "--overwrite"]) == 0
    assert not (out / "extra.txt").exists()  # the folder was replaced, not merged into
    assert json.loads((out / "sentence_bert_config.json").read_text())["unime"]["mode"] == "sum"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
