"""Everything needed to reproduce an embedding, saved beside the weights.

The prompts are stored as complete strings (chat format included), so an embedding can be
reproduced from the saved file alone, whatever version of unime or of the backbone's chat template
is installed later.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any

logger = logging.getLogger(__name__)

# Placeholders inside the saved prompt strings. ``<sent>`` is the official UniME placeholder.
TEXT_SLOT = "<sent>"
CONTENT_SLOT = "<content>"
# MMEB writes images as ``<|image_1|>`` in the query text, whatever the backbone.
MMEB_IMAGE_PLACEHOLDER = "<|image_1|>"
#: Where a raw (VLM2Vec) text places its video: replaced by the backbone's bare video token(s).
MMEB_VIDEO_PLACEHOLDER = "<|video_1|>"
#: The instruction after the image when a model captions (``unime caption``, ``unime align``).
CAPTION_PROMPT = "Describe the image in one sentence."

MODES = ("sum", "joint")
POOLINGS = ("lasttoken",)
PADDING_SIDES = ("left", "right")


@dataclass
class UniMEConfig:
    """The embedding settings of a UniME model.

    Attributes:
        family: backbone family (the HF ``model_type``), e.g. ``"llava_next"``.
        text_prompt: prompt for a text; ``<sent>`` is replaced by the text.
        image_prompt: prompt for an image, containing the backbone's image token.
        joint_prompt: prompt for an instruction and/or several modalities in one sequence;
            ``<content>`` is replaced by ``image token + instruction + text``.
        mode: how an input with both text and image is embedded: ``"sum"`` (each part with its own
            prompt, embeddings summed, as the paper's stage-1 inference) or ``"joint"`` (one
            sequence, as stage 2 and MMEB).
        pooling: ``"lasttoken"``: the last hidden state at the last real position.
        normalize: L2-normalise embeddings (similarity = dot product).
        padding_side: ``"left"`` as the official evaluation scripts.
        image_size: the square size (pixels) training resized images to, e.g. 336 as in the
            paper's stage 2; recorded for reproduction and NOT applied at inference, where images
            go to the processor as they are (a released checkpoint embeds with its processor's own
            resizing) unless an input format asks for a resize (:mod:`unime.formats`).
        stages: training stages applied so far, e.g. ``["distill", "tune"]``.
        matryoshka_dims: the nested embedding sizes training optimised (Matryoshka), largest first,
            e.g. ``[576, 256, 64]``; None when trained at the full size only. Truncating to one of
            them (``dimensions``) is what training prepared; another size is allowed with a warning.
        video_frames: the frames a video input is sampled to, uniformly over the clip or the list
            of frames (docs/video.md); part of what an embedding is, so saved with the model.
        unime_version: version that wrote the file.
        extra: unknown keys read from a newer file, kept and written back unchanged.
    """

    family: str
    text_prompt: str
    image_prompt: str
    joint_prompt: str
    mode: str = "sum"
    pooling: str = "lasttoken"
    normalize: bool = True
    padding_side: str = "left"
    image_size: int | None = None
    stages: list[str] = field(default_factory=list)
    matryoshka_dims: list[int] | None = None
    video_frames: int = 8
    unime_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        if TEXT_SLOT not in self.text_prompt:
            raise ValueError(f"text_prompt must contain {TEXT_SLOT!r}: {self.text_prompt!r}")
        if CONTENT_SLOT not in self.joint_prompt:
            raise ValueError(f"joint_prompt must contain {CONTENT_SLOT!r}: {self.joint_prompt!r}")
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        from unime.io.video import check_frames

        check_frames(self.video_frames)
        if self.matryoshka_dims is not None:
            dims = self.matryoshka_dims
            if (not isinstance(dims, list) or not dims or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0
                                                              for d in dims) or len(set(dims)) != len(dims)):
                raise ValueError(f"matryoshka_dims must be a list of distinct positive integers, got {dims!r}")
            self.matryoshka_dims = sorted(dims, reverse=True)
        if not self.unime_version:
            from unime import __version__

            self.unime_version = __version__

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UniMEConfig:
        """Read a saved config; keys written by a newer unime are kept in ``extra``, not lost."""
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = {k: v for k, v in data.items() if k not in known}
        if unknown:
            logger.info("unime config: keeping unknown keys from a newer version: %s", sorted(unknown))
        return cls(**{k: v for k, v in data.items() if k in known}, extra=unknown)
