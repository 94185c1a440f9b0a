"""The FastAPI application: ``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /health``; over an
index also ``POST /v1/search``, ``GET /v1/index``, ``GET /v1/items/{n}/image`` and the page at ``/``.

:func:`create_app` wires a model to the dynamic batcher and returns an ASGI app, so tests and
benchmarks run the same server in-process. Request handling runs in this order, cheapest check
first: API key, body size (counted while reading, so a chunked body cannot exceed it either),
JSON and field validation plus image decoding (in a worker thread, so large bodies do not stall
the event loop), then the batched forward pass.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from unime.serve.batcher import DynamicBatcher, EncodeResult, QueueFull
from unime.serve.errors import APIError
from unime.serve.images import pixel_guard
from unime.serve.remote import RemoteImageFetcher
from unime.serve.schema import (
    build_response,
    openapi_operation,
    parse_embedding_request,
    parse_json_body,
    truncate_dimensions,
)
from unime.serve.settings import ServeSettings

logger = logging.getLogger(__name__)


def create_app(
    model: Any, settings: ServeSettings | None = None, index: Any = None, ui: bool = False
) -> FastAPI:
    """Build the embeddings server around ``model`` (anything with the unime ``encode`` contract).

    With ``index`` (a :class:`unime.index.SearchIndex` the model's embeddings fit), the search routes
    are added, and with ``ui`` the search page at ``/`` (docs/search.md). The batcher's worker thread
    starts and stops with the app's lifespan; while the app runs, the image pixel limit is also PIL's
    process-wide ``Image.MAX_IMAGE_PIXELS``.
    """
    settings = settings or ServeSettings()
    # The frames the model samples from a video: a shorter frame list is refused before decoding.
    video_frames = getattr(getattr(model, "unime_config", None), "video_frames", None)
    if ui and index is None:
        raise ValueError("the search page needs an index (unime serve --index DIR --ui)")
    batcher = DynamicBatcher(
        lambda items: model.encode(items, batch_size=settings.max_batch_size, show_progress_bar=False),
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.batch_wait_ms / 1000.0,
        max_queued_items=settings.max_queued_items,
        count_fn=make_token_counter(model),
    )
    fetcher = (
        RemoteImageFetcher(max_bytes=settings.max_image_bytes, timeout_s=settings.remote_timeout_s)
        if settings.allow_remote_images
        else None
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            with pixel_guard(settings.max_image_pixels):
                yield
        finally:
            await run_in_threadpool(batcher.stop)
            if fetcher is not None:
                fetcher.close()

    app = FastAPI(title="unime embeddings", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.settings = settings
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.to_json(), status_code=error.status, headers=error.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        # A bug, not a refusal: still answer in OpenAI's shape (starlette logs the traceback).
        message = f"internal error: {type(error).__name__}"
        return JSONResponse(APIError(500, message).to_json(), status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        status = "ok" if batcher.alive else "unavailable"
        body = {"status": status, "model": settings.model_name, "queued_items": batcher.queued_items}
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    secured: dict[str, Any] = {}
    if settings.api_key is not None:
        secured = {
            "security": [{"bearer": []}],
            "responses": {"401": {"description": "the API key is missing or wrong"}},
        }
        _publish_bearer_scheme(app)

    @app.get("/v1/models", openapi_extra=secured or None)
    async def models(request: Request) -> dict[str, Any]:
        _check_api_key(request, settings.api_key)
        entry = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "unime"}
        return {"object": "list", "data": [entry]}

    operation = openapi_operation(settings)
    if secured:
        operation["security"] = secured["security"]

    @app.post("/v1/embeddings", openapi_extra=operation)
    async def embeddings(request: Request) -> JSONResponse:
        _check_api_key(request, settings.api_key)
        body = await read_limited_body(request, settings.max_body_bytes, settings.body_timeout_s)
        parsed = await run_in_threadpool(
            lambda: parse_embedding_request(parse_json_body(body), settings, fetcher, video_frames)
        )
        result = await _encode(batcher, parsed.items)
        vectors = result.embeddings
        if parsed.dimensions is not None:
            if parsed.dimensions > vectors.shape[1]:
                raise APIError(
                    400,
                    f"'dimensions'={parsed.dimensions} exceeds the model's embedding size {vectors.shape[1]}",
                    param="dimensions",
                )
            vectors = truncate_dimensions(vectors, parsed.dimensions)
        return JSONResponse(build_response(vectors, parsed, settings.model_name, result.tokens))

    if index is not None:
        _add_search_routes(app, index, batcher, settings, fetcher, ui)
    return app


def _add_search_routes(
    app: FastAPI, index: Any, batcher: DynamicBatcher, settings: ServeSettings, fetcher: Any, ui: bool
) -> None:
    """``POST /v1/search``, ``GET /v1/index``, ``GET /v1/items/{n}/image`` and (``ui``) the page at ``/``:
    the same API key, body limits and batcher as ``/v1/embeddings``."""
    from unime.serve.search import index_summary, item_image, page_html, parse_search_request, search_response

    @app.get("/v1/index")
    async def index_info(request: Request) -> dict[str, Any]:
        _check_api_key(request, settings.api_key)
        return {"object": "index", "model": settings.model_name, **index_summary(index)}

    @app.post("/v1/search")
    async def search(request: Request) -> JSONResponse:
        _check_api_key(request, settings.api_key)
        body = await read_limited_body(request, settings.max_body_bytes, settings.body_timeout_s)
        parsed = await run_in_threadpool(
            lambda: parse_search_request(parse_json_body(body), settings, fetcher)
        )
        result = await _encode(batcher, [parsed.item])
        answer = await run_in_threadpool(
            lambda: search_response(index, result.embeddings, parsed, settings.model_name)
        )
        return JSONResponse(answer)

    @app.get("/v1/items/{position}/image")
    async def image(request: Request, position: str) -> FileResponse:
        _check_api_key(request, settings.api_key)
        path, media_type = item_image(index, position)
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    if ui:
        page = page_html(settings.model_name)

        @app.get("/", include_in_schema=False)
        async def home() -> HTMLResponse:
            return HTMLResponse(page, headers={"Content-Security-Policy": _PAGE_POLICY})


# The page loads nothing from elsewhere: its own inline script and style, images from this server
# (fetched as blobs) and the photo a user drops (a data: URL).
_PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; base-uri 'none'")


def _publish_bearer_scheme(app: FastAPI) -> None:
    """Declare the ``Authorization: Bearer`` scheme in the published schema (routes name it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer"}
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _encode(batcher: DynamicBatcher, items: list[Any]) -> EncodeResult:
    """Queue one request's items and wait for its rows, mapping failures to HTTP statuses."""
    try:
        future = batcher.submit(items)
    except QueueFull as error:
        raise APIError(503, str(error), code="max_queued_items", headers={"Retry-After": "1"}) from None
    except RuntimeError as error:
        raise APIError(503, str(error)) from None
    try:
        return await asyncio.wrap_future(future)
    except (ValueError, TypeError) as error:
        # The model refused an input that passed validation (e.g. a prompt too long for it).
        raise APIError(400, f"the model rejected the input: {error}", param="input") from None
    except Exception as error:
        logger.exception("encoding failed")
        raise APIError(500, f"encoding failed: {type(error).__name__}: {error}") from None


async def read_limited_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """Read the body, refusing with 413 as soon as it exceeds ``limit`` bytes, and with 408 when it has
    not all arrived ``timeout_s`` seconds after the handler started reading it.

    A declared Content-Length over the limit is refused before reading anything; a chunked body
    (no Content-Length) is counted while it streams in. The deadline keeps a client that sends part
    of a body and stalls from holding the connection and its request task.
    """
    if timeout_s is None:
        return await _read_body(request, limit)
    try:
        return await asyncio.wait_for(_read_body(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise APIError(
            408, f"the request body did not arrive within body_timeout_s={timeout_s:g} seconds",
            code="body_timeout", headers={"Connection": "close"},
        ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise APIError(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise _body_too_large(int(declared), limit)
    received = bytearray()
    try:
        async for chunk in request.stream():
            received += chunk
            if len(received) > limit:
                raise _body_too_large(None, limit)
    except ClientDisconnect:
        # The client went away mid-body: nobody reads the answer, but it is a refusal, not a crash.
        raise APIError(400, "the client disconnected before sending the whole body") from None
    return bytes(received)


def _body_too_large(size: int | None, limit: int) -> APIError:
    amount = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return APIError(
        413, f"the request body is {amount}; the limit is max_body_bytes={limit}", code="max_body_bytes"
    )


def _check_api_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def make_token_counter(model: Any) -> Callable[[Sequence[Any]], list[int]]:
    """A function giving the number of text tokens (text and instruction) of each input.

    Uses the model's tokenizer when it has one (unwrapping a multimodal processor), else counts
    whitespace-separated words. Image tokens are not counted: their number depends on the backbone
    and the image size, and OpenAI's usage fields have no place for them.
    """
    tokenizer = getattr(model, "tokenizer", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)

    def count(items: Sequence[Any]) -> list[int]:
        texts = [_item_text(item) for item in items]
        if tokenizer is None or not callable(tokenizer):
            return [len(text.split()) for text in texts]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


def _item_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return "\n".join(item[key] for key in ("instruction", "text") if isinstance(item.get(key), str))
    return ""
