"""The one video decoder: a video file or a list of frames becomes N RGB frames the same way in
every command (``model.encode``, ``unime encode``, the server, stage-2 training rows).

The rules (docs/video.md):

- **Sampling.** ``N`` frames (the model's ``video_frames``, 8 by default) are taken uniformly over
  the ``n`` frames of the clip or of the list: the indices ``numpy.linspace(0, n - 1, N).round()``
  (:func:`sample_indices`), first and last frame included. ``n < N`` is an error naming the file
  or the item (frames are never repeated to make up the count).
- **Files** are decoded with PyAV (FFmpeg): the first video stream, every frame decoded once to
  count them (the container's frame count is not trusted), then the sampled frames decoded again
  and converted to RGB. The container format is read from the content, not from the name.
- **Frames lists** are decoded frame by frame with the image decoder
  (:func:`unime.inputs.load_image`: same formats, orientation and limits as an ``image``); only the
  sampled frames are opened.
- **Limits**, each refused with :class:`VideoDecodeError` (a ValueError) naming the item and the
  file: the file's size (``max_bytes``, :data:`MAX_VIDEO_BYTES` by default), the frames in a file
  (:data:`MAX_VIDEO_FILE_FRAMES`), a frame's pixels (the image limit, ``PIL.Image.MAX_IMAGE_PIXELS``
  unless given), and ``N`` itself (1 to :data:`MAX_VIDEO_FRAMES`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unime.config import MAX_VIDEO_FRAMES, check_frames  # noqa: F401  (the frame-count rule lives with the setting)

#: Frames sampled from a video when the model's config does not say otherwise (VLM2Vec-V2's default).
DEFAULT_VIDEO_FRAMES = 8
#: The most frames one video may be sampled to (Qwen3-VL-Embedding samples 64).
#: The largest video file decoded (bytes).
MAX_VIDEO_BYTES = 512 * 1024 * 1024
#: The most frames a video file may hold (about 55 minutes at 30 frames per second).
MAX_VIDEO_FILE_FRAMES = 100_000

#: ``kind`` of :class:`VideoDecodeError`.
UNREADABLE, TOO_FEW_FRAMES, TOO_LARGE = "unreadable", "too_few_frames", "too_large"


class VideoDecodeError(ValueError):
    """A video that cannot be used; the message names the item and the file. ``kind``:
    ``"unreadable"`` (not a decodable video), ``"too_few_frames"`` (fewer frames than asked) or
    ``"too_large"`` (over a size, frame-count or pixel limit)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def sample_indices(total: int, frames: int) -> list[int]:
    """The ``frames`` indices sampled uniformly from ``total`` frames: ``numpy.linspace(0, total - 1,
    frames).round()`` (first and last included; NumPy rounds halves to even). ``total < frames`` is
    a ValueError (the callers name the file)."""
    check_frames(frames)
    if total < frames:
        raise ValueError(f"has {total} frame{'s' * (total != 1)}, fewer than the {frames} asked")
    return [int(i) for i in np.linspace(0, total - 1, frames).round()]


def _video_stream(container: Any) -> Any:
    streams = container.streams.video
    if not streams:
        raise ValueError("no video stream")
    stream = streams[0]
    stream.thread_type = "AUTO"
    return stream


