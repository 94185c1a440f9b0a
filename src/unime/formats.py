"""How inputs become the backbone's token sequence: the model's UniME prompts, or raw text.

A UniME model renders every input in its saved prompts (chat format, the one-word summary prompt
of the official retrieval scripts). Benchmarks and training may ask for something else: VLM2Vec v1
``eval.py``, which produced UniME's MMEB numbers, feeds the data's string as it is, with
``<|image_1|>`` replaced by the backbone's bare image token, every image resized to a square first,
and a per-backbone ``max_len``. An :class:`InputFormat` states such a choice; the model applies the
one it is given (:meth:`unime.modeling.UniMEModel.using_format`) and saves none of it: a loaded
model always starts with :data:`PROMPTED`, its processor's own image size included.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: ``prompted``: the model's saved prompts; ``raw``: the text verbatim (image placeholder mapped).
STYLES = ("prompted", "raw")

#: VLM2Vec v1 ``--image_resolution``: the square side every image is resized to before the
#: processor; ``none`` resizes only images with a side above :data:`VLM2VEC_MAX_SIDE`.
IMAGE_RESOLUTIONS: dict[str, int | None] = {"high": 1344, "mid": 672, "low": 128, "none": None}
VLM2VEC_MAX_SIDE = 1344

#: The families VLM2Vec v1 has a backbone for (the others get the same rules; docs/evaluation.md).
VLM2VEC_FAMILIES = ("phi3_v", "llava_next", "qwen2_vl", "qwen2_5_vl")
#: Families the VLM2Vec protocol refuses, with the reason: VLM2Vec v1 has no code for them, and the
#: rules it has for their nearest relative (Qwen2-VL's bare image token and sequential image
#: positions) would be a guess, not a reproduction.
VLM2VEC_REFUSED = {
    family: f"VLM2Vec v1 never supported Qwen3-VL ({family}): its eval.py has no backbone for it, so there "
            "is no VLM2Vec input format to reproduce; evaluate with --protocol unime (the model's own "
            "prompts, Qwen3-VL-Embedding's conventions included)"
    for family in ("qwen3_vl", "qwen3_vl_moe")
}
#: ``--max_len`` of UniME's README commands; other families are not truncated.
VLM2VEC_MAX_LENGTH: dict[str, int] = {"phi3_v": 256, "llava_next": 4096}
#: VLM2Vec v1 runs Phi-3.5-V with ``--num_crops 4``, an attribute of its image processor.
VLM2VEC_PHI3_SETTINGS = {"num_crops": 4}


@dataclass(frozen=True)
class ImageResize:
    """A square resize applied to each image as opened, before RGB conversion and the processor.

    ``only_larger``: leave images whose sides are all at most ``size`` untouched (VLM2Vec's
    resolution ``none``). The resampling is PIL's ``Image.resize`` default, as VLM2Vec's
    ``process_image`` calls it (bicubic for RGB images).
    """

    size: int
    only_larger: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"image resize must be a positive number of pixels, got {self.size!r}")

    def __call__(self, image: Any) -> Any:
        if self.only_larger and max(image.size) <= self.size:
            return image
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size))

    def describe(self) -> str:
        return f"{self.size}x{self.size}" + (" when larger" if self.only_larger else "")


@dataclass(frozen=True)
class InputFormat:
    """How the model turns inputs into processor calls.

    Attributes:
        style: ``"prompted"`` (the saved UniME prompts, as the official retrieval and SugarCrepe
            scripts) or ``"raw"`` (the text verbatim with ``<|image_1|>`` mapped to the backbone's
            bare image token, an instruction and the text joined by a newline, nothing else added;
            one sequence per input whatever the model's mode, as VLM2Vec trains and evaluates).
        image_resize: resize every image before the processor; None keeps the processor's own.
        max_length: truncate each sequence to this many tokens (``truncation=True``); None: no limit.
        padding_side: ``"left"``, ``"right"``, ``"tokenizer"`` (the side the folder's tokenizer
            loads with, before the model's saved side replaces it) or None (the model's saved side).
            Pooling reads the last non-padding token of each row, so the side changes an embedding
            only by rounding: in bf16 a left-padded row can differ from the same row alone in the
            last bit.
        processor_kwargs: extra arguments of every processor call (none in the protocols that ship).
        image_processor_settings: attributes set on the image processor during each call (e.g.
            Phi-3.5-V's ``num_crops``), restored afterwards.
        sequential_positions: image tokens take text positions, one after another, instead of the
            backbone's 2-D multimodal RoPE (Qwen2-VL / Qwen2.5-VL): what VLM2Vec v1's own copy of
            those models computes for its raw inputs, since its ``get_rope_index`` starts an image
            only at ``<|vision_start|>``, a token the raw format never writes. No effect on families
            without M-RoPE.
        exif_orientation: turn image files by their EXIF orientation tag (what a viewer shows);
            False keeps the pixels as stored, as VLM2Vec's ``Image.open`` reads them.
    """

    style: str = "prompted"
    image_resize: ImageResize | None = None
    max_length: int | None = None
    padding_side: str | None = None
    processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    image_processor_settings: Mapping[str, Any] = field(default_factory=dict)
    sequential_positions: bool = False
    exif_orientation: bool = True

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"input style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.padding_side not in (None, "left", "right", "tokenizer"):
            raise ValueError(
                f"padding_side must be 'left', 'right', 'tokenizer' or None, got {self.padding_side!r}"
            )
        if self.max_length is not None and (isinstance(self.max_length, bool) or self.max_length <= 0):
            raise ValueError(f"max_length must be a positive integer, got {self.max_length!r}")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the format, for result files and cache keys."""
        return {
            "style": self.style,
            "image_resize": self.image_resize.describe() if self.image_resize else None,
            "max_length": self.max_length,
            "padding_side": self.padding_side,
            "processor_kwargs": {k: self.processor_kwargs[k] for k in sorted(self.processor_kwargs)},
            "image_processor_settings": {
                k: self.image_processor_settings[k] for k in sorted(self.image_processor_settings)
            },
            "sequential_positions": self.sequential_positions,
            "exif_orientation": self.exif_orientation,
        }


#: The model's own prompts, the processor's own image size: what a loaded model starts with.
PROMPTED = InputFormat()


def resolution_resize(image_resolution: str) -> ImageResize:
    """VLM2Vec v1's ``process_image`` for one ``--image_resolution`` value."""
    if image_resolution not in IMAGE_RESOLUTIONS:
        raise ValueError(
            f"image resolution must be one of {', '.join(IMAGE_RESOLUTIONS)}, got {image_resolution!r}"
        )
    size = IMAGE_RESOLUTIONS[image_resolution]
    return ImageResize(VLM2VEC_MAX_SIDE, only_larger=True) if size is None else ImageResize(size)


def vlm2vec_format(family: str, image_resolution: str = "high", max_length: int | None = None) -> InputFormat:
    """The input format of VLM2Vec v1 ``eval.py`` for a backbone family (docs/evaluation.md, "MMEB").

    Raw text; images resized per ``image_resolution`` except for Phi-3.5-V (its processor gets them
    as opened); ``max_length`` defaults to the README's ``--max_len`` (Phi-3.5-V 256, LLaVA-1.6
    4096, no truncation otherwise); Phi-3.5-V gets ``num_crops`` 4; rows are padded on the side
    the folder's tokenizer loads with (``processor.tokenizer.pad``). Every other processor setting
    is the model folder's own (Qwen2-VL's pixel bounds included): ``eval.py``
    builds the processor with ``AutoProcessor.from_pretrained(model)``; the ``min_pixels`` /
    ``max_pixels`` of VLM2Vec's ``load_processor`` belong to its demos, never to ``eval.py``.
    Qwen2-VL and Qwen2.5-VL image tokens take sequential text positions (``sequential_positions``);
    image files are read as stored, their EXIF orientation not applied (``Image.open``).
    A family in :data:`VLM2VEC_REFUSED` (Qwen3-VL) is a ValueError that says why.
    """
    if family in VLM2VEC_REFUSED:
        raise ValueError(f"the vlm2vec MMEB protocol cannot embed a {family} model: {VLM2VEC_REFUSED[family]}")
    resize = None if family == "phi3_v" else resolution_resize(image_resolution)
    if max_length is None:
        max_length = VLM2VEC_MAX_LENGTH.get(family)
    processor_kwargs: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    if family == "phi3_v":
        settings.update(VLM2VEC_PHI3_SETTINGS)
    return InputFormat(
        style="raw",
        image_resize=resize,
        max_length=max_length,
        padding_side="tokenizer",
        processor_kwargs=processor_kwargs,
        image_processor_settings=settings,
        sequential_positions=family in ("qwen2_vl", "qwen2_5_vl"),
        exif_orientation=False,
    )


def training_format(style: str = "raw", image_size: int | None = None) -> InputFormat:
    """The format stage-2 training feeds (``input_format`` and ``image_size`` of the recipe)."""
    return InputFormat(style=style, image_resize=ImageResize(image_size) if image_size else None)
