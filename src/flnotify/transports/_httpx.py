"""The default transport, on httpx: pooled clients, strict timeouts, no redirects, capped reads."""

from __future__ import annotations

import asyncio
import socket
import ssl
import weakref
from collections.abc import Mapping
from types import TracebackType

import attrs
import httpx
from typing_extensions import Self

from .._exceptions import (
    ConnectError,
    ConnectionResetError,
    DNSError,
    InvalidURLError,
    ProtocolError,
    TimeoutError,
    TransportError,
)
from ._base import DEFAULT_MAX_RESPONSE_BYTES, HttpResponse, Timeouts

__all__ = ["HttpxTransport"]


def _httpx_timeout(timeouts: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(
        connect=timeouts.connect, read=timeouts.read, write=timeouts.write, pool=timeouts.pool
    )


@attrs.define
class HttpxTransport:
    """POSTs through one pooled ``httpx.Client`` (sync) and ``httpx.AsyncClient`` (async).

    Clients are created on first use and reused for every send until :meth:`close` /
    :meth:`aclose` (or the context manager) ends them. Redirects are never followed; the
    response body is read up to ``max_response_bytes`` and the rest discarded unread.

    Args:
        client: A configured ``httpx.Client`` of the host's (proxies, TLS, client
            certificates, ``httpx.MockTransport``); closed by the host, not by flnotify.
        async_client: The same for async sends.
        timeouts: Per-attempt timeouts for the clients flnotify creates.
        max_response_bytes: How much of a response body is read.
        max_connections: Pool size of the clients flnotify creates.
        verify: TLS verification for the clients flnotify creates: ``True``, or an
            ``ssl.SSLContext`` (e.g. trusting a private CA).
    """

    client: httpx.Client | None = None
    async_client: httpx.AsyncClient | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_connections: int = 100
    verify: bool | ssl.SSLContext = True
    _own_client: httpx.Client | None = attrs.field(init=False, default=None)
    _own_async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
        attrs.field(init=False, factory=weakref.WeakKeyDictionary)
    )

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self.max_connections,
            max_keepalive_connections=self.max_connections,
        )

    def _sync_client(self) -> httpx.Client:
        if self.client is not None:
            return self.client
        if self._own_client is None:
            self._own_client = httpx.Client(
                timeout=_httpx_timeout(self.timeouts),
                limits=self._limits(),
                follow_redirects=False,
                verify=self.verify,
                trust_env=False,
            )
        return self._own_client

    def _async_client(self) -> httpx.AsyncClient:
        if self.async_client is not None:
            return self.async_client
        loop = asyncio.get_running_loop()
        client = self._own_async.get(loop)
        if client is None:  # one client per event loop: httpx connections are loop-bound
            client = httpx.AsyncClient(
                timeout=_httpx_timeout(self.timeouts),
                limits=self._limits(),
                follow_redirects=False,
                verify=self.verify,
                trust_env=False,
            )
            self._own_async[loop] = client
        return client

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST once, blocking; see :class:`~flnotify.transports.Transport`."""
        try:
            with self._sync_client().stream(
                "POST", url, content=body, headers=headers, follow_redirects=False
            ) as response:
                chunks: list[bytes] = []
                size = 0
                truncated = False
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        truncated = True
                        break
                return _response(response, chunks, self.max_response_bytes, truncated)
        except httpx.HTTPError as exc:
            raise _translate(exc, url) from exc
        except (httpx.InvalidURL, httpx.CookieConflict) as exc:
            raise InvalidURLError(str(exc), url=url) from exc

    async def apost(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST once; see :class:`~flnotify.transports.AsyncTransport`."""
        try:
            async with self._async_client().stream(
                "POST", url, content=body, headers=headers, follow_redirects=False
            ) as response:
                chunks: list[bytes] = []
                size = 0
                truncated = False
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        truncated = True
                        break
                return _response(response, chunks, self.max_response_bytes, truncated)
        except httpx.HTTPError as exc:
            raise _translate(exc, url) from exc
        except (httpx.InvalidURL, httpx.CookieConflict) as exc:
            raise InvalidURLError(str(exc), url=url) from exc

    def close(self) -> None:
        """Close the sync client flnotify created (a host's own client stays open)."""
        if self._own_client is not None:
            self._own_client.close()
            self._own_client = None

    async def aclose(self) -> None:
        """Close the async client flnotify created for the running event loop."""
        client = self._own_async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _response(
    response: httpx.Response, chunks: list[bytes], cap: int, truncated: bool
) -> HttpResponse:
    body = b"".join(chunks)
    return HttpResponse(
        status_code=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        body=body[:cap],
        truncated=truncated,
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _translate(exc: httpx.HTTPError, url: str) -> TransportError:
    """Map an httpx exception to flnotify's tree; the one place httpx errors are known."""
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError(message, url=url)
    if isinstance(exc, httpx.ConnectError):
        if _caused_by(exc, socket.gaierror):
            return DNSError(message, url=url)
        return ConnectError(message, url=url)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return InvalidURLError(message, url=url)
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return ConnectionResetError(message, url=url)
    if isinstance(exc, httpx.RemoteProtocolError):
        text = str(exc).lower()
        if "disconnect" in text or "closed" in text or "incomplete" in text:
            return ConnectionResetError(message, url=url)
        return ProtocolError(message, url=url)
    if isinstance(exc, httpx.LocalProtocolError):
        return InvalidURLError(message, url=url)
    return TransportError(message, url=url)
