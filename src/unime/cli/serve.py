"""``unime serve``: an OpenAI-compatible embeddings server for a unime model (docs/serving.md)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from unime.choices import DTYPES
from unime.cli import DIMENSIONS_HELP, DTYPE_HELP, CLIError

if TYPE_CHECKING:
    from unime.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

API_KEY_ENV = "UNIME_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve POST /v1/embeddings (OpenAI schema, plus images) for a model",
        description="Serve a unime model over HTTP: POST /v1/embeddings, GET /v1/models, GET /health. "
        "Needs the 'serve' extra (fastapi, uvicorn).",
    )
    parser.add_argument(
        "--model", required=True, help="saved unime model, base MLLM or adapter (path or hub id)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", help="id reported to clients (default: the model folder name)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: the library's choice)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--dimensions", type=int, default=None, metavar="N", help=DIMENSIONS_HELP)
    parser.add_argument("--mode", choices=("sum", "joint"), help="override the saved text+image mode")
    parser.add_argument("--video-frames", type=int, default=None, metavar="N",
                        help="frames sampled uniformly from each video (default: the model's video_frames, 8)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow hub remote code (Phi-3.5-V)")
    parser.add_argument(
        "--api-key", help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV} if set)"
    )
    group = parser.add_argument_group("batching and limits")
    group.add_argument("--max-batch-size", type=int, default=32, help="items per forward pass")
    group.add_argument("--batch-wait-ms", type=float, default=5.0, help="wait for concurrent requests")
    group.add_argument("--max-queued-items", type=int, default=4096, help="beyond this, 503")
    group.add_argument("--max-items", type=int, default=256, help="inputs per request")
    group.add_argument("--max-text-chars", type=int, default=32_768, help="characters per text")
    group.add_argument("--max-image-bytes", type=int, default=10 * 2**20, help="encoded bytes per image")
    group.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="pixels per image")
    group.add_argument("--max-video-frames", type=int, default=64, help="frames per video item")
    group.add_argument("--max-body-bytes", type=int, default=64 * 2**20, help="bytes per request body")
    group.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="accept http(s) image URLs (fetched only from public addresses)",
    )
    group.add_argument("--remote-timeout", type=float, default=10.0, help="seconds per remote image")
    group.add_argument("--body-timeout", type=float, default=30.0,
                       help="seconds a request body may take to arrive (then 408)")
    search = parser.add_argument_group("search")
    search.add_argument("--index", help="an index folder (unime index): adds POST /v1/search and GET /v1/index")
    search.add_argument("--ui", action="store_true", help="serve the search page at / (needs --index)")
    parser.set_defaults(func=handler)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The server settings an invocation asks for (raises ValueError naming a bad option)."""
    from unime.serve.settings import ServeSettings

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    name = args.served_model_name or Path(args.model.rstrip("/")).name or args.model
    try:
        return ServeSettings(
            model_name=name,
            max_batch_size=args.max_batch_size,
            batch_wait_ms=args.batch_wait_ms,
            max_queued_items=args.max_queued_items,
            max_items_per_request=args.max_items,
            max_text_chars=args.max_text_chars,
            max_image_bytes=args.max_image_bytes,
            max_image_pixels=args.max_image_pixels,
            max_video_frames=args.max_video_frames,
            max_body_bytes=args.max_body_bytes,
            api_key=api_key,
            allow_remote_images=args.allow_remote_images,
            remote_timeout_s=args.remote_timeout,
            body_timeout_s=args.body_timeout,
        )
    except ValueError as error:
        raise CLIError(f"invalid server option: {error}") from None


def handler(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    settings = settings_from_args(args)
    if args.video_frames is not None:
        from unime.io.video import check_frames

        try:
            check_frames(args.video_frames)
        except ValueError as error:
            raise CLIError(f"--video-frames: {error}") from None
    if args.ui and not args.index:
        raise CLIError("--ui needs --index DIR: the page searches an index (build one with unime index)")
    try:
        import uvicorn

        from unime.serve import create_app
    except ImportError as error:
        raise CLIError(
            f"{error.name} is missing: install the server extra, pip install 'unime[serve]'"
        ) from None
    if settings.api_key is None and not _is_loopback(args.host):
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)

    index = None
    if args.index:  # checked before the model loads: a bad index costs nothing
        from unime.cli.index import require_faiss
        from unime.index import open_index

        require_faiss()
        index = open_index(args.index)

    import unime
    from unime.environment import resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)
    model = unime.load(
        args.model,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        dtype=dtype,
        mode=args.mode,
    )
    if args.dimensions is not None:
        model.set_dimensions(args.dimensions)
    if args.video_frames is not None:
        model.update_config(video_frames=args.video_frames)
    if index is not None:
        from unime.serve.search import check_index_fits

        check_index_fits(index, model.get_embedding_dimension())
        logger.info("searching %s: %d items (%s index)", args.index, len(index), index.manifest["index"]["kind"])
    app = create_app(model, settings, index=index, ui=args.ui)
    logger.info("serving %s as %r in %s on http://%s:%d", args.model, settings.model_name, dtype, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
