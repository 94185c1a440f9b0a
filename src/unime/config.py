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
# Where a released checkpoint's prompts put the task instruction (Qwen3-VL-Embedding: its system turn).
INSTRUCTION_SLOT = "<instruction>"
# MMEB writes images as ``<|image_1|>`` in the query text, whatever the backbone.
MMEB_IMAGE_PLACEHOLDER = "<|image_1|>"
#: Where a raw (VLM2Vec) text places its video: replaced by the backbone's bare video token(s).
MMEB_VIDEO_PLACEHOLDER = "<|video_1|>"
#: The instruction after the image when a model captions (``unime caption``, ``unime align``).
CAPTION_PROMPT = "Describe the image in one sentence."

MODES = ("sum", "joint")
POOLINGS = ("lasttoken",)
PADDING_SIDES = ("left", "right")


#: The most frames a video input may be sampled to (``video_frames``, ``--video-frames``).
MAX_VIDEO_FRAMES = 64


def check_frames(frames: int) -> int:
    """``frames`` if it is a valid frame count (1 to :data:`MAX_VIDEO_FRAMES`), else a ValueError."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_VIDEO_FRAMES:
        raise ValueError(f"video frames must be an integer from 1 to {MAX_VIDEO_FRAMES}, got {frames!r}")
    return frames


@dataclass
class UniMEConfig:
    """The embedding settings of a UniME model.

    Attributes:
        family: backbone family (the HF ``model_type``), e.g. ``"llava_next"``.
        text_prompt: prompt for a text; ``<sent>`` is replaced by the text.
        image_prompt: prompt for an image, containing the backbone's image token.
        joint_prompt: prompt for an instruction and/or several modalities in one sequence;
            ``<content>`` is replaced by ``image token + instruction + text`` (joined by
            ``content_separator``; the instruction goes to ``<instruction>`` instead where the prompts
            have that slot).
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
        default_instruction: None for UniME's prompts. Set, all three prompts carry an
            ``<instruction>`` slot (a released checkpoint with the task in its system turn,
            Qwen3-VL-Embedding): an input's instruction fills it, stripped and ended with a period
            when its last character is no punctuation (as that release's ``format_model_input``
            does), and this instruction fills it for every input given none (candidates included).
        content_separator: what joins the image token, instruction and text inside ``<content>``:
            a newline for UniME's prompts; ``""`` for a release whose chat template writes an image
            item and the text after it with nothing between (Qwen3-VL-Embedding).
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
    default_instruction: str | None = None
    content_separator: str = "\n"
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
        prompts = {"text_prompt": self.text_prompt, "image_prompt": self.image_prompt,
                   "joint_prompt": self.joint_prompt}
        if self.default_instruction is not None:
            if not self.default_instruction.strip():
                raise ValueError("default_instruction must be a non-empty string or None")
            missing = sorted(name for name, prompt in prompts.items() if INSTRUCTION_SLOT not in prompt)
            if missing:
                raise ValueError(f"default_instruction is set, so every prompt needs {INSTRUCTION_SLOT!r}: "
                                 f"missing in {', '.join(missing)}")
        elif any(INSTRUCTION_SLOT in prompt for prompt in prompts.values()):
            raise ValueError(f"prompts with {INSTRUCTION_SLOT!r} need a default_instruction")
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
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

    @property
    def instruction_in_prompt(self) -> bool:
        """Whether the prompts carry the ``<instruction>`` slot (``default_instruction`` is set)."""
        return self.default_instruction is not None

    def slot_instruction(self, instruction: str | None) -> str:
        """What fills ``<instruction>``: the input's instruction stripped and ended with a period when
        its last character is no punctuation (Unicode category P*), else ``default_instruction``."""
        import unicodedata

        text = (instruction or "").strip()
        if not text:
            if self.default_instruction is None:
                raise ValueError("these prompts have no instruction slot")
            return self.default_instruction
        return text if unicodedata.category(text[-1]).startswith("P") else f"{text}."

    def fill_instruction(self, prompt: str, instruction: str | None = None) -> str:
        """``prompt`` (e.g. ``image_prompt``) with ``instruction`` (or the default) in its
        ``<instruction>`` slot; as it is where the prompts have none."""
        if not self.instruction_in_prompt:
            return prompt
        return prompt.replace(INSTRUCTION_SLOT, self.slot_instruction(instruction))

    def fill_joint(self, content: str, instruction: str | None = None) -> str:
        """``joint_prompt`` with ``content`` in ``<content>``; where the prompts have an
        ``<instruction>`` slot, ``instruction`` (or the default) fills it, each slot filled once."""
        pieces = self.joint_prompt.split(INSTRUCTION_SLOT)
        filled = [piece.replace(CONTENT_SLOT, content) for piece in pieces]
        return self.slot_instruction(instruction).join(filled) if self.instruction_in_prompt else filled[0]

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
