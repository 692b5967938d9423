"""The router's answers and their builders.

[`Reply`][flnotify.receiving.Reply] is what a handler may return,
[`Response`][flnotify.receiving.Response] what goes back on the wire.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from ._parse import RawHeaders, ReceivingLimits

__all__ = ["Reply", "Response"]


def valid_status(_: Any, __: Any, value: int) -> None:
    if type(value) is not int or not 200 <= value <= 599:
        msg = f"status must be an int from 200 to 599, not {value!r}"
        raise ValueError(msg)


@attrs.frozen
class Reply:
    """What a handler may return to choose the status and body of the answer.

    Args:
        status: The HTTP status (200-599).
        body: ``bytes`` as they are, ``str`` as UTF-8 text, anything else as JSON.
        content_type: Overrides the content type inferred from ``body``.
    """

    status: int = attrs.field(default=200, validator=valid_status)
    body: Any = None
    content_type: str | None = None


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


def reply_response(reply: Reply) -> Response:
    """The response a handler's [`Reply`][flnotify.receiving.Reply] asks for."""
    body, content_type = reply.body, reply.content_type
    if body is None:
        return response(reply.status, b"", content_type)
    if isinstance(body, (bytes, bytearray, memoryview)):
        return response(reply.status, bytes(body), content_type or "application/octet-stream")
    if isinstance(body, str):
        return response(reply.status, body.encode(), content_type or "text/plain; charset=utf-8")
    encoded = json.dumps(body, separators=(",", ":")).encode()
    return response(reply.status, encoded, content_type or "application/json")


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


class Answering(Protocol):
    """What the ASGI and WSGI adapters need of a router (so they never import it)."""

    @property
    def limits(self) -> ReceivingLimits:
        """The request limits."""
        ...

    def _precheck(
        self, method: str, headers: RawHeaders
    ) -> tuple[Response | None, list[tuple[str, str]], int]: ...

    def handle(self, method: str, headers: RawHeaders, body: bytes) -> Response:
        """Answer one request (sync)."""
        ...

    async def ahandle(self, method: str, headers: RawHeaders, body: bytes) -> Response:
        """Answer one request (async)."""
        ...
