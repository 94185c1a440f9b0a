"""The OpenAI-style embeddings server (the ``serve`` extra: fastapi, uvicorn, httpx).

``create_app(model, settings)`` returns a FastAPI app serving ``POST /v1/embeddings``,
``GET /v1/models`` and ``GET /health``; ``unime serve`` runs it with uvicorn. See docs/serving.md.
"""

from __future__ import annotations

from unime.serve.app import create_app
from unime.serve.background import BackgroundServer
from unime.serve.settings import ServeSettings

__all__ = ["BackgroundServer", "ServeSettings", "create_app"]