def decode_video(path: str | os.PathLike, frames: int, where: str = "input", *,
                 max_bytes: int | None = None, max_pixels: int | None = None) -> list[Image.Image]:
    """``frames`` RGB frames sampled uniformly (:func:`sample_indices`) from a video file, decoded
    with PyAV. Raises FileNotFoundError or :class:`VideoDecodeError` naming ``where`` and the file."""
    try:
        import av
    except ImportError:  # pragma: no cover - the video extra is missing
        raise ImportError("video files are decoded with PyAV: pip install 'unime[video]'") from None
    path = Path(path)
    check_frames(frames)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: video file not found: {path}")
    size = path.stat().st_size
    byte_limit = MAX_VIDEO_BYTES if max_bytes is None else max_bytes
    if size > byte_limit:
        raise VideoDecodeError(f"{where}: video {path} is {size} bytes; the limit is {byte_limit}", TOO_LARGE)
    pixel_limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels

    def fail(detail: str, kind: str = UNREADABLE) -> VideoDecodeError:
        return VideoDecodeError(f"{where}: cannot read video {path}: {detail}", kind)

    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container)
            width, height = stream.codec_context.width, stream.codec_context.height
            if pixel_limit is not None and width * height > pixel_limit:
                raise fail(f"frames are {width}x{height} = {width * height} pixels; the limit is {pixel_limit}",
                           TOO_LARGE)
            total = 0
            for _ in container.decode(stream):
                total += 1
                if total > MAX_VIDEO_FILE_FRAMES:
                    raise fail(f"more than {MAX_VIDEO_FILE_FRAMES} frames", TOO_LARGE)
        try:
            wanted = sample_indices(total, frames)
        except ValueError as error:
            raise fail(str(error), TOO_FEW_FRAMES) from None
        picked: dict[int, Image.Image] = {}
        targets = set(wanted)
        with av.open(str(path)) as container:
            stream = _video_stream(container)
            for index, frame in enumerate(container.decode(stream)):
                if index in targets:
                    if pixel_limit is not None and frame.width * frame.height > pixel_limit:
                        raise fail(f"frame {index} is {frame.width}x{frame.height} pixels; the limit is {pixel_limit}",
                                   TOO_LARGE)
                    picked[index] = frame.to_image().convert("RGB")
                if index >= wanted[-1]:
                    break
    except VideoDecodeError:
        raise
    except Exception as error:  # av.error.FFmpegError and its kin: not a video, or damaged data
        raise fail(f"not a decodable video: {type(error).__name__}: {error}") from None
    if len(picked) != len(targets):
        raise fail(f"decoded {len(picked)} of the {len(targets)} sampled frames (the data changed or is damaged)")
    return [picked[index] for index in wanted]


def load_video(video: str | os.PathLike | Sequence[Any], frames: int, where: str = "input", *,
               max_bytes: int | None = None, max_pixels: int | None = None) -> list[Image.Image]:
    """``frames`` RGB frames of a video given as a file path (:func:`decode_video`) or as a list of
    frames (PIL images or image paths, decoded as image files are, each named
    ``{where}: video[i]``); sampled uniformly either way (:func:`sample_indices`)."""
    if isinstance(video, (str, os.PathLike)):
        return decode_video(video, frames, where, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        wanted = sample_indices(len(video), frames)
    except ValueError as error:
        raise VideoDecodeError(f"{where}: the video's frame list {error}", TOO_FEW_FRAMES) from None
    result = []
    for index in wanted:
        frame = video[index]
        name = f"{where}: video[{index}]"
        if isinstance(frame, Image.Image):
            result.append(_to_rgb(frame))
        else:
            result.append(_opened(frame, name) if max_pixels is None else _limited(frame, name, max_pixels))
    return result


def _to_rgb(frame: Image.Image) -> Image.Image:
    from unime.io.images import to_rgb

    return to_rgb(frame)


def _opened(frame: Any, where: str) -> Image.Image:
    """A frame file opened as an image is (:func:`unime.io.images.open_image`, EXIF orientation applied)."""
    from unime.io.images import open_image, to_rgb

    path = Path(frame)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file not found: {path}")
    return to_rgb(open_image(path, where))


def _limited(frame: Any, where: str, max_pixels: int) -> Image.Image:
    from unime.io.images import open_image, to_rgb

    if not Path(frame).is_file():
        raise FileNotFoundError(f"{where}: image file not found: {frame}")
    return to_rgb(open_image(frame, where, max_pixels=max_pixels))
