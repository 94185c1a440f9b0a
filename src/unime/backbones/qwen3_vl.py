"""Qwen3-VL (transformers' ``qwen3_vl``), in the ChatML format of its chat template.

Qwen2-VL's module layout (the vision tower ``visual``, the decoder ``language_model``) and image
token; Qwen3-VL's template writes no default system turn, so the prompts begin with the user's.
Its image processor is Qwen2-VL's with 16 px patches merged 2 x 2 (one token per 32 x 32 pixels).
"""

from __future__ import annotations

from typing import Any

from unime.backbones.qwen2_vl import QwenVLBackbone


class Qwen3VLBackbone(QwenVLBackbone):
    def chat(self, body: str, processor: Any = None) -> str:
        return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


BACKBONE = Qwen3VLBackbone(
    family="qwen3_vl",
    image_token="<|vision_start|><|image_pad|><|vision_end|>",
    vision_modules=("visual",),
    image_only_processor="unime.processors.ImageOnlyQwen3VLProcessor",
)
