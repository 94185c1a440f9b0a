"""LLaVA-OneVision: prompts rendered by the processor's own chat template, as the official scripts do.

A processor saved without a template gets the same string from :func:`released_template_turn`, a
rendition of the released (llava-hf) template's user turn: ``<|im_start|>user `` then one
``<image>`` per image, then each text after a newline, ``<|im_end|>\\n<|im_start|>assistant\\n``
(tests/test_modeling.py checks the two agree string for string).

The joint prompt (unime's own, for inputs with an instruction or with text and image; the official
scripts embed only the text and image prompts) is the template around ``<content>`` as one text
item, so an image in joint content follows ``user \n`` where a typed image item would follow
``user `` directly.
"""

from __future__ import annotations

import logging
from typing import Any

from unime.backbones.base import Backbone, render_chat_template

logger = logging.getLogger(__name__)


def released_template_turn(body: str, image_token: str = "<image>") -> str:
    """What the released chat template renders for one user turn of ``body`` (the image first when
    the body starts with the image token, as :func:`render_chat_template` types it), with the
    generation prompt."""
    images = ""
    prefix = f"{image_token}\n"
    if body.startswith(prefix):
        images, body = image_token, body[len(prefix) :]
    return f"<|im_start|>user {images}\n{body}<|im_end|>\n<|im_start|>assistant\n"


class LlavaOnevisionBackbone(Backbone):
    def chat(self, body: str, processor: Any = None) -> str:
        if not getattr(processor, "chat_template", None):
            logger.warning("llava_onevision processor has no chat template; using the released template's layout")
            return released_template_turn(body, self.image_token)
        return render_chat_template(processor, body, self.image_token)


BACKBONE = LlavaOnevisionBackbone(
    family="llava_onevision",
    image_token="<image>",
    image_only_processor="unime.processors.ImageOnlyLlavaOnevisionProcessor",
)
