"""LLaVA-1.6 (LLaVA-NeXT). UniME-LLaVA-1.6-7B uses the Mistral chat format of the official scripts."""

from __future__ import annotations

from typing import Any

from unime.backbones.base import Backbone


class LlavaNextBackbone(Backbone):
    def chat(self, body: str, processor: Any = None) -> str:
        # Official: "[INST] <image>\nSummary above image in one word: [/INST]"
        return f"[INST] {body} [/INST]"


BACKBONE = LlavaNextBackbone(family="llava_next", image_token="<image>")
