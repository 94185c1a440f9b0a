"""Image-only processors for families whose processor also owns a video processor.

Without torchvision the video processors of Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision cannot be
built, and ``AutoProcessor`` then silently returns the bare tokenizer: the model would accept text
only, with no error. These subclasses leave the video slot empty. ``from_pretrained`` reads the
argument names of ``__init__``, hence the explicit signatures.
"""

from __future__ import annotations

from typing import Any

from transformers import LlavaOnevisionProcessor, Qwen2_5_VLProcessor, Qwen2VLProcessor


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: Any = None,
        image_token: str = "<image>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            video_processor=None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )
