"""The ``/v1/embeddings`` request and response: OpenAI's schema plus multimodal items.

A request's ``input`` is a string, a list of strings, or (the extension) objects
``{"text", "image", "video", "instruction"}`` alone or mixed with strings; ``video`` is a list of
frames, each an image string as ``image`` takes (docs/video.md). Instead of ``input``, a request may
carry ``messages``, the chat form vLLM's ``/v1/embeddings`` takes for multimodal models: one input
per request, a ``system`` message as its instruction and one ``user`` message with at most one text
and one ``image_url`` part, which is what the chat template of ``unime export vllm`` renders (so a
client moves between the two servers by changing the URL). Parsing validates every field by hand
rather than through a schema library, so each refusal names the exact field and item
(``input[3].image``, ``input[2].video[3]``, ``messages[0].content[1].image_url``) and the limit
involved, and the cheap checks (item count, text length, frame count, encoded image size) all run
before any image is decoded.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from unime.serve.errors import APIError
from unime.serve.images import RemoteFetch, load_request_image
from unime.serve.settings import ServeSettings

Item = str | dict[str, Any]
_ITEM_KEYS = ("text", "image", "video", "instruction")
_FORMATS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated request: model inputs in ``model.encode`` form and the output options."""

    items: list[str | Image.Image | dict[str, Any]]
    encoding_format: str
    dimensions: int | None


def parse_json_body(body: bytes) -> dict[str, Any]:
    """Parse the raw body into a JSON object, with the position of any syntax error."""
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as error:
        raise APIError(
            400, f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    except RecursionError:
        raise APIError(400, "the request JSON is nested too deeply") from None
    except ValueError as error:  # e.g. an integer of more than sys.get_int_max_str_digits() digits
        raise APIError(400, f"malformed JSON: {error}") from None
    if not isinstance(payload, dict):
        raise APIError(400, f"the request body must be a JSON object, not {_kind(payload)}")
    return payload


def parse_embedding_request(
    payload: dict[str, Any], settings: ServeSettings, fetch_remote: RemoteFetch | None,
    video_frames: int | None = None,
) -> EmbeddingRequest:
    """Validate a request object and decode its images. Raises :class:`APIError`. ``video_frames``:
    the frames the model samples from a video (a shorter frame list is refused here)."""
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, f"'model' must be a string, not {_kind(model)}", param="model")
    if model is not None and model != settings.model_name:
        raise APIError(
            404,
            f"model {model!r} is not served here; this server serves {settings.model_name!r}",
            param="model",
            code="model_not_found",
        )
    encoding_format = payload.get("encoding_format", "float")
    if encoding_format not in _FORMATS:
        raise APIError(
            400,
            f"'encoding_format' must be one of {list(_FORMATS)}, got {encoding_format!r}",
            param="encoding_format",
        )
    dimensions = payload.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise APIError(
            400, f"'dimensions' must be a positive integer, got {dimensions!r}", param="dimensions"
        )
    if "messages" in payload:
        if "input" in payload:
            raise APIError(400, "the request has both 'input' and 'messages'; send one of them", param="messages")
        item, image_param = _message_item(payload["messages"], settings)
        return EmbeddingRequest(items=[_load_message_image(item, image_param, settings, fetch_remote)],
                                encoding_format=encoding_format, dimensions=dimensions)
    raw_items = _raw_items(payload, settings)
    checked = [(_check_item(raw, param, settings, video_frames), param) for raw, param in raw_items]
    items = [_load_images(item, param, settings, fetch_remote) for item, param in checked]
    return EmbeddingRequest(items=items, encoding_format=encoding_format, dimensions=dimensions)


_MESSAGE_KEYS = ("role", "content", "name")
_ROLES = ("system", "user")


def _message_item(messages: Any, settings: ServeSettings) -> tuple[dict[str, Any], str | None]:
    """The one input of a ``messages`` request, as ``{"text", "image", "instruction"}`` with the image
    still encoded, and the field that carried the image. The rules are the exported chat template's:
    at most one ``system`` message (its text is the instruction), exactly one ``user`` message with a
    string content (a text) or at most one ``text`` part and one ``image_url`` part, in any order."""
    if not isinstance(messages, list):
        raise APIError(400, f"'messages' must be a list of messages, not {_kind(messages)}", param="messages")
    if not messages:
        raise APIError(400, "'messages' is an empty list", param="messages")
    item: dict[str, Any] = {}
    image_param = None
    user_seen = False
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{param} must be an object with role and content, not {_kind(message)}", param=param)
        unknown = sorted(set(message) - set(_MESSAGE_KEYS))
        if unknown:
            raise APIError(400, f"{param} has unknown field(s) {unknown}; allowed: {list(_MESSAGE_KEYS)}", param=param)
        role = message.get("role")
        if role not in _ROLES:
            raise APIError(400, f"{param}.role must be one of {list(_ROLES)} (one embedding input: an optional "
                           f"system message as the instruction, then the user message), got {role!r}",
                           param=f"{param}.role")
        if role == "system":
            if "instruction" in item:
                raise APIError(400, f"{param}: only one system message (the instruction) is allowed", param=param)
            item["instruction"] = _system_text(message.get("content"), f"{param}.content", settings)
            continue
        if user_seen:
            raise APIError(400, f"{param}: only one user message is allowed (one embedding per request)", param=param)
        user_seen = True
        image_param = _user_content(message.get("content"), f"{param}.content", settings, item)
    if not user_seen:
        raise APIError(400, "'messages' has no user message (the text or image to embed)", param="messages")
    return item, image_param


