"""The captioning view of a UniME model: its LM head and the caption prompt.

A UniME model is loaded by sentence-transformers as the headless MLLM (``LlavaModel``,
``FastVlmModel``): it has no language-model head, and the captioning loss of feature alignment
(:mod:`unime.training.align`) and the next-token analysis (:mod:`unime.evaluation.next_token`) need
one. :func:`load_captioner` loads the same folder as the family's ``*ForConditionalGeneration``
(``AutoModelForImageTextToText``; a unime folder keeps the HF ``config.json`` and weights at its
root) and makes the UniME model use that model's inner MLLM, so both views share one set of
weights: training the captioner trains the embedding model that is saved. unime's saves drop the
head, so it must be tied to the input embeddings (SmolLM2 and most small LLMs tie it); an untied
head that is missing is an error rather than a random head.

The caption turn is the model's own chat format, from the prompts saved with it: the joint prompt
with the image token and the instruction as the user's content (ChatML:
``<|im_start|>user\\n<image>\\nDescribe the image in one sentence.<|im_end|>\\n<|im_start|>assistant\\n``),
then the caption and the token that ends a turn (``<|im_end|>``; the tokenizer's EOS for formats
without one, such as LLaVA-1.5's ``USER: ... ASSISTANT:``).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unime.config import CAPTION_PROMPT as DEFAULT_PROMPT
from unime.config import CONTENT_SLOT

logger = logging.getLogger(__name__)

# What feature alignment trains: the projector from vision features to the LLM's embedding space.
PROJECTOR = "multi_modal_projector"


@dataclass(frozen=True)
class CaptionFormat:
    """How a caption is put after an image: ``prompt + separator + caption + end_token``."""

    prompt: str
    separator: str
    end_token: str

    def text(self, caption: str) -> str:
        return f"{self.prompt}{self.separator}{caption}{self.end_token}"


def caption_format(unime_config: Any, image_token: str, tokenizer: Any, instruction: str) -> CaptionFormat:
    """The caption turn in the chat format of the saved prompts (see the module docstring)."""
    content = f"{image_token}\n{instruction}" if instruction else image_token
    prompt = unime_config.fill_joint(content)
    after_content = unime_config.joint_prompt.split(CONTENT_SLOT, 1)[1]
    # The user's turn ends with the format's end-of-turn token; the assistant's ends alike.
    specials = sorted(set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {})),
                      key=len, reverse=True)
    end = next((token for token in specials if token != image_token and after_content.startswith(token)), None)
    end = end or tokenizer.eos_token
    if not end:
        raise ValueError("the tokenizer has no EOS token and the chat format no end-of-turn token: the caption's "
                         "end cannot be labelled")
    return CaptionFormat(prompt, "" if prompt[-1:].isspace() else " ", end)


@dataclass
class Captioner:
    """A UniME model (prompts, processor, backbone) and its ``*ForConditionalGeneration`` (``model``),
    sharing every weight but the LM head's tie."""

    embedder: Any
    model: Any

    @property
    def processor(self) -> Any:
        return self.embedder[0].processor

    @property
    def tokenizer(self) -> Any:
        return self.embedder[0].tokenizer

    @property
    def backbone(self) -> Any:
        return self.embedder[0].backbone

    def caption_format(self, instruction: str = DEFAULT_PROMPT) -> CaptionFormat:
        return caption_format(self.embedder.unime_config, self.backbone.image_token, self.tokenizer, instruction)

    def projector(self) -> torch.nn.Module:
        """The projector module (the one that alignment trains)."""
        if PROJECTOR not in self.backbone.vision_modules:
            raise ValueError(f"the {self.backbone.family} family has no {PROJECTOR}; feature alignment trains "
                             "the projector of LLaVA-style models (llava, llava_next, llava_onevision, fast_vlm)")
        return self.model.model.get_submodule(PROJECTOR)

    def freeze_all_but_projector(self) -> torch.nn.Module:
        """Freeze the vision tower and the LLM (and the tied head); return the projector, trainable."""
        self.model.requires_grad_(False)
        projector = self.projector()
        projector.requires_grad_(True)
        trainable = sum(p.numel() for p in projector.parameters())
        logger.info("align: the %s learns (%d of %d parameters)", PROJECTOR, trainable,
                    sum(p.numel() for p in self.model.parameters()))
        return projector


def load_captioner(model: str | Path, *, trust_remote_code: bool = False) -> Captioner:
    """Load a UniME model folder (or base MLLM folder / hub id) with its LM head; see the module docstring."""
    from transformers import AutoModelForImageTextToText

    from unime.modeling import load_model

    embedder = load_model(str(model), trust_remote_code=trust_remote_code)
    if embedder.has_adapter:
        raise ValueError(f"{model}: holds an unmerged LoRA adapter; align starts from full weights (save the "
                         "earlier stage with merge: true)")
    headless = embedder.hf_model
    dtype, base_class = next(headless.parameters()).dtype, type(headless)
    # One copy of the weights in memory: the embedder's goes before the captioner's loads.
    embedder.set_hf_model(None)
    del headless
    gc.collect()
    captioner, info = AutoModelForImageTextToText.from_pretrained(
        str(model), dtype=dtype, output_loading_info=True, trust_remote_code=trust_remote_code)
    missing = sorted(info.get("missing_keys", ()))
    if any("lm_head" in key for key in missing):
        raise ValueError(f"{model}: has no language-model head and its head is not tied to the input embeddings "
                         "(unime's saves drop the head); align needs the captioning head: start from the base "
                         "MLLM folder that still has it")
    if missing:
        raise ValueError(f"{model}: weights missing for the captioning model: {', '.join(missing[:5])}")
    if type(captioner.model) is not base_class:
        raise ValueError(f"{model}: the captioning model wraps a {type(captioner.model).__name__}, the embedding "
                         f"model is a {base_class.__name__}; they cannot share weights")
    embedder.set_hf_model(captioner.model)
    return Captioner(embedder, captioner)


@contextmanager
def left_padded(captioner: Captioner) -> Iterator[None]:
    """The captioner in eval mode with its tokenizer padding on the left (every row's prompt ends at the
    last position), the padding side restored afterwards."""
    tokenizer = captioner.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    captioner.model.eval()
    try:
        yield
    finally:
        tokenizer.padding_side = side
