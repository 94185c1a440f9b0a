"""Settings of the embeddings server: batching, request limits and access control.

Every limit is enforced before the expensive step it protects (the body size before JSON parsing,
the item count before decoding images, the pixel count from the image header before decoding
pixels), so a hostile request costs little more than reading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Configuration of :func:`unime.serve.create_app`.

    Attributes:
        model_name: the id reported by ``/v1/models`` and in responses; a request naming another
            model is refused with 404.
        max_batch_size: most items the model encodes in one call; concurrent requests are merged
            up to this size.
        batch_wait_ms: how long the oldest queued request may wait for others to join its batch.
            A few milliseconds is enough for concurrent clients to meet, and small next to the
            cost of one forward pass.
        max_queued_items: items waiting for the model beyond which new requests get 503, so an
            overloaded server sheds load instead of letting latency grow without bound.
        max_items_per_request: most inputs in one request.
        max_text_chars: most characters in one text or instruction.
        max_image_bytes: most encoded (compressed) bytes of one image.
        max_image_pixels: most pixels (width x height) of one image, read from its header before
            decoding; also installed as PIL's ``Image.MAX_IMAGE_PIXELS`` decompression-bomb guard.
        max_video_frames: most frames in one video item (each frame is an image under the image limits).
        max_body_bytes: most bytes of a request body, counted while reading, chunked bodies
            included.
        api_key: when set, ``/v1/*`` requires ``Authorization: Bearer <api_key>``.
        allow_remote_images: accept ``http(s)://`` image URLs; the host must resolve only to
            public addresses.
        remote_timeout_s: total time allowed to fetch one remote image.
        body_timeout_s: most seconds a request body may take to arrive once the server reads it; a
            client that sends part of a body and stalls gets 408 and its connection is closed.
    """

    model_name: str = "unime"
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_queued_items: int = 4096
    max_items_per_request: int = 256
    max_text_chars: int = 32_768
    max_image_bytes: int = 10 * MIB
    max_image_pixels: int = 4096 * 4096
    max_video_frames: int = 64
    max_body_bytes: int = 64 * MIB
    # Kept out of repr: a logged or printed settings object (a traceback's locals) must not show it.
    api_key: str | None = field(default=None, repr=False)
    allow_remote_images: bool = False
    remote_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.model_name:
            raise ValueError("model_name must be a non-empty string")
        for name in (
            "max_batch_size",
            "max_queued_items",
            "max_items_per_request",
            "max_text_chars",
            "max_image_bytes",
            "max_image_pixels",
            "max_video_frames",
            "max_body_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")
        if self.body_timeout_s <= 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s!r}")
        if self.remote_timeout_s <= 0:
            raise ValueError(f"remote_timeout_s must be > 0, got {self.remote_timeout_s!r}")
        if self.max_queued_items < self.max_items_per_request:
            raise ValueError(
                f"max_queued_items ({self.max_queued_items}) must be >= max_items_per_request "
                f"({self.max_items_per_request}), or a full request could never be queued"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty or blank; leave it unset to disable it")