def _system_text(content: Any, param: str, settings: ServeSettings) -> str:
    if isinstance(content, str):
        return _check_text(content, param, settings)
    if isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict) \
            and content[0].get("type") == "text":
        return _part_text(content[0], f"{param}[0]", settings)
    raise APIError(400, f"{param} must be a string or a list of one text part (the instruction)", param=param)


def _user_content(content: Any, param: str, settings: ServeSettings, item: dict[str, Any]) -> str | None:
    """Fill ``item``'s text and (still encoded) image from a user message; return the image's field."""
    if isinstance(content, str):
        item["text"] = _check_text(content, param, settings)
        return None
    if not isinstance(content, list):
        raise APIError(400, f"{param} must be a string or a list of parts, not {_kind(content)}", param=param)
    if not content:
        raise APIError(400, f"{param} is an empty list", param=param)
    image_param = None
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if "text" in item:
                raise APIError(400, f"{where}: a user message holds at most one text part", param=where)
            item["text"] = _part_text(part, where, settings)
        elif kind == "image_url":
            if image_param is not None:
                raise APIError(400, f"{where}: a user message holds at most one image part", param=where)
            image_param = f"{where}.image_url"
            item["image"] = _image_url(part, image_param)
        else:
            raise APIError(400, f"{where} must be an object of type 'text' or 'image_url'"
                           + (f", not {kind!r}" if isinstance(kind, str) else ""), param=where)
    return image_param


def _part_text(part: dict[str, Any], where: str, settings: ServeSettings) -> str:
    unknown = sorted(set(part) - {"type", "text"})
    if unknown:
        raise APIError(400, f"{where} has unknown field(s) {unknown}", param=where)
    text = part.get("text")
    if not isinstance(text, str):
        raise APIError(400, f"{where}.text must be a string, not {_kind(text)}", param=f"{where}.text")
    return _check_text(text, f"{where}.text", settings)


def _image_url(part: dict[str, Any], param: str) -> str:
    """The URL of an ``image_url`` part: ``{"url": ...}`` (OpenAI's ``detail`` is accepted and ignored)."""
    unknown = sorted(set(part) - {"type", "image_url"})
    if unknown:
        raise APIError(400, f"{param.rsplit('.', 1)[0]} has unknown field(s) {unknown}", param=param)
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str) or not url or (isinstance(value, dict) and set(value) - {"url", "detail"}):
        raise APIError(400, f"{param} must be an object {{\"url\": \"data:image/...;base64,...\"}}", param=param)
    return url


def _load_message_image(
    item: dict[str, Any], param: str | None, settings: ServeSettings, fetch_remote: RemoteFetch | None
) -> str | Image.Image | dict[str, Any]:
    """Decode a messages request's image (its field named in refusals); the item in ``encode`` form."""
    if param is None:
        return item if "instruction" in item else item["text"]
    image = load_request_image(item["image"], param=param, max_bytes=settings.max_image_bytes,
                               max_pixels=settings.max_image_pixels, fetch_remote=fetch_remote)
    return {**item, "image": image} if len(item) > 1 else image


def _raw_items(payload: dict[str, Any], settings: ServeSettings) -> list[tuple[Any, str]]:
    """The request's inputs paired with their field names, after the item-count limit."""
    if "input" not in payload:
        raise APIError(400, "the request has no 'input' field (nor 'messages')", param="input")
    value = payload["input"]
    if isinstance(value, (str, dict)):
        return [(value, "input")]
    if not isinstance(value, list):
        raise APIError(
            400,
            f"'input' must be a string, an object or a list of them, not {_kind(value)}",
            param="input",
        )
    if not value:
        raise APIError(400, "'input' is an empty list", param="input")
    if len(value) > settings.max_items_per_request:
        raise APIError(
            413,
            f"'input' has {len(value)} items; the limit is max_items_per_request="
            f"{settings.max_items_per_request}",
            param="input",
            code="max_items_per_request",
        )
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value) or all(
        isinstance(v, list) for v in value
    ):
        raise APIError(400, "token-id inputs are not supported: send text, images or objects", param="input")
    return [(v, f"input[{i}]") for i, v in enumerate(value)]


