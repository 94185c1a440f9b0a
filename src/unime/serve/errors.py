"""The one error type the embeddings server turns into an HTTP response.

Every refusal (a limit, a malformed field, a bad key) is raised as :class:`APIError` at the point
where the problem is found, carrying the HTTP status and the request field it concerns, so the
client learns which limit, field or item index to fix. The JSON body follows OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``) so existing clients surface the message.
"""

from __future__ import annotations

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "request_timeout",
    413: "request_too_large",
    422: "invalid_request_error",
    500: "server_error",
    503: "server_overloaded",
}


class APIError(Exception):
    """A refusal with an HTTP status, a message for the client, the offending field and a code.

    ``param`` names the field (``input[3].image``, ``dimensions``) or is ``None`` for the request
    as a whole; ``code`` names the limit or rule that was violated (``max_image_bytes``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def to_json(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }
