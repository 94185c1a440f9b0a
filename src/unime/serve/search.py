"""Search over an index from the server: ``POST /v1/search``, ``GET /v1/index``, item images, and the page.

A search request is an embeddings request with one input plus how many results and which items:
``{"input": "a dog on a beach" | {"text", "image", "instruction"}, "top_k": 10, "target": "images"}``.
The input goes through the same parsing, limits and image decoding as ``/v1/embeddings``
(:func:`unime.serve.schema.parse_embedding_request`), and through the same batcher, so searches and
embedding requests share the model and its queue. Results never show the server's file paths: an
item with a photo carries ``image_url``, ``/v1/items/{n}/image``, which serves only files the index
lists.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from unime.index import TARGETS, SearchIndex
from unime.serve.errors import APIError
from unime.serve.images import RemoteFetch
from unime.serve.schema import parse_embedding_request, truncate_dimensions
from unime.serve.settings import ServeSettings

MAX_TOP_K = 100


@dataclass(frozen=True)
class SearchRequest:
    item: Any
    top_k: int
    target: str


def parse_search_request(
    payload: dict[str, Any], settings: ServeSettings, fetch_remote: RemoteFetch | None
) -> SearchRequest:
    """Validate a search request (raises :class:`APIError` naming the field)."""
    top_k = payload.get("top_k", 10)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise APIError(400, f"'top_k' must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}", param="top_k")
    target = payload.get("target", "all")
    if target not in TARGETS:
        raise APIError(400, f"'target' must be one of {list(TARGETS)}, got {target!r}", param="target")
    if "input" not in payload:
        raise APIError(400, "the request has no 'input' field (the query: a text or an object)", param="input")
    query = payload["input"]
    if isinstance(query, list):
        raise APIError(400, "'input' must be one query (a string or an object), not a list", param="input")
    parsed = parse_embedding_request({"input": query, "model": payload.get("model")}, settings, fetch_remote)
    return SearchRequest(item=parsed.items[0], top_k=top_k, target=target)


def check_index_fits(index: SearchIndex, width: int | None) -> None:
    """Refuse to serve an index whose vectors the model cannot produce (named at start-up)."""
    if width is None:
        return
    if width < index.dimensions:
        raise ValueError(
            f"the model gives embeddings of {width} values but the index at {index.folder} holds "
            f"{index.dimensions}: serve the index's model ({index.model}) at its size")
    if width > index.dimensions and not index.manifest.get("truncated_to"):
        raise ValueError(
            f"the model gives embeddings of {width} values but the index at {index.folder} holds "
            f"{index.dimensions} and was not built truncated: serve the index's model ({index.model})")


def search_response(index: SearchIndex, vectors: np.ndarray, request: SearchRequest, model_name: str) -> dict[str, Any]:
    if vectors.shape[1] > index.dimensions:  # a Matryoshka index: queries truncated as its vectors were
        vectors = truncate_dimensions(vectors, index.dimensions)
    hits = index.search(vectors, k=request.top_k, target=request.target)[0]
    data = []
    for hit in hits:
        row: dict[str, Any] = {"rank": hit.rank, "score": hit.score, "id": hit.item["id"], "kind": hit.item["kind"]}
        for key in ("text", "instruction", "meta"):
            if key in hit.item:
                row[key] = hit.item[key]
        if "image" in hit.item:
            row["image_url"] = f"/v1/items/{hit.position}/image"
        data.append(row)
    return {"object": "list", "model": model_name, "target": request.target, "data": data}


def index_summary(index: SearchIndex) -> dict[str, Any]:
    manifest = index.manifest
    return {"count": len(index), "dimensions": index.dimensions, "kinds": manifest.get("kinds", {}),
            "index": manifest["index"]["kind"], "images": index.count("images"), "texts": index.count("texts")}


def item_image(index: SearchIndex, position_text: str) -> tuple[Path, str]:
    """The file and media type of item ``position``'s photo; 404 for anything the index does not list."""
    position = int(position_text) if position_text.lstrip("-").isdigit() else None
    if position is None:
        raise APIError(404, f"no item {position_text!r}: items are numbered 0 to {len(index) - 1}", param="position")
    if not 0 <= position < len(index):
        raise APIError(404, f"no item {position}: the index holds items 0 to {len(index) - 1}", param="position")
    item = index.items[position]
    if "image" not in item:
        raise APIError(404, f"item {position} ({item['id']!r}) has no image", param="position")
    path = Path(item["image"])
    if not path.is_file():
        raise APIError(404, f"the image of item {position} ({item['id']!r}) is no longer on the server")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path, media_type


def page_html(model_name: str) -> str:
    """The search page (one self-contained file: no external scripts, styles or fonts)."""
    from html import escape

    template = resources.files("unime.serve").joinpath("page.html").read_text(encoding="utf-8")
    return template.replace("{{MODEL}}", escape(model_name))
