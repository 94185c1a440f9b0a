"""The paper's next-token analysis: what the language model would say right after the image prompt.

UniME embeds an image as the last hidden state of "<image> Summary above image in one word:"; the
LM head applied to that same state is the model's one-word summary. The paper compares the top-k
next tokens of the base MLLM and of UniME: a model whose embedding has learned to discriminate puts
its mass on words that describe the image. :func:`next_token_topk` reads them with the model's tied
or saved LM head (the model loaded as its generation class); :func:`plot_next_tokens` draws one bar
chart per image and model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

TopK = list[tuple[str, float]]


@torch.inference_mode()
def next_token_topk(model: str | Path, images: Sequence[str], *, k: int = 8, batch_size: int = 4,
                    image_size: int | None = None) -> list[TopK]:
    """For each image, the ``k`` most likely next tokens after the model's image prompt, with probabilities."""
    from unime.captioner import left_padded, load_captioner
    from unime.inputs import load_image

    captioner = load_captioner(model)
    config, tokenizer = captioner.embedder.unime_config, captioner.tokenizer
    results: list[TopK] = []
    with left_padded(captioner):  # the last position is every row's prompt end
        for start in range(0, len(images), batch_size):
            chunk = [load_image(path, f"image {start + i}", image_size)
                     for i, path in enumerate(images[start:start + batch_size])]
            features = captioner.processor(text=[config.fill_instruction(config.image_prompt)] * len(chunk), images=chunk,
                                           return_tensors="pt", padding=True)
            logits = captioner.model(**features, use_cache=False).logits[:, -1].float()
            probs = torch.softmax(logits, dim=-1)
            top = probs.topk(k, dim=-1)
            for values, ids in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                results.append([(tokenizer.decode([i]), p) for i, p in zip(ids, values, strict=True)])
    return results


def plot_next_tokens(models: Sequence[tuple[str, list[TopK]]], images: Sequence[str],
                     output: str | os.PathLike[str]) -> Path:
    """A grid: one row per image (the photo, then one bar chart of its top-k tokens per model)."""
    from PIL import Image

    from unime.evaluation.plots import _pyplot, save_figure

    plt = _pyplot()
    rows, cols = len(images), 1 + len(models)
    figure, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for row, path in enumerate(images):
        axes[row][0].imshow(Image.open(path).convert("RGB"))
        axes[row][0].set_axis_off()
        for col, (label, topk) in enumerate(models, start=1):
            tokens, probs = zip(*topk[row], strict=True)
            axis = axes[row][col]
            axis.barh(range(len(tokens))[::-1], probs, color="#4c72b0")
            axis.set_yticks(range(len(tokens))[::-1], [repr(t.strip() or t)[1:-1] for t in tokens], fontsize=7)
            axis.set_xlim(0, max(max(probs) * 1.15, 0.05))
            axis.tick_params(axis="x", labelsize=7)
            if row == 0:
                axis.set_title(label, fontsize=9)
    return save_figure(figure, output, dpi=110)
