"""LLaVA-1.5 (CLIP + projector + Llama), in its "USER: ... ASSISTANT:" format."""

from __future__ import annotations

from typing import Any

from unime.backbones.base import Backbone


class LlavaBackbone(Backbone):
    def chat(self, body: str, processor: Any = None) -> str:
        return f"USER: {body} ASSISTANT:"


BACKBONE = LlavaBackbone(family="llava", image_token="<image>")
