"""The one image decoder: files and bytes become images the same way in every command.

``unime encode`` and ``model.encode`` (:func:`unime.inputs.load_image`), stage-2 training rows
(:class:`unime.training.mmeb_data.MMEBTrainCollator`), the evaluators (which pass image paths to
``model.encode``) and the server (:mod:`unime.serve.images`, from request bytes) all decode through
:func:`open_image` and :func:`to_rgb`, and the training readers check headers up front through
:func:`header_problem`. The rules:

- The format is read from the content, never from the file name (PNG bytes named ``.jpg`` work).
- The pixel count in the header is checked before any pixel is decoded: above ``max_pixels``
  (default: PIL's ``Image.MAX_IMAGE_PIXELS``, the decompression-bomb limit, which the server sets
  to its ``max_image_pixels``) the image is refused with :class:`ImageDecodeError` naming it.
- An EXIF orientation is applied (the pixels are turned as a viewer shows them); a broken EXIF
  block is ignored, the pixels are still used.
- Animations (GIF, APNG, WebP) give their first frame.
- 16-bit (and 32-bit integer) greyscale is scaled to 8 bits (``value >> 8``), not clipped at 255.
- :func:`to_rgb` converts every mode to RGB with PIL's own conversion: greyscale is replicated,
  CMYK converted, palettes expanded, and **alpha is dropped** (the colour stored under a transparent
  pixel is kept, as VLM2Vec and Hugging Face's ``convert_rgb`` do), so embeddings match theirs.
- A file that is not an image, or whose data is truncated or corrupt, is refused with
  :class:`ImageDecodeError` (a ValueError) naming it; never a decoder exception from inside PIL.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | bytes

#: ``kind`` of :class:`ImageDecodeError`.
UNREADABLE, CORRUPT, TOO_MANY_PIXELS = "unreadable", "corrupt", "too_many_pixels"


class ImageDecodeError(ValueError):
    """An image that cannot be used. The message names the item and the file; ``kind`` is
    ``"unreadable"`` (not an image of a known format), ``"corrupt"`` (truncated or damaged data) or
    ``"too_many_pixels"`` (above the pixel limit); ``detail`` is the reason alone."""

    def __init__(self, message: str, kind: str, detail: str) -> None:
        super().__init__(message)
        self.kind, self.detail = kind, detail


def _limit(max_pixels: int | None) -> int | None:
    return Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels


def _name(source: ImageSource) -> str:
    return "image bytes" if isinstance(source, bytes) else str(source)


def _fail(where: str, source: ImageSource, kind: str, detail: str, note: str = "") -> ImageDecodeError:
    name = "" if isinstance(source, bytes) else f" {source}"
    return ImageDecodeError(f"{where}: cannot read image{name}: {detail}{note}", kind, detail)


def _open_lazy(source: ImageSource, where: str, formats: tuple[str, ...] | None,
               max_pixels: int | None) -> Image.Image:
    """Open (header only) and check the pixel count, or raise :class:`ImageDecodeError`."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        image = Image.open(handle, formats=formats)
    except Image.DecompressionBombError as error:
        raise _fail(where, source, TOO_MANY_PIXELS, str(error)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        supported = f" (supported formats: {', '.join(formats)})" if formats else ""
        raise _fail(where, source, UNREADABLE, f"not a decodable image{supported}: {error}") from None
    except Exception as error:  # a PIL plugin's parser failing on damaged bytes (struct.error, IndexError, ...)
        raise _fail(where, source, UNREADABLE, f"not a decodable image: {type(error).__name__}: {error}") from None
    limit = _limit(max_pixels)
    width, height = image.size
    if limit is not None and width * height > limit:
        image.close()
        raise _fail(where, source, TOO_MANY_PIXELS, f"image is {width}x{height} = {width * height} pixels",
                    f"; the limit is {limit} (a decompression-bomb guard: PIL.Image.MAX_IMAGE_PIXELS, or the "
                    "server's max_image_pixels)")
    return image


def is_file(path: str | os.PathLike) -> bool:
    """``Path.is_file`` that answers False for a name the system cannot even look up (longer than
    the file-name limit, a NUL byte) instead of raising from inside ``os.stat``."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def header_problem(path: str | os.PathLike, max_pixels: int | None = None) -> str | None:
    """Why ``path`` cannot be used as an image (None when it can), from its header alone: the pixels
    are not decoded, so a truncated file passes here and fails in :func:`open_image`."""
    if not is_file(path):
        return f"image file not found: {path}"
    try:
        _open_lazy(path, "", None, max_pixels).close()
    except ImageDecodeError as error:
        return str(error)[len(": "):]
    return None


def _eight_bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer greyscale scaled to 8 bits (PIL's conversion would clip it at 255)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = image if image.mode == "I" else image.convert("I")
        # 16-bit data (PNG, TIFF) spans 0..65535; ">> 8" maps it onto 0..255.
        return wide.point(lambda value: value / 256).convert("L")
    return image


def open_image(source: ImageSource, where: str = "input", *, formats: tuple[str, ...] | None = None,
               max_pixels: int | None = None, orient: bool = True) -> Image.Image:
    """Decode a file (a path) or bytes: first frame, EXIF orientation applied (``orient=False``:
    the pixels as stored, as ``PIL.Image.open`` gives them), 8 bits per channel.

    The mode is kept (RGB, RGBA, L, LA, P, CMYK, ...): callers that resize before converting (a
    protocol's resize, as VLM2Vec does) do so, then call :func:`to_rgb`. ``formats`` limits the
    PIL plugins tried (the server's common raster formats); ``max_pixels`` the pixel count (None:
    ``Image.MAX_IMAGE_PIXELS``). Raises :class:`ImageDecodeError` naming ``where`` and the file.
    """
    image = _open_lazy(source, where, formats, max_pixels)
    try:
        with image:
            image.seek(0)
            image.load()
            try:
                oriented = ImageOps.exif_transpose(image) if orient else None
            except Exception as error:  # a damaged EXIF block: the pixels are still good
                logger.debug("%s: ignoring unreadable EXIF orientation of %s: %s", where, _name(source), error)
                oriented = None
            result = (oriented if oriented is not None else image).copy()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise _fail(where, source, TOO_MANY_PIXELS, str(error)) from None
    except Exception as error:  # truncated or corrupt pixel data, whatever the plugin raises
        raise _fail(where, source, CORRUPT, f"the image data is corrupt or truncated ({error})") from None
    return _eight_bit(result)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB by PIL's conversion; alpha dropped (see the module docstring), 16-bit greyscale scaled."""
    image = _eight_bit(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_rgb(source: ImageSource, where: str = "input", *, formats: tuple[str, ...] | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """:func:`open_image` then :func:`to_rgb`."""
    return to_rgb(open_image(source, where, formats=formats, max_pixels=max_pixels))
