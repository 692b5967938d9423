"""What a transport is: POST bytes with headers to a URL, get a status, headers and a capped body.

Transports are structural (``typing.Protocol``): anything with ``apost`` (async) or ``post``
(sync) works. A transport raises only [`TransportError`][flnotify.errors.TransportError]
subclasses; backend exceptions are translated at this edge and kept as ``__cause__``.

Two optional capabilities are declared as Protocols of their own, and a transport without
them gets the default:

- [`SelfBoundingTransport`][flnotify.transports.SelfBoundingTransport]
  (``bounds_attempts = True``): it bounds every attempt in time itself (flnotify's own do,
  by ``Timeouts.total``). Default: the engine bounds each attempt by ``attempt_timeout``.
- [`PinningTransport`][flnotify.transports.PinningTransport] (``pins_connections = True``,
  ``apost(..., connect_to=address)``): it connects to the address the endpoint guard
  checked. Default: with the guard on, a host name is refused rather than looked up twice.

The engine reads them once (``capabilities(transport)``).
"""

from __future__ import annotations

import asyncio
import builtins
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final, Protocol, TypeVar, runtime_checkable

import attrs

from .._exceptions import InvalidURLError, TransportError, TransportTimeoutError
from .._types import DEFAULT_MAX_RESPONSE_BYTES, HttpResponse, Timeouts

T = TypeVar("T")

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "OWNED_HEADERS",
    "AsyncTransport",
    "Done",
    "DrivingTransport",
    "HttpResponse",
    "Job",
    "PinningTransport",
    "SelfBoundingTransport",
    "Timeouts",
    "Transport",
    "TransportCapabilities",
    "bad_value_char",
    "capabilities",
    "checked_addresses",
    "drive_each",
    "header_lines",
    "headers_of",
    "is_token",
    "tried_addresses",
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


is_token: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
"""Whether a string is an HTTP token (a valid header name)."""

bad_value_char: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]").search
"""The first control character other than horizontal tab (none may appear in a value)."""

OWNED_HEADERS: Final = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Framing and connection management belong to the transport; callers' values are ignored."""


def header_lines(headers: Iterable[tuple[str, str]], shared: Iterable[str] = ()) -> str:
    """``Name: value`` lines (each ending in CRLF) of a job's own headers, each checked.

    Raises:
        ValueError: A name is not a token, is one the transport owns or one of the
            ``shared`` names (lower case) already sent, or a value has a control character.
    """
    taken = OWNED_HEADERS.union(shared)
    lines = []
    for name, value in headers:
        if not is_token(name) or name.lower() in taken:
            msg = f"header {name!r} cannot be one of a job's own headers"
            raise ValueError(msg)
        if bad_value_char(value):
            msg = f"header {name!r} contains a control character"
            raise ValueError(msg)
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


def headers_of(lines: str) -> dict[str, str]:
    """The headers of a job's own lines (``Name: value`` each, as ``header_lines`` makes)."""
    headers = {}
    for line in lines.split("\r\n"):
        if line:
            name, _, value = line.partition(": ")
            headers[name] = value
    return headers


Job = tuple[str, str, Any]
"""One request of a driven fan-out: URL, its own header lines, a token.

The lines (``Name: value`` each, ending in CRLF, beyond the shared headers) are written as they
are: whoever builds a job has checked them (see [`header_lines`][]).
"""

Done = Callable[[Any, Any, "Exception | None"], None]
"""Called once per job: ``(token, response, None)`` or ``(token, None, exception)``."""


@runtime_checkable
class DrivingTransport(Protocol):
    """An asyncio transport that runs a whole fan-out of one body itself (``drive``).

    The engine's fast lane hands it the send's shared headers once and pulls jobs as
    connections free up; each job's outcome goes to ``done`` (a response, or what the
    attempt raised, exactly as ``apost`` would). Not called for pinned (guarded) sends, nor
    unless the transport also bounds every attempt itself (``bounds_attempts = True``).
    """

    async def drive(
        self,
        body: bytes,
        headers: Mapping[str, str],
        jobs: Iterator[Job],
        done: Done,
        concurrency: int,
    ) -> None:
        """POST ``body`` for every job, at most ``concurrency`` at once, until all are done."""
        ...


