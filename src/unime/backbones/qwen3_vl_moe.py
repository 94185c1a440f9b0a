"""Qwen3-VL MoE (transformers' ``qwen3_vl_moe``): Qwen3-VL's prompts, processor and module layout.

Its experts are fused parameter tensors, not linear layers: LoRA adapts the decoder's attention
(and, with scope ``all``, every linear layer there is, the vision tower's included).
"""

from __future__ import annotations

from unime.backbones.qwen3_vl import Qwen3VLBackbone

BACKBONE = Qwen3VLBackbone(
    family="qwen3_vl_moe",
    image_token="<|vision_start|><|image_pad|><|vision_end|>",
    vision_modules=("visual",),
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
    image_only_processor="unime.processors.ImageOnlyQwen3VLProcessor",
)