def _check_item(raw: Any, param: str, settings: ServeSettings, video_frames: int | None = None) -> Item:
    """Type and length checks of one input; images are still encoded strings here."""
    if isinstance(raw, str):
        return _check_text(raw, param, settings)
    if not isinstance(raw, dict):
        raise APIError(
            400,
            f"{param} must be a string or an object with text/image/instruction, not {_kind(raw)}",
            param=param,
        )
    unknown = sorted(set(raw) - set(_ITEM_KEYS))
    if unknown:
        raise APIError(
            400, f"{param} has unknown field(s) {unknown}; allowed: {list(_ITEM_KEYS)}", param=param
        )
    item: dict[str, Any] = {}
    for key in _ITEM_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        if key == "video":
            item[key] = _check_video(value, f"{param}.video", settings, video_frames)
            continue
        if not isinstance(value, str):
            raise APIError(400, f"{param}.{key} must be a string, not {_kind(value)}", param=f"{param}.{key}")
        item[key] = value if key == "image" else _check_text(value, f"{param}.{key}", settings)
    if "text" not in item and "image" not in item and "video" not in item:
        raise APIError(400, f"{param} needs a 'text', an 'image' or a 'video'", param=param)
    if "image" in item and "video" in item:
        raise APIError(400, f"{param} has an 'image' and a 'video': an input takes one of them", param=param)
    return item


def _check_video(value: Any, param: str, settings: ServeSettings, video_frames: int | None) -> list[str]:
    """A video item: a list of frame image strings, within the frame limits (not decoded yet)."""
    if not isinstance(value, list):
        raise APIError(400, f"{param} must be a list of frame images (data URLs or base64), not {_kind(value)}",
                       param=param)
    if not value:
        raise APIError(400, f"{param} is an empty list of frames", param=param)
    if len(value) > settings.max_video_frames:
        raise APIError(413, f"{param} has {len(value)} frames; the limit is max_video_frames="
                       f"{settings.max_video_frames}", param=param, code="max_video_frames")
    for index, frame in enumerate(value):
        if not isinstance(frame, str) or not frame:
            raise APIError(400, f"{param}[{index}] must be a non-empty image string, not {_kind(frame)}",
                           param=f"{param}[{index}]")
    if video_frames is not None and len(value) < video_frames:
        raise APIError(400, f"{param} has {len(value)} frames, fewer than the {video_frames} the model samples "
                       "from a video", param=param)
    return value