async def drive_each(
    apost: Callable[[str, bytes, dict[str, str]], Awaitable[Any]],
    body: bytes,
    headers: Mapping[str, str],
    jobs: Iterator[Job],
    done: Done,
    concurrency: int,
) -> None:
    """``drive`` for any transport: ``concurrency`` tasks awaiting ``apost`` per job."""

    async def work() -> None:
        for url, own, token in jobs:
            try:
                response = await apost(url, body, {**headers, **headers_of(own)})
            except Exception as exc:  # the engine judges it as it would from apost
                done(token, None, exc)
            else:
                done(token, response, None)

    await asyncio.gather(*(work() for _ in range(concurrency)))


@runtime_checkable
class SelfBoundingTransport(Protocol):
    """A transport that bounds every attempt in time itself (set ``bounds_attempts = True``)."""

    bounds_attempts: ClassVar[bool]


@runtime_checkable
class PinningTransport(Protocol):
    """An asyncio transport that connects to a given, already checked, address.

    Set ``pins_connections = True`` and take ``connect_to=``: the TLS name and ``Host``
    header stay the URL's, the TCP connection goes to ``connect_to``, with no second lookup.
    """

    pins_connections: ClassVar[bool]

    async def apost(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_to: str | Sequence[str] | None = None,
    ) -> HttpResponse:
        """POST to ``url``, connecting to ``connect_to`` (tried in order) if given."""
        ...


@attrs.frozen
class TransportCapabilities:
    """What a transport declared it can do; see the module docstring for each default.

    Args:
        bounds_attempts: It bounds every attempt in time itself.
        pins_connections: Its ``apost`` connects to a checked address (``connect_to=``).
    """

    bounds_attempts: bool = False
    pins_connections: bool = False


def capabilities(transport: object) -> TransportCapabilities:
    """The capabilities ``transport`` declares (a flag must be exactly ``True`` to count)."""
    return TransportCapabilities(
        bounds_attempts=isinstance(transport, SelfBoundingTransport)
        and transport.bounds_attempts is True,
        pins_connections=isinstance(transport, PinningTransport)
        and isinstance(transport, AsyncTransport)
        and transport.pins_connections is True,
    )


_TIMED_OUT = "timed out after {seconds:g} s: the whole attempt took too long"


def checked_addresses(connect_to: str | Sequence[str], url: str) -> tuple[str, ...]:
    """The addresses of ``connect_to=``: one, or several to try in order.

    Raises:
        InvalidURLError: Neither an address nor a non-empty sequence of them.
    """
    if isinstance(connect_to, str):
        return (connect_to,)
    addresses = tuple(connect_to)
    if not addresses or not all(isinstance(a, str) and a for a in addresses):
        msg = f"connect_to must name one address or several, not {connect_to!r}"
        raise InvalidURLError(msg, url=url)
    return addresses


def tried_addresses(error: TransportError, addresses: Sequence[str]) -> TransportError:
    """``error`` (the last address's), saying which addresses were tried before it."""
    if len(addresses) > 1:
        error.args = (f"{error} (tried {len(addresses)} addresses: {', '.join(addresses)})",)
    return error


if sys.version_info >= (3, 11):

    async def within(
        seconds: float, awaitable: Awaitable[T], url: str, *, reported: float | None = None
    ) -> T:
        """Await ``awaitable`` for at most ``seconds``; past that, a TransportTimeoutError.

        ``reported`` is the limit the error names, if not ``seconds`` (what was left of it).
        """
        scope = asyncio.timeout(seconds)
        try:
            async with scope:
                return await awaitable
        except builtins.TimeoutError:
            if not scope.expired():
                raise
        limit = seconds if reported is None else reported
        raise TransportTimeoutError(_TIMED_OUT.format(seconds=limit), url=url)

else:  # pragma: no cover - Python 3.10

    async def within(
        seconds: float, awaitable: Awaitable[T], url: str, *, reported: float | None = None
    ) -> T:
        """Await ``awaitable`` for at most ``seconds``; past that, a TransportTimeoutError."""
        try:
            return await asyncio.wait_for(awaitable, seconds)
        except asyncio.TimeoutError:
            limit = seconds if reported is None else reported
            raise TransportTimeoutError(_TIMED_OUT.format(seconds=limit), url=url) from None
