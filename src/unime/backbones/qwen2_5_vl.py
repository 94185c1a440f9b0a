"""Qwen2.5-VL: the Qwen2-VL prompt format and module layout."""

from __future__ import annotations

from unime.backbones.qwen2_vl import QwenVLBackbone

BACKBONE = QwenVLBackbone(
    family="qwen2_5_vl",
    image_token="<|vision_start|><|image_pad|><|vision_end|>",
    bare_image_token="<|image_pad|>",
    vision_modules=("visual",),
    image_only_processor="unime.processors.ImageOnlyQwen2_5_VLProcessor",
    video_token="<|vision_start|><|video_pad|><|vision_end|>",
    bare_video_token="<|video_pad|>",
)
