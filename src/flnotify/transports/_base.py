"""What a transport is: POST bytes with headers to a URL, get a status, headers and a capped body.

Transports are structural (``typing.Protocol``): anything with ``apost`` (async) or ``post``
(sync) works. A transport raises only [`TransportError`][flnotify.errors.TransportError]
subclasses; backend exceptions are translated at this edge and kept as ``__cause__``.

flnotify's own transports bound every attempt by ``Timeouts.total`` themselves (their
``bounds_attempts`` is true); for any other transport the
[`Notifier`][flnotify.Notifier] bounds each attempt by its ``attempt_timeout``.
"""

from __future__ import annotations

import asyncio
import builtins
import sys
from collections.abc import Awaitable, Mapping
from typing import Protocol, TypeVar, runtime_checkable

from .._exceptions import TransportTimeoutError
from .._types import DEFAULT_MAX_RESPONSE_BYTES, HttpResponse, Timeouts

T = TypeVar("T")

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "AsyncTransport",
    "HttpResponse",
    "Timeouts",
    "Transport",
    "within",
]


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


_TIMED_OUT = "timed out after {seconds:g} s: the whole attempt took too long"


if sys.version_info >= (3, 11):

    async def within(seconds: float, awaitable: Awaitable[T], url: str) -> T:
        """Await ``awaitable`` for at most ``seconds``; past that, a TransportTimeoutError."""
        scope = asyncio.timeout(seconds)
        try:
            async with scope:
                return await awaitable
        except builtins.TimeoutError:
            if not scope.expired():
                raise
        raise TransportTimeoutError(_TIMED_OUT.format(seconds=seconds), url=url)

else:  # pragma: no cover - Python 3.10

    async def within(seconds: float, awaitable: Awaitable[T], url: str) -> T:
        """Await ``awaitable`` for at most ``seconds``; past that, a TransportTimeoutError."""
        try:
            return await asyncio.wait_for(awaitable, seconds)
        except asyncio.TimeoutError:
            raise TransportTimeoutError(_TIMED_OUT.format(seconds=seconds), url=url) from None
