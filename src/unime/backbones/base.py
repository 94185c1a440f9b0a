"""What unime needs to know about a backbone family, in one small object per family."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from unime.config import CONTENT_SLOT, TEXT_SLOT, UniMEConfig

# The E5-V / UniME one-word summary prompts (docs/method.md, "Embedding extraction").
TEXT_BODY = f"{TEXT_SLOT}\nSummary above sentence in one word:"
IMAGE_BODY = "{image}\nSummary above image in one word:"

# Linear layers of the decoder that LoRA adapts by default (Llama, Mistral, Qwen2 naming).
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Backbone:
    """A backbone family: its image token, chat format, padding side and module layout.

    Attributes:
        family: the HF ``model_type`` this adapter serves.
        image_token: the text that stands for one image in a prompt.
        llm_module: dotted path, inside the loaded model, of the language model (stage 1 trains it alone).
        vision_modules: dotted paths of the vision encoder and projector (frozen in stage 1).
        lora_targets: names of the linear layers adapted by LoRA.
        transformer_task: how sentence-transformers loads the model (``feature-extraction`` gives the
            headless model; remote-code families may only offer a causal LM).
        requires_remote_code: the architecture exists only as hub remote code.
        image_only_processor: dotted name of a processor class to use when the family's own
            processor cannot be built (its video slot needs torchvision).
        bare_image_token: the image token of a raw-text input (VLM2Vec v1 feeds Qwen2-VL a bare
            ``<|image_pad|>``, without the ``<|vision_start|>`` / ``<|vision_end|>`` of the chat
            format); None: ``image_token``.
        one_sample_per_call: the processor takes one prompt string per call (Phi-3.5-V's remote
            code, whose ``<|image_N|>`` tags number the images of that one prompt); samples are
            processed one at a time and padded into a batch.
        video_token: the text that stands for one video in a prompt, where the family has a video
            path of its own (the processor's ``videos=``, e.g. Qwen2-VL's
            ``<|vision_start|><|video_pad|><|vision_end|>``); None: no native video path.
        bare_video_token: the video token of a raw-text input; None: ``video_token``.
        frames_as_images: without a native video path, a video's frames go in as that many images
            (one image token each, in order); False: video inputs are refused for the family.
    """

    family: str
    image_token: str
    llm_module: str = "language_model"
    vision_modules: tuple[str, ...] = ("vision_tower", "multi_modal_projector")
    lora_targets: tuple[str, ...] = DECODER_LINEARS
    padding_side: str = "left"
    transformer_task: str = "feature-extraction"
    requires_remote_code: bool = False
    image_only_processor: str | None = None
    bare_image_token: str | None = None
    one_sample_per_call: bool = False
    video_token: str | None = None
    bare_video_token: str | None = None
    frames_as_images: bool = True

    @property
    def raw_image_token(self) -> str:
        """The token that stands for an image in a raw-text input (:mod:`unime.formats`)."""
        return self.bare_image_token or self.image_token

    @property
    def video_rendering(self) -> str:
        """How a video input is rendered: ``"native"`` (the family's video path), ``"frames"`` (its
        frames as images) or ``"refused"``."""
        if self.video_token is not None:
            return "native"
        return "frames" if self.frames_as_images else "refused"

    def video_placeholder(self, frames: int, raw: bool = False) -> str:
        """The prompt text that stands for one video of ``frames`` frames: the video token, or one
        image token per frame; a ValueError naming the family where videos are refused."""
        if self.video_token is not None:
            return (self.bare_video_token or self.video_token) if raw else self.video_token
        if not self.frames_as_images:
            raise ValueError(f"the {self.family} backbone takes no video inputs (no video path, and its "
                             "processor cannot take a video's frames as images)")
        return (self.raw_image_token if raw else self.image_token) * frames

    def fit_image(self, image: Any, image_processor: Any) -> Any:
        """The image at the size the image processor will resize it to, when resizing it here
        first gives the processor's pixels exactly (the processor's own resize is then a copy);
        otherwise the image as it is. A speed hook: a large image skips the processor's array
        round trip at full size (a VLM2Vec-resized 1344 px photo costs 40 % less to prepare)."""
        return image

    def chat(self, body: str, processor: Any = None) -> str:
        """Wrap a prompt body in the family's chat format (one user turn, then the assistant's)."""
        raise NotImplementedError

    def default_config(self, processor: Any = None, mode: str = "sum") -> UniMEConfig:
        """The UniME prompts for this family, rendered once and stored as plain strings."""
        return UniMEConfig(
            family=self.family,
            text_prompt=self.chat(TEXT_BODY, processor),
            image_prompt=self.chat(IMAGE_BODY.format(image=self.image_token), processor),
            joint_prompt=self.chat(CONTENT_SLOT, processor),
            mode=mode,
            padding_side=self.padding_side,
        )

    def lora_target_regex(self, llm_only: bool) -> str:
        """A peft ``target_modules`` regex: the decoder linears, of the LLM alone or of the whole model."""
        names = "|".join(self.lora_targets)
        module = re.escape(self.llm_module)
        scope = rf"(.*\.)?{module}\..*" if llm_only else ".*"
        return rf"{scope}\.({names})"


def render_chat_template(processor: Any, body: str, image_token: str) -> str:
    """One user turn rendered by the processor's own chat template, with the generation prompt.

    Templates place images themselves (as typed content), so a body that starts with the image
    token becomes an image item followed by the rest of the body as text.
    """
    content: list[dict[str, str]] = []
    image_prefix = f"{image_token}\n"
    if body.startswith(image_prefix):
        content.append({"type": "image"})
        body = body[len(image_prefix) :]
    content.append({"type": "text", "text": body})
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
