"""The router's answers and their builders.

[`Reply`][flnotify.receiving.Reply] is what a handler may return,
[`Response`][flnotify.receiving.Response] what goes back on the wire.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .._web.responses import Response, response, valid_status

if TYPE_CHECKING:
    from ._parse import RawHeaders, ReceivingLimits

__all__ = ["Answering", "Reply", "reply_response"]


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
