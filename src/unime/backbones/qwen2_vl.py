"""Qwen2-VL, in the ChatML format its processor's chat template produces (default system turn included)."""

from __future__ import annotations

from typing import Any

from unime.backbones.base import Backbone

QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


class QwenVLBackbone(Backbone):
    def fit_image(self, image: Any, image_processor: Any) -> Any:
        # transformers' PIL backend resizes with PIL.Image.resize to smart_resize's size; the same
        # call here on the same RGB pixels gives the same pixels, and a second resize to an
        # unchanged size is a copy. The torchvision backend resizes in torch: left to it.
        from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil_qwen

        cls = pil_qwen.Qwen2VLImageProcessorPil
        if (not isinstance(image_processor, cls) or type(image_processor).resize is not cls.resize
                or not image_processor.do_resize or image.mode != "RGB"):
            return image
        size = image_processor.size

        def target(height: int, width: int) -> tuple[int, int]:
            return pil_qwen.smart_resize(
                height, width, factor=image_processor.patch_size * image_processor.merge_size,
                min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])

        height, width = target(image.height, image.width)
        # The processor sizes the fitted image again: only a size that rule keeps is safe (very
        # long images can shrink twice).
        if (width, height) == image.size or target(height, width) != (height, width):
            return image
        return image.resize((width, height), image_processor.resample)

    def chat(self, body: str, processor: Any = None) -> str:
        return f"{QWEN_SYSTEM}<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


BACKBONE = QwenVLBackbone(
    family="qwen2_vl",
    image_token="<|vision_start|><|image_pad|><|vision_end|>",
    bare_image_token="<|image_pad|>",
    vision_modules=("visual",),
    image_only_processor="unime.processors.ImageOnlyQwen2VLProcessor",
    video_token="<|vision_start|><|video_pad|><|vision_end|>",
    bare_video_token="<|video_pad|>",
)
