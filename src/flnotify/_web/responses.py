"""Answers of the package's HTTP apps (the router's and the mailbox's) and their builders."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import attrs

__all__ = [
    "INTERNAL_ERROR",
    "Response",
    "error",
    "json_response",
    "response",
    "status_line",
    "too_large",
    "valid_status",
]


def valid_status(_: Any, __: Any, value: int) -> None:
    if type(value) is not int or not 200 <= value <= 599:
        msg = f"status must be an int from 200 to 599, not {value!r}"
        raise ValueError(msg)


@attrs.frozen
class Response:
    """The router's answer to one request.

    Args:
        status: The HTTP status.
        headers: ``(name, value)`` pairs, names lower-case; always with ``content-length``.
        body: The body bytes.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def response(
    status: int, body: bytes = b"", content_type: str | None = None, *extra: tuple[str, str]
) -> Response:
    """A response with ``content-length`` (and ``content-type`` when given) set."""
    headers = [("content-length", str(len(body)))]
    if content_type is not None:
        headers.append(("content-type", content_type))
    headers.extend(extra)
    return Response(status, tuple(headers), body)


def json_response(status: int, document: Any, *extra: tuple[str, str]) -> Response:
    """A compact JSON response."""
    body = json.dumps(document, separators=(",", ":")).encode()
    return response(status, body, "application/json", *extra)


def error(status: int, code: str, detail: str, *extra: tuple[str, str]) -> Response:
    """The router's error body: ``{"error": code, "detail": detail}``."""
    return json_response(status, {"error": code, "detail": detail}, *extra)


def status_line(status: int) -> str:
    """``"202 Accepted"``: the status and its reason phrase, for WSGI and raw sockets."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"{status} {phrase}"


def too_large(limit: int) -> Response:
    """413 for a body over ``max_body_bytes``."""
    return error(413, "payload_too_large", f"the body exceeds {limit} bytes")


INTERNAL_ERROR = error(500, "internal_error", "the receiver failed; see the client's log")
"""The router's own 500, for a bug: never a server's bare page with a traceback."""
