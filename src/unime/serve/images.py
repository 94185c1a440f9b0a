"""Decoding request images under size limits.

An image arrives as a ``data:image/...;base64,`` URL, bare base64, or (when allowed) an
``http(s)://`` URL fetched by :mod:`unime.serve.remote`. Three guards apply in order, each before
the work it protects: the decoded byte size is computed from the base64 length before decoding;
the pixel count is read from the image header before the pixels are decoded; and PIL's own
``MAX_IMAGE_PIXELS`` guard (set by the server) backs up the header check inside PIL. Only common
raster formats are opened: PIL plugins such as EPS hand data to external programs.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from PIL import Image

from unime.io.images import TOO_MANY_PIXELS, UNREADABLE, ImageDecodeError, decode_rgb
from unime.serve.errors import APIError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

RemoteFetch = Callable[[str, str], bytes]


@contextmanager
def pixel_guard(max_pixels: int) -> Iterator[None]:
    """Set PIL's process-wide decompression-bomb threshold while the server runs, then restore it.

    PIL warns above ``MAX_IMAGE_PIXELS`` and raises above twice that; the server's own header
    check refuses everything above ``max_pixels`` first, so PIL's guard backs up code paths that
    bypass it. Restoring the previous value keeps an in-process server (tests, notebooks) from
    changing how the rest of the process opens images once it stops.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def load_request_image(
    value: str,
    *,
    param: str,
    max_bytes: int,
    max_pixels: int,
    fetch_remote: RemoteFetch | None,
) -> Image.Image:
    """Turn an ``image`` field into a decoded RGB image, or raise :class:`APIError`.

    ``param`` names the field in error messages (``input[2].image``).
    """
    if value.startswith(("http://", "https://")):
        if fetch_remote is None:
            raise APIError(
                400,
                f"{param}: image URLs are disabled on this server (start it with "
                "--allow-remote-images); send a data URL or base64 instead",
                param=param,
                code="remote_images_disabled",
            )
        data = fetch_remote(value, param)
    else:
        data = decode_base64_image(value, param=param, max_bytes=max_bytes)
    return open_image(data, param=param, max_pixels=max_pixels)


def decode_base64_image(value: str, *, param: str, max_bytes: int) -> bytes:
    """Decode a data URL or bare base64 string, refusing it before decoding if it is too large."""
    payload = value
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        media = header[len("data:") :].split(";")
        if not sep or "base64" not in media[1:]:
            raise APIError(400, f"{param}: a data URL must be 'data:image/<type>;base64,<data>'", param=param)
        if media[0] and not media[0].startswith("image/"):
            raise APIError(400, f"{param}: data URL media type {media[0]!r} is not an image", param=param)
    # Clients often wrap base64 at 76 columns; line breaks carry no data.
    payload = "".join(payload.split())
    decoded_size = len(payload) // 4 * 3 - payload[-2:].count("=")
    if decoded_size > max_bytes:
        raise APIError(
            413,
            f"{param}: image is {decoded_size} bytes; the limit is max_image_bytes={max_bytes}",
            param=param,
            code="max_image_bytes",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise APIError(400, f"{param}: not valid base64 ({error})", param=param) from None
    if not data:
        raise APIError(400, f"{param}: the image is empty", param=param)
    return data


def open_image(data: bytes, *, param: str, max_pixels: int) -> Image.Image:
    """Decode image bytes to RGB after checking the pixel count announced by the header.

    The decoding is :func:`unime.io.images.decode_rgb`, the one every command uses (first frame, EXIF
    orientation, alpha dropped), so a request image embeds as the same file does in ``unime encode``.
    """
    try:
        return decode_rgb(data, param, formats=ALLOWED_FORMATS, max_pixels=max_pixels)
    except ImageDecodeError as error:
        if error.kind == TOO_MANY_PIXELS:
            raise _too_many_pixels(param, max_pixels, error.detail) from None
        if error.kind == UNREADABLE:
            raise APIError(
                400,
                f"{param}: not a decodable image (supported formats: {', '.join(ALLOWED_FORMATS)})",
                param=param,
            ) from None
        raise APIError(400, f"{param}: {error.detail}", param=param) from None


def _too_many_pixels(param: str, max_pixels: int, detail: str) -> APIError:
    return APIError(
        413,
        f"{param}: {detail}; the limit is max_image_pixels={max_pixels}",
        param=param,
        code="max_image_pixels",
    )
