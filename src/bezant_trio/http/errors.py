"""The JSON error envelope every route answers with: ``{"code", "message"}``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from quart import Response

__all__ = [
    "UNAUTHORIZED_MESSAGE",
    "ApiError",
    "allow_header",
    "error_response",
    "json_response",
    "method_not_allowed_message",
]

#: What every 401 (code ``unauthorized``) says, from Quart and from the fast path.
UNAUTHORIZED_MESSAGE = (
    "send 'Authorization: Bearer <token>' with the token configured as http.token"
)


class ApiError(Exception):
    """An error a handler raises to answer ``status`` with the envelope."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def to_response(self) -> Response:
        return error_response(self.status, self.code, self.message, **self.extra)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response from plain data (bytes are sent as they are)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(data, status=status, headers=headers, content_type="application/json")


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    """``{"code": code, "message": message, ...extra}`` with ``status``."""
    return json_response({"code": code, "message": message, **extra}, status=status)


def method_not_allowed_message(method: str, path: str) -> str:
    """What every 405 (code ``method_not_allowed``) says, from Quart and from the fast path."""
    return f"{method} is not allowed on {path}"


def allow_header(methods: Iterable[str]) -> str:
    """A 405's ``Allow`` value: the methods, sorted (werkzeug gives them in set order)."""
    return ", ".join(sorted(methods))
