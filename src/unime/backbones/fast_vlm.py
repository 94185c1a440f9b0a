"""FastVLM (transformers' ``fast_vlm``): a LLaVA-style model whose vision tower is a convolutional
feature map (Apple's FastViT-HD through timm, or the ImageNet MobileNetV2 of the CPU default).

Module layout, the same in ``FastVlmModel`` (what unime loads) and under ``model.`` in
``FastVlmForConditionalGeneration``: ``vision_tower`` (any AutoModel whose ``last_hidden_state`` is
a ``C x H x W`` map, flattened into ``H * W`` image tokens), ``multi_modal_projector`` (two linears
from ``vision_config.hidden_size``) and ``language_model`` (Qwen2 in Apple's checkpoints, Llama in
the SmolLM2 default; both use the decoder linear names LoRA adapts).

Apple's checkpoints speak ChatML through their processor's chat template (default system turn
included), so prompts are rendered by that template. A processor without one that can place an
image (the CPU default carries SmolLM2's text-only template) gets a plain ChatML user turn with no
system turn, the prompts the SmolLM2 default measured best with.
"""

from __future__ import annotations

import logging
from typing import Any

from unime.backbones.base import Backbone, render_chat_template

logger = logging.getLogger(__name__)

CHATML_TURN = "<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


class FastVlmBackbone(Backbone):
    def chat(self, body: str, processor: Any = None) -> str:
        if getattr(processor, "chat_template", None):
            try:
                return render_chat_template(processor, body, self.image_token)
            except TypeError:
                # A text-only LLM template (string contents), inherited from the tokenizer of a model
                # assembled by hand such as the CPU default: it cannot place an image.
                logger.warning("fast_vlm processor's chat template takes no image content; using plain ChatML")
        return CHATML_TURN.format(body=body)


BACKBONE = FastVlmBackbone(
    family="fast_vlm",
    image_token="<image>",
    llm_module="language_model",
    vision_modules=("vision_tower", "multi_modal_projector"),
)
