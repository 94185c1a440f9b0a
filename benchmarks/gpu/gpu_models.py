"""The paper's backbones at their real sizes (or tiny, for ``--smoke``), with random weights.

Each is built offline from transformers' config classes, as ``unime.models.tiny`` builds its tiny models,
with a byte-level BPE tokenizer trained on the spot (``unime.models.tiny.build_tokenizer``) and the family's
real processor; the embedding matrix has the real vocabulary size, so the weights, the memory and
the arithmetic are those of the released checkpoints. The folder written is a plain transformers
model folder that ``unime.load`` wraps, as it wraps a downloaded base MLLM.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

QWEN_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# LLaVA-1.6 Mistral's anyres grid at 336 px; scaled with the image size for the tiny model.
LLAVA_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@dataclass(frozen=True)
class Backbone:
    """One of the paper's backbones: its family, recipes and the sizes of its parts.

    ``full`` and ``smoke`` hold ``text`` and ``vision`` config keywords; a ``vocab_size`` of None
    takes the tokenizer's (the tiny model).
    """

    key: str
    label: str
    family: str
    distill_recipe: str
    tune_recipe: str
    full: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)


QWEN2_VL_2B = Backbone(
    key="qwen2-vl-2b", label="Qwen2-VL-2B", family="qwen2_vl",
    distill_recipe="distill-qwen2vl-2b", tune_recipe="tune-qwen2vl-2b",
    # Qwen/Qwen2-VL-2B-Instruct's config.json.
    full=dict(
        text=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=True,
    ),
    smoke=dict(
        text=dict(vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}),
        vision=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=True,
    ),
)

LLAVA_16_7B = Backbone(
    key="llava-1.6-7b", label="LLaVA-1.6-Mistral-7B", family="llava_next",
    distill_recipe="distill-llava16", tune_recipe="tune-llava16",
    # llava-hf/llava-v1.6-mistral-7b-hf's config.json (Mistral-7B-Instruct-v0.2 and CLIP ViT-L/14-336).
    full=dict(
        text=dict(model_type="mistral", vocab_size=32064, hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                  rms_norm_eps=1e-5, sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        vision=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
    ),
    smoke=dict(
        text=dict(model_type="mistral", vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
                  sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        vision=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, patch_size=14, projection_dim=32, hidden_act="quick_gelu"),
    ),
)

BACKBONES = {backbone.key: backbone for backbone in (QWEN2_VL_2B, LLAVA_16_7B)}


def _text_config(sizes: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    config = dict(sizes["text"])
    config["vocab_size"] = config["vocab_size"] or len(tokenizer)
    if config["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {config['vocab_size']} is smaller than the tokenizer ({len(tokenizer)})")
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           (("pad_token_id", "<pad>"), ("bos_token_id", "<s>"), ("eos_token_id", "</s>"))}
    return {**config, **ids}


def _build_qwen2_vl(sizes: dict[str, Any], image_size: int) -> tuple[Any, Any]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    from unime.models.tiny import build_tokenizer
    from unime.processors import ImageOnlyQwen2VLProcessor

    tokenizer = build_tokenizer(QWEN_TOKENS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    config = Qwen2VLConfig(text_config=_text_config(sizes, tokenizer), vision_config=dict(sizes["vision"]),
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                           tie_word_embeddings=sizes["tie_word_embeddings"])
    # The released processor's pixel bounds; images are resized to image_size before it anyway.
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=max(28 * 28 * 1280, image_size**2))
    processor = ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return lambda: Qwen2VLForConditionalGeneration(config), processor


def _build_llava_next(sizes: dict[str, Any], image_size: int) -> tuple[Any, Any]:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    from unime.models.tiny import build_tokenizer

    tokenizer = build_tokenizer(["<image>"])
    pinpoints = [[h * image_size // 336, w * image_size // 336] for h, w in LLAVA_PINPOINTS]
    vision = {**sizes["vision"], "image_size": image_size}
    config = LlavaNextConfig(text_config=_text_config(sizes, tokenizer), vision_config=vision,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default",
                             vision_feature_layer=-2, image_seq_length=(image_size // vision["patch_size"]) ** 2)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": image_size},
                                              crop_size={"height": image_size, "width": image_size},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   patch_size=vision["patch_size"], vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1)
    return lambda: LlavaNextForConditionalGeneration(config), processor


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def scratch_root(need_bytes: int) -> str:
    """A folder with room for a model folder: memory-backed /dev/shm when it has it, else the temp dir."""
    for candidate in ("/dev/shm", tempfile.gettempdir()):
        if Path(candidate).is_dir() and shutil.disk_usage(candidate).free > 1.5 * need_bytes:
            return candidate
    return tempfile.gettempdir()


def write_model(backbone: Backbone, size: str, out_dir: Path, image_size: int, device: str,
                dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
    """Build ``backbone`` at ``size`` ("full" or "smoke") with random weights on ``device`` in ``dtype``
    (initialising 7B parameters on a GPU takes a second, on a CPU minutes) and save model and
    processor to ``out_dir``. Returns the parameter count and the seconds it took."""
    import time

    start = time.perf_counter()
    sizes = backbone.full if size == "full" else backbone.smoke
    builder = {"qwen2_vl": _build_qwen2_vl, "llava_next": _build_llava_next}[backbone.family]
    make, processor = builder(sizes, image_size)
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model = make()
    parameters = sum(p.numel() for p in model.parameters())
    model.to("cpu").save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"parameters": parameters, "build_s": time.perf_counter() - start}
