"""Qwen2-VL, in the ChatML format its processor's chat template produces (default system turn included)."""

from __future__ import annotations

from typing import Any

from unime.backbones.base import Backbone

QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


class QwenVLBackbone(Backbone):
    def chat(self, body: str, processor: Any = None) -> str:
        return f"{QWEN_SYSTEM}<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


BACKBONE = QwenVLBackbone(
    family="qwen2_vl",
    image_token="<|vision_start|><|image_pad|><|vision_end|>",
    bare_image_token="<|image_pad|>",
    vision_modules=("visual",),
    image_only_processor="unime.processors.ImageOnlyQwen2VLProcessor",
)
