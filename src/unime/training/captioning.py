"""Captioning batches and generation: labelled batches for feature alignment's captioning loss, and
greedy captions.

The model's captioning view (its LM head, the caption prompt) is :mod:`unime.captioner`
(:func:`~unime.captioner.load_captioner`, :class:`~unime.captioner.Captioner`). The caption turn is
the model's own chat format (see there); only the caption and the token that ends the turn are
labelled, as in LLaVA's pretraining.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The captioning view of a model lives in unime.captioner (evaluation uses it too); its names are
# kept here for the callers that import them from this module.
from unime.captioner import PROJECTOR as PROJECTOR
from unime.captioner import Captioner as Captioner
from unime.captioner import CaptionFormat as CaptionFormat
from unime.captioner import caption_format as caption_format
from unime.captioner import left_padded as left_padded
from unime.captioner import load_captioner as load_captioner
from unime.config import CAPTION_PROMPT as DEFAULT_PROMPT
from unime.inputs import load_image

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class CaptionCollator:
    """Rows (:class:`~unime.training.caption_data.CaptionRow`) -> a labelled batch for the captioning
    loss: the prompt with the image through the processor, then the caption and end token, right
    padded; ``labels`` are ``IGNORE_INDEX`` everywhere but the caption and end token.

    Images are decoded here; an unreadable one stops the run naming its row, or with
    ``skip_bad_rows`` is left out and counted in ``skipped``.
    """

    processor: Any
    fmt: CaptionFormat
    max_caption_tokens: int = 64
    image_size: int | None = None
    skip_bad_rows: bool = False
    skipped: int = 0

    def __call__(self, rows: Sequence[Any]) -> dict[str, torch.Tensor]:
        images, captions = [], []
        for row in rows:
            try:
                images.append(load_image(row.image, row.where, self.image_size))
            except (FileNotFoundError, ValueError) as error:
                if not self.skip_bad_rows:
                    raise ValueError(str(error)) from None
                self.skipped += 1
                logger.warning("skipping %s", error)
                continue
            captions.append(row.caption)
        if not images:
            raise ValueError(f"no readable image in the batch of {rows[0].where} ... {rows[-1].where}")
        return self.batch(images, captions)

    def batch(self, images: Sequence[Any], captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """The labelled batch of decoded images and their captions."""
        tokenizer = self.processor.tokenizer
        features = dict(self.processor(text=[self.fmt.prompt] * len(images), images=list(images),
                                       return_tensors="pt", padding=True))
        ids, mask = features.pop("input_ids"), features.pop("attention_mask").bool()
        # Per-token extras (e.g. mm_token_type_ids) follow the tokens; captions are text (0).
        per_token = {k: features.pop(k) for k in list(features)
                     if torch.is_tensor(features[k]) and features[k].shape[:2] == ids.shape}
        end_id = tokenizer.convert_tokens_to_ids(self.fmt.end_token)
        caption_ids = tokenizer([self.fmt.separator + c for c in captions], add_special_tokens=False)["input_ids"]
        tails = [list(c[: self.max_caption_tokens]) + [end_id] for c in caption_ids]
        prompts = [ids[i][mask[i]] for i in range(len(images))]
        length = max(len(p) + len(t) for p, t in zip(prompts, tails, strict=True))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
        batch = {"input_ids": torch.full((len(images), length), pad_id, dtype=ids.dtype),
                 "attention_mask": torch.zeros(len(images), length, dtype=torch.long),
                 "labels": torch.full((len(images), length), IGNORE_INDEX, dtype=ids.dtype)}
        batch.update({k: torch.zeros(len(images), length, dtype=v.dtype) for k, v in per_token.items()})
        for i, (prompt, tail) in enumerate(zip(prompts, tails, strict=True)):
            start, stop = len(prompt), len(prompt) + len(tail)
            tail_ids = torch.tensor(tail, dtype=ids.dtype)
            batch["input_ids"][i, :start], batch["input_ids"][i, start:stop] = prompt, tail_ids
            batch["labels"][i, start:stop] = tail_ids
            batch["attention_mask"][i, :stop] = 1
            for key, value in per_token.items():
                batch[key][i, :start] = value[i][mask[i]]
        return {**batch, **features}


@torch.inference_mode()
def generate_captions(
    model: str | Path | Captioner,
    images: Sequence[Any],
    prompt: str = DEFAULT_PROMPT,
    *,
    max_new_tokens: int = 30,
    image_size: int | None = None,
    batch_size: int = 8,
) -> list[str]:
    """Greedy captions of ``images`` (paths or PIL images) by a model folder or a loaded :class:`Captioner`:
    the prompt a model is aligned with, to see what the projector tells the LLM before and after."""
    captioner = model if isinstance(model, Captioner) else load_captioner(model)
    fmt, tokenizer = captioner.caption_format(prompt), captioner.tokenizer
    stop_ids = sorted({tokenizer.convert_tokens_to_ids(fmt.end_token), tokenizer.eos_token_id} - {None})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    captions: list[str] = []
    with left_padded(captioner):  # generation continues every row's end
        for start in range(0, len(images), batch_size):
            chunk = [load_image(image, f"image {start + i}", image_size)
                     for i, image in enumerate(images[start : start + batch_size])]
            features = captioner.processor(text=[fmt.prompt] * len(chunk), images=chunk, return_tensors="pt", padding=True)
            features = {k: v.to(captioner.model.device) if torch.is_tensor(v) else v for k, v in features.items()}
            output = captioner.model.generate(**features, max_new_tokens=max_new_tokens, do_sample=False,
                                              eos_token_id=stop_ids, pad_token_id=pad_id)
            new = output[:, features["input_ids"].shape[1]:]
            captions.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return captions
