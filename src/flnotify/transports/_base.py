"""What a transport is: POST bytes with headers to a URL, get a status, headers and a capped body.

Transports are structural (``typing.Protocol``): anything with ``apost`` (async) or ``post``
(sync) works. A transport raises only [`TransportError`][flnotify.TransportError] subclasses;
 backend
exceptions are translated at this edge and kept as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import attrs

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "AsyncTransport",
    "HttpResponse",
    "Timeouts",
    "Transport",
]

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
"""Response bodies are read up to this many bytes; the rest is discarded unread."""


@attrs.frozen
class Timeouts:
    """Per-attempt timeouts in seconds; every attempt has all four.

    Args:
        connect: Establishing the TCP (and TLS) connection.
        read: Waiting for each chunk of the response.
        write: Sending each chunk of the request.
        pool: Waiting for a free connection from the pool.
    """

    connect: float = 5.0
    read: float = 10.0
    write: float = 10.0
    pool: float = 10.0

    @classmethod
    def all(cls, seconds: float) -> Timeouts:
        """The same timeout for all four phases."""
        return cls(seconds, seconds, seconds, seconds)


@attrs.frozen
class HttpResponse:
    """What came back from one POST.

    Args:
        status_code: The HTTP status.
        headers: Response headers with lower-cased names (last value wins).
        body: The body, at most the transport's cap.
        truncated: Whether the body was longer than the cap.
    """

    status_code: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    truncated: bool = False


@runtime_checkable
class Transport(Protocol):
    """A blocking transport: one POST per call."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST ``body`` to ``url``; raise a ``TransportError`` when no status came back."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class AsyncTransport(Protocol):
    """An asyncio transport: one POST per awaited call, many concurrently."""

    async def apost(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST ``body`` to ``url``; raise a ``TransportError`` when no status came back."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
