"""LLaVA-OneVision: prompts rendered by the processor's own chat template, as the official scripts do."""

from __future__ import annotations

import logging
from typing import Any

from unime.backbones.base import Backbone, render_chat_template

logger = logging.getLogger(__name__)


class LlavaOnevisionBackbone(Backbone):
    def chat(self, body: str, processor: Any = None) -> str:
        template_owner = processor if getattr(processor, "chat_template", None) else None
        if template_owner is None:
            # Same ChatML turn as the released template, for processors saved without one.
            logger.warning("llava_onevision processor has no chat template; using the ChatML format")
            return f"<|im_start|>user {body}<|im_end|>\n<|im_start|>assistant\n"
        return render_chat_template(template_owner, body, self.image_token)


BACKBONE = LlavaOnevisionBackbone(
    family="llava_onevision",
    image_token="<image>",
    image_only_processor="unime.processors.ImageOnlyLlavaOnevisionProcessor",
)
