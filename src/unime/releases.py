"""The released embedding checkpoints unime knows, and what loading one implies.

A plain transformers folder carries no unime settings. Released embedding checkpoints embed with
their own conventions, which unime applies when it recognises one by its hub id, given as it is
or as the hub cache keeps it on disk (``.../models--OWNER--NAME/snapshots/REVISION``); a folder's
own name never decides (a copy elsewhere loads as a plain folder, with the family's UniME prompts).

- UniME's checkpoints (arXiv 2504.17432) are instruction tuned (stage 2): an input with both text
  and image is embedded as one joint sequence, as their evaluation scripts do; the family's UniME
  prompts otherwise.
- Qwen3-VL-Embedding (arXiv 2601.04720; the model cards of ``Qwen/Qwen3-VL-Embedding-2B`` / ``-8B``
  and the ``Qwen3VLEmbedder`` of github.com/QwenLM/Qwen3-VL-Embedding): every input is one chat
  whose system turn holds the instruction (``Represent the user's input.`` for an input given none:
  candidates, documents), whose user turn holds the image then the text with nothing between, and
  that ends with the generation prompt ``<|im_start|>assistant\\n``; the embedding is the final
  normed hidden state at the last attended token, L2-normalised; images are resized to between
  4,096 and 1,843,200 pixels in multiples of 32; Matryoshka sizes as :data:`QWEN3_VL_EMBEDDING_DIMS`.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Qwen3-VL-Embedding's instruction for an input given none (``Qwen3VLEmbedder.__init__``).
QWEN3_VL_EMBEDDING_INSTRUCTION = "Represent the user's input."
_QWEN3_SYSTEM = "<|im_start|>system\n<instruction><|im_end|>\n"
_QWEN3_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
#: The saved prompts of a Qwen3-VL-Embedding checkpoint: its chat template's rendition of a system
#: turn (the instruction) and one user turn, then the generation prompt.
QWEN3_VL_EMBEDDING_PROMPTS = {
    "text_prompt": f"{_QWEN3_SYSTEM}<|im_start|>user\n<sent>{_QWEN3_ASSISTANT}",
    "image_prompt": f"{_QWEN3_SYSTEM}<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{_QWEN3_ASSISTANT}",
    "joint_prompt": f"{_QWEN3_SYSTEM}<|im_start|>user\n<content>{_QWEN3_ASSISTANT}",
}
#: Matryoshka sizes per checkpoint, largest first: the sizes the Qwen3-VL-Embedding repository's
#: MRL table lists (the model cards allow any size from 64 to the full width).
QWEN3_VL_EMBEDDING_DIMS = {
    "2B": (2048, 1536, 1024, 768, 512, 256),
    "8B": (4096, 3072, 2048, 1536, 1024, 768, 512, 256),
}
#: ``Qwen3VLEmbedder``'s image bounds (MIN_PIXELS 4 x 32 x 32, MAX_PIXELS 1800 x 32 x 32): its
#: ``process_vision_info`` resizes each image to them, and the processor then leaves it as it is.
QWEN3_VL_EMBEDDING_PIXELS = (4 * 32 * 32, 1800 * 32 * 32)


@dataclass(frozen=True)
class Release:
    """A released checkpoint and the conventions it embeds with.

    Attributes:
        hub_id: the hub id, as its owners spell it.
        family: the ``model_type`` of its config.
        mode: how an input with both text and image is embedded (``joint``: one sequence).
        prompts: the saved prompts (``text_prompt``, ``image_prompt``, ``joint_prompt``) when the
            release has its own; None: the family's UniME prompts.
        default_instruction, content_separator: :class:`unime.config.UniMEConfig` settings.
        matryoshka_dims: the embedding sizes it was trained to be cut to, largest first.
        image_pixels: ``(min, max)`` pixels its own code resizes images to (Qwen-VL image processors'
            ``size``), or None to keep the folder's processor settings.
    """

    hub_id: str
    family: str
    mode: str = "joint"
    prompts: dict[str, str] | None = None
    default_instruction: str | None = None
    content_separator: str = "\n"
    matryoshka_dims: tuple[int, ...] | None = None
    image_pixels: tuple[int, int] | None = None

    def unime_config(self) -> dict[str, Any] | None:
        """The unime config a model of this release starts with, or None (the family's defaults)."""
        if self.prompts is None:
            return None
        return {"family": self.family, **self.prompts, "mode": self.mode,
                "default_instruction": self.default_instruction, "content_separator": self.content_separator,
                "matryoshka_dims": list(self.matryoshka_dims) if self.matryoshka_dims else None}


RELEASES = (
    Release("DeepGlint-AI/UniME-Phi3.5-V-4.2B", "phi3_v"),
    Release("DeepGlint-AI/UniME-LLaVA-1.6-7B", "llava_next"),
    Release("DeepGlint-AI/UniME-LLaVA-OneVision-7B", "llava_onevision"),
    *(Release(f"Qwen/Qwen3-VL-Embedding-{size}", "qwen3_vl", prompts=QWEN3_VL_EMBEDDING_PROMPTS,
              default_instruction=QWEN3_VL_EMBEDDING_INSTRUCTION, content_separator="",
              matryoshka_dims=dims, image_pixels=QWEN3_VL_EMBEDDING_PIXELS)
      for size, dims in QWEN3_VL_EMBEDDING_DIMS.items()),
)
#: Hub ids of the released checkpoints unime recognises.
RELEASED_CHECKPOINTS = tuple(release.hub_id for release in RELEASES)
_BY_KEY = {release.hub_id.casefold(): release for release in RELEASES}


def find_release(name_or_path: str) -> Release | None:
    """The release ``name_or_path`` names, else None: the hub id itself (hub ids are
    case-insensitive), or a folder inside the hub cache's ``models--OWNER--NAME``."""
    found = _BY_KEY.get(str(name_or_path).casefold())
    if found is not None:
        return found
    for part in Path(name_or_path).parts:
        if part.startswith("models--"):
            return _BY_KEY.get(part[len("models--"):].replace("--", "/").casefold())
    return None


def released_checkpoint(name_or_path: str) -> str | None:
    """The hub id of the release ``name_or_path`` names, else None (see :func:`find_release`)."""
    release = find_release(name_or_path)
    return release.hub_id if release else None


def default_mode(name_or_path: str) -> str | None:
    """The release's mode (``joint`` for every release so far), else None (the model's own or the default)."""
    release = find_release(name_or_path)
    return release.mode if release else None
