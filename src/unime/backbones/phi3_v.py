"""Phi-3.5-V: hub remote code only, loaded as a causal LM whose last hidden state is pooled.

Its processor (``Phi3VProcessor``) takes ONE prompt string per call, with numbered ``<|image_N|>``
tags for that prompt's images (it asserts they run from 1 and match the images given); the
official scripts embed images with batch size 1 and VLM2Vec processes every sample alone. The
input module does the same and pads the samples into a batch (``one_sample_per_call``).
"""

from __future__ import annotations

from typing import Any

from unime.backbones.base import Backbone


class Phi3VBackbone(Backbone):
    def chat(self, body: str, processor: Any = None) -> str:
        # Official: '<|user|>\n<|image_1|>\nSummary above image in one word:<|end|>\n<|assistant|>\n'
        return f"<|user|>\n{body}<|end|>\n<|assistant|>\n"


BACKBONE = Phi3VBackbone(
    family="phi3_v",
    image_token="<|image_1|>",
    llm_module="model.layers",
    vision_modules=("model.vision_embed_tokens",),
    lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    transformer_task="text-generation",
    requires_remote_code=True,
    # Its remote-code processor takes one prompt string; <|image_N|> numbers that prompt's images.
    one_sample_per_call=True,
    # Its <|image_N|> tags would have to number a video's frames within each prompt, a path no test
    # here can run (the processor is hub remote code): video inputs are refused.
    frames_as_images=False,
)