def _check_text(text: str, param: str, settings: ServeSettings) -> str:
    if not text.strip():
        raise APIError(400, f"{param} is empty or blank", param=param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # JSON allows "\ud800"; no tokenizer takes a lone surrogate
        raise APIError(
            400,
            f"{param} is not valid Unicode: a lone surrogate {text[error.start]!r} at position {error.start}",
            param=param,
        ) from None
    if len(text) > settings.max_text_chars:
        raise APIError(
            413,
            f"{param} has {len(text)} characters; the limit is max_text_chars={settings.max_text_chars}",
            param=param,
            code="max_text_chars",
        )
    return text


def _load_images(
    item: Item, param: str, settings: ServeSettings, fetch_remote: RemoteFetch | None
) -> str | Image.Image | dict[str, Any]:
    if isinstance(item, str) or ("image" not in item and "video" not in item):
        return item
    if "video" in item:
        frames = [load_request_image(frame, param=f"{param}.video[{index}]", max_bytes=settings.max_image_bytes,
                                     max_pixels=settings.max_image_pixels, fetch_remote=fetch_remote)
                  for index, frame in enumerate(item["video"])]
        return {**item, "video": frames}
    image = load_request_image(
        item["image"],
        param=f"{param}.image",
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        fetch_remote=fetch_remote,
    )
    if len(item) == 1:
        return image  # a bare image is the contract's PIL input, not a one-key dict
    return {**item, "image": image}


def truncate_dimensions(embeddings: np.ndarray, dimensions: int) -> np.ndarray:
    """Keep the first ``dimensions`` components and rescale each row to unit length.

    A truncated unit vector is shorter than 1, so without renormalisation dot products would no
    longer be cosine similarities. An all-zero prefix stays zero rather than dividing by zero.
    """
    head = embeddings[:, :dimensions].astype(np.float32)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return (head / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """One embedding as JSON numbers, or as base64 of little-endian float32 bytes (OpenAI's form)."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


def build_response(
    embeddings: np.ndarray, request: EmbeddingRequest, model_name: str, tokens: int
) -> dict[str, Any]:
    """The OpenAI response object for a request's embeddings (already truncated if asked)."""
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(row, request.encoding_format)}
        for i, row in enumerate(embeddings)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def openapi_operation(settings: ServeSettings) -> dict[str, Any]:
    """The published OpenAPI contract of ``POST /v1/embeddings`` (FastAPI ``openapi_extra``).

    The body is parsed by hand (above), so FastAPI cannot derive its schema; without this the
    published ``/openapi.json`` would show no request body at all, and clients and schema fuzzers
    would not see the contract. The limits that the schema can express (item count, text length)
    are this server's settings. A ``null`` item field counts as absent, as the parser treats it.
    """
    text = {"type": "string", "minLength": 1, "maxLength": settings.max_text_chars, "pattern": r"\S"}
    nullable_text = {"anyOf": [text, {"type": "null"}]}
    image = {
        "type": "string",
        "minLength": 1,
        "description": "a data:image/...;base64, URL, bare base64"
        + (", or an http(s) URL" if settings.allow_remote_images else ""),
    }
    video = {"type": "array", "minItems": 1, "maxItems": settings.max_video_frames, "items": image,
             "description": "a video's frames in order, each an image string; sampled to the model's video_frames"}
    item = {
        "type": "object",
        "properties": {
            "text": nullable_text,
            "image": {"anyOf": [image, {"type": "null"}]},
            "video": {"anyOf": [video, {"type": "null"}]},
            "instruction": nullable_text,
        },
        "additionalProperties": False,
        "anyOf": [
            {"required": ["text"], "properties": {"text": text}},
            {"required": ["image"], "properties": {"image": image}},
            {"required": ["video"], "properties": {"video": video}},
        ],
        "not": {"required": ["image", "video"], "properties": {"image": image, "video": video}},
    }
    one = {"anyOf": [text, item]}
    # vLLM's chat form: one input per request (docs/serving.md, "The messages form").
    text_part = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
                 "properties": {"type": {"const": "text"}, "text": text}}
    image_part = {
        "type": "object",
        "required": ["type", "image_url"],
        "additionalProperties": False,
        "properties": {
            "type": {"const": "image_url"},
            "image_url": {"type": "object", "required": ["url"], "additionalProperties": False,
                          "properties": {"url": image, "detail": {"description": "accepted and ignored"}}},
        },
    }
    message = {
        "type": "object",
        "required": ["role", "content"],
        "additionalProperties": False,
        "properties": {
            "role": {"type": "string", "enum": ["system", "user"]},
            "content": {"anyOf": [text, {"type": "array", "minItems": 1, "maxItems": 2,
                                         "items": {"anyOf": [text_part, image_part]}}]},
            "name": {"description": "accepted and ignored"},
        },
    }
    messages = {
        "type": "array",
        "minItems": 1,
        "maxItems": 2,
        "items": message,
        "description": "instead of 'input', one input in vLLM's chat form: an optional system message (the "
        "instruction), then one user message with a string, or at most one text part and one image_url part",
    }
    body = {
        "type": "object",
        "oneOf": [{"required": ["input"]}, {"required": ["messages"]}],
        "properties": {
            "input": {
                "anyOf": [
                    text,
                    item,
                    {"type": "array", "minItems": 1, "maxItems": settings.max_items_per_request, "items": one},
                ]
            },
            "messages": messages,
            "model": {"anyOf": [{"type": "string", "enum": [settings.model_name]}, {"type": "null"}]},
            "encoding_format": {"type": "string", "enum": list(_FORMATS), "default": "float"},
            "dimensions": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            "user": {"description": "accepted and ignored, as any other field"},
        },
        "additionalProperties": True,  # OpenAI fields beyond these are accepted and ignored
    }
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    }
    embedding = {
        "type": "object",
        "required": ["object", "index", "embedding"],
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer", "minimum": 0},
            "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]},
        },
    }
    usage = {"type": "integer", "minimum": 0}
    success = {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": embedding},
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "total_tokens"],
                "properties": {"prompt_tokens": usage, "total_tokens": usage},
            },
        },
    }

    def refusal(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": error}},
        }
        if headers:
            response["headers"] = headers
        return response

    responses = {
        "200": {"description": "one embedding per input, in order (one for a 'messages' request)", "content": {"application/json": {"schema": success}}},
        "400": refusal("malformed JSON, a wrong field, both 'input' and 'messages', an undecodable image, an "
                       "input the model rejects"),
        "404": refusal("'model' names another model"),
        "413": refusal("a size limit (body, items, text, image bytes or pixels, video frames)"),
        "500": refusal("the model failed for another reason"),
        "503": refusal(
            "more than max_queued_items items are waiting, or the encoder stopped",
            {"Retry-After": {"description": "seconds to wait (when the queue is full)", "schema": {"type": "string"}}},
        ),
    }
    if settings.api_key is not None:
        responses["401"] = refusal(
            "the API key is missing or wrong",
            {"WWW-Authenticate": {"schema": {"type": "string"}}},
        )
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": responses,
    }


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
