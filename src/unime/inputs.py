"""Typed inputs: a text, an image or a video, or a text with either, with an instruction."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

ImageLike = Image.Image | str | os.PathLike
#: A video: a video file's path, or its frames in order (PIL images or image paths).
VideoLike = str | os.PathLike | list[ImageLike] | tuple[ImageLike, ...]

_ALLOWED_KEYS = frozenset({"text", "image", "video", "instruction"})


@dataclass(frozen=True)
class EmbedInput:
    """One item to embed. At least one of ``text``, ``image`` and ``video`` is set.

    ``video`` is a video file's path or a list of frames (PIL images or image paths), sampled to the
    model's ``video_frames`` (docs/video.md); an image and a video in one input are refused.
    ``instruction`` (e.g. "Represent the given image for classification") is only used together
    with a text, an image or a video; MMEB-style texts may carry it inline instead.
    """

    text: str | None = None
    image: ImageLike | None = None
    instruction: str | None = None
    video: VideoLike | None = None

    def __post_init__(self) -> None:
        if self.text is None and self.image is None and self.video is None:
            raise ValueError("an input needs a text, an image or a video")
        if self.text is not None and not isinstance(self.text, str):
            raise ValueError(f"'text' must be a string, got {type(self.text).__name__}")
        if self.text is not None and not self.text.strip() and self.image is None and self.video is None:
            raise ValueError("empty text: there is nothing to embed")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise ValueError(f"'instruction' must be a string, got {type(self.instruction).__name__}")
        if self.image is not None and not isinstance(self.image, (Image.Image, str, os.PathLike)):
            raise ValueError(f"'image' must be a PIL image or a path, got {type(self.image).__name__}")
        if self.video is not None:
            if self.image is not None:
                raise ValueError("an input takes an image or a video, not both")
            if isinstance(self.video, (list, tuple)):
                if not self.video:
                    raise ValueError("'video' is an empty list of frames")
                for index, frame in enumerate(self.video):
                    if not isinstance(frame, (Image.Image, str, os.PathLike)) or frame == "":
                        raise ValueError(f"'video[{index}]' must be a PIL image or an image path, "
                                         f"got {type(frame).__name__}")
            elif not isinstance(self.video, (str, os.PathLike)) or self.video == "":
                raise ValueError("'video' must be a video file's path or a list of frames (PIL images or "
                                 f"image paths), got {type(self.video).__name__}")

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def has_video(self) -> bool:
        return self.video is not None

    @property
    def has_visual(self) -> bool:
        """An image or a video."""
        return self.image is not None or self.video is not None

    @property
    def has_text(self) -> bool:
        return self.text is not None and bool(self.text.strip())


def to_input(item: Any, where: str = "input") -> EmbedInput:
    """Turn a string, a PIL image, a dict or an :class:`EmbedInput` into an :class:`EmbedInput`.

    A bare string is a text (never a path): images given by path go in a dict's ``image`` key,
    videos (a file's path or a list of frames) in its ``video`` key.
    ``where`` names the item in error messages (e.g. ``"rows.jsonl line 3"``).
    """
    try:
        if isinstance(item, EmbedInput):
            return item
        if isinstance(item, str):
            return EmbedInput(text=item)
        if isinstance(item, Image.Image):
            return EmbedInput(image=item)
        if isinstance(item, dict):
            unknown = set(item) - _ALLOWED_KEYS
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_ALLOWED_KEYS)}")
            image = item.get("image")
            if image == "":
                image = None
            return EmbedInput(text=item.get("text"), image=image, instruction=item.get("instruction"),
                              video=item.get("video"))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    raise ValueError(f"{where}: cannot embed an object of type {type(item).__name__}")


def load_image(
    image: ImageLike,
    where: str = "input",
    size: int | None = None,
    resize: Callable[[Image.Image], Image.Image] | None = None,
    orient: bool = True,
) -> Image.Image:
    """Open an image as RGB, with an error that names the item and the file when it fails.

    Files are decoded by :func:`unime.io.images.open_image`, the decoder every command shares (format
    from the content, first frame, EXIF orientation, a decompression-bomb limit, alpha dropped by
    :func:`unime.io.images.to_rgb`); a file that cannot be used is a ValueError
    (:class:`unime.io.images.ImageDecodeError`) naming ``where`` and the file. ``resize`` is applied to
    the image as opened, before the RGB conversion (a protocol's resize,
    :class:`unime.formats.ImageResize`, as VLM2Vec applies it); ``size`` resizes the RGB image to
    a square of that many pixels (bicubic), for callers that train at a fixed size. ``orient=False``
    leaves a file's EXIF orientation unapplied (VLM2Vec's protocol: the pixels as stored).
    """
    from unime.io.images import open_image, to_rgb

    if isinstance(image, Image.Image):
        result = image
    else:
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image file not found: {path}")
        result = open_image(path, where, orient=orient)
    if resize is not None:
        result = resize(result)
    result = to_rgb(result)
    if size is not None and result.size != (size, size):
        result = result.resize((size, size), Image.BICUBIC)
    return result
