"""The default transport, on httpx: pooled clients, strict timeouts, no redirects, capped reads."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import certifi
import httpx

from .._closing import AsyncClosing, Closing
from .._exceptions import (
    ConfigurationError,
    ConnectError,
    ConnectionLostError,
    DNSError,
    InvalidURLError,
    ProtocolError,
    TransportError,
    TransportTimeoutError,
)
from ._base import (
    DEFAULT_MAX_RESPONSE_BYTES,
    HttpResponse,
    Timeouts,
    checked_addresses,
    tried_addresses,
    within,
)
from ._tls import TLSConfig, TLSFor, refused_handshake, tls_context

__all__ = ["HttpxTransport"]


def _httpx_timeout(timeouts: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(
        connect=timeouts.connect, read=timeouts.read, write=timeouts.write, pool=timeouts.pool
    )


_PHASES = {
    httpx.ConnectTimeout: ("connect", "connecting"),
    httpx.ReadTimeout: ("read", "reading the response"),
    httpx.WriteTimeout: ("write", "writing the request"),
    httpx.PoolTimeout: ("pool", "waiting for a free connection"),
}


@attrs.define
class HttpxTransport(Closing, AsyncClosing):
    """POSTs through one pooled ``httpx.Client`` (sync) and small per-origin ``AsyncClient``s.

    Clients are created on first use, share one TLS context, and are reused for every send
    until ``close()`` / ``aclose()`` (or the context manager) ends them. Async attempts
    queue per origin for one of its ``max_connections_per_origin`` slots (queueing is not
    part of an attempt), then each is bounded by ``timeouts.total`` as a whole; blocking
    ``post`` checks the total between the chunks of the response. Environment
    proxy settings are ignored (``trust_env=False``); pass your own client to use a proxy.
    Redirects are never followed; the response body is read up to ``max_response_bytes``
    and the rest discarded unread.

    Args:
        client: A configured ``httpx.Client`` of the host's (proxies, TLS, client
            certificates, ``httpx.MockTransport``); closed by the host, not by flnotify.
        async_client: The same for async sends.
        timeouts: Per-attempt timeouts for the clients flnotify creates.
        max_response_bytes: How much of a response body is read.
        max_connections: Pool size of the sync client flnotify creates.
        max_connections_per_origin: Pool size of each per-origin async client.
        max_origins: How many per-origin async clients are kept (least recently used
            closed beyond that).
        verify: TLS verification for the clients flnotify creates: ``True``, or an
            ``ssl.SSLContext`` (e.g. trusting a private CA).
        tls: A client certificate and trusted CAs (mutual TLS) for the clients flnotify
            creates, instead of ``verify``.
        tls_for: Per-receiver TLS for async sends: called once per ``https`` origin with
            its host and port; its context or settings, or ``None`` for the transport's.
    """

    bounds_attempts: ClassVar[bool] = True
    """Every async attempt ends within ``timeouts.total``."""

    pins_connections: ClassVar[bool] = True
    """``apost`` takes ``connect_to=``: the address the endpoint guard checked."""

    client: httpx.Client | None = None
    async_client: httpx.AsyncClient | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_connections: int = 100
    max_connections_per_origin: int = 8
    max_origins: int = 256
    verify: bool | ssl.SSLContext = True
    tls: TLSConfig | None = None
    tls_for: TLSFor | None = None
    _own_client: httpx.Client | None = attrs.field(init=False, default=None)
    _own_async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _OriginClients] = attrs.field(
        init=False, factory=weakref.WeakKeyDictionary
    )
    _ssl: ssl.SSLContext | None = attrs.field(init=False, default=None)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.tls is not None and isinstance(self.verify, ssl.SSLContext):
            msg = "HttpxTransport takes tls= or verify=<SSLContext>, not both"
            raise ConfigurationError(msg)
        if self.tls is not None:
            self.tls.context()  # a missing or broken file is refused now, not at a POST

    def _limits(self, connections: int) -> httpx.Limits:
        return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

    def _ssl_context(self, origin: str | None = None) -> ssl.SSLContext:
        """One TLS context for every client: building one loads the CA bundle (~ms).

        An ``https`` origin's own (``tls_for``) comes first, then ``tls``, then ``verify``.
        """
        if self.tls_for is not None and origin is not None and origin.startswith("https:"):
            target = httpx.URL(origin)
            custom = self.tls_for(target.host, target.port or 443)
            if custom is not None:
                return tls_context(custom)
        if self.tls is not None:
            return self.tls.context()
        if isinstance(self.verify, ssl.SSLContext):
            return self.verify
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=certifi.where())
            if not self.verify:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        return self._ssl

    def _sync_client(self) -> httpx.Client:
        if self.client is not None:
            return self.client
        with self._lock:  # threads making their first post() at once share one client
            if self._own_client is None:
                self._own_client = self._new_sync_client()
            return self._own_client

    def _new_sync_client(self) -> httpx.Client:
        return httpx.Client(
            timeout=_httpx_timeout(self.timeouts),
            limits=self._limits(self.max_connections),
            follow_redirects=False,
            verify=self._ssl_context(),
            trust_env=False,
        )

    def _new_async_client(self, origin: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=_httpx_timeout(self.timeouts),
            limits=self._limits(self.max_connections_per_origin),
            follow_redirects=False,
            verify=self._ssl_context(origin),
            trust_env=False,
        )

    def _async_client(
        self, url: str, address: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        if self.async_client is not None:
            return contextlib.nullcontext(self.async_client)
        loop = asyncio.get_running_loop()
        clients = self._own_async.get(loop)
        if clients is None:  # httpx connections are bound to the loop that opened them
            clients = self._own_async[loop] = _OriginClients(
                self.max_origins, self.max_connections_per_origin
            )
        origin = _origin(url)
        # A pinned origin has a client of its own per address: its pool (keyed by the
        # address) never carries another host name's requests, nor another address's.
        key = origin if address is None else f"{origin} {address}"
        return clients.use(key, lambda: self._new_async_client(origin))

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST once, blocking; see [`Transport`][flnotify.transports.Transport]."""
        total = self.timeouts.total
        try:
            until = time.monotonic() + total
            with self._sync_client().stream(
                "POST", url, content=body, headers=headers, follow_redirects=False
            ) as response:
                capped = _CappedBody(self.max_response_bytes)
                for chunk in response.iter_bytes():
                    if capped.add(chunk):
                        break
                    if time.monotonic() > until:
                        msg = f"timed out after {total:g} s: the whole attempt took too long"
                        raise TransportTimeoutError(msg, url=url)
                return capped.response(response)
        except httpx.HTTPError as exc:
            raise _translate(exc, url, self.timeouts) from exc
        except (httpx.InvalidURL, httpx.CookieConflict) as exc:
            raise InvalidURLError(str(exc), url=url) from exc
        except ssl.SSLError as exc:  # httpcore lets a TLS alert read with the answer escape
            raise _tls_alert(exc, url) from exc

    async def apost(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_to: str | Sequence[str] | None = None,
    ) -> HttpResponse:
        """POST once; see [`AsyncTransport`][flnotify.transports.AsyncTransport].

        Args:
            url: The endpoint.
            body: The request body.
            headers: The request headers.
            connect_to: Connect to this IP address instead of resolving the URL's host
                (the address the endpoint guard checked), or to the first of several
                that takes the connection (refused, unreachable or silent ones are
                skipped within the attempt's time limit); the host name stays in the
                ``Host`` header and, for ``https``, in SNI and certificate verification.
        """
        try:
            if connect_to is not None:
                return await self._apost_pinned(
                    url, body, headers, checked_addresses(connect_to, url)
                )
            async with self._async_client(url) as client:
                sent = self._apost(client, url, body, headers)
                return await within(self.timeouts.total, sent, url)
        except httpx.HTTPError as exc:
            raise _translate(exc, url, self.timeouts) from exc
        except (httpx.InvalidURL, httpx.CookieConflict) as exc:
            raise InvalidURLError(str(exc), url=url) from exc
        except ssl.SSLError as exc:  # httpcore lets a TLS alert read with the answer escape
            raise _tls_alert(exc, url) from exc

    async def _apost_pinned(
        self, url: str, body: bytes, headers: Mapping[str, str], addresses: tuple[str, ...]
    ) -> HttpResponse:
        """POST through the first of ``addresses`` that takes the connection, in time."""
        loop = asyncio.get_running_loop()
        total = self.timeouts.total
        deadline: float | None = None
        for number, address in enumerate(addresses, 1):
            target, pinned, extensions = _pinned(url, headers, address)
            async with self._async_client(url, address) as client:
                now = loop.time()
                if deadline is None:  # from the first slot had: queueing is not the attempt
                    deadline = now + total
                sent = self._apost(client, target, body, pinned, extensions)
                try:
                    return await within(deadline - now, sent, url, reported=total)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    if _tls_refusal(exc, url) is not None or _caused_by(exc, socket.gaierror):
                        raise  # the address answered (TLS), or no address at all
                    if number == len(addresses) or loop.time() >= deadline:
                        error = tried_addresses(_translate(exc, url, self.timeouts), addresses)
                        raise error from exc
        raise AssertionError("unreachable: at least one address")  # pragma: no cover

    async def _apost(
        self,
        client: httpx.AsyncClient,
        url: str | httpx.URL,
        body: bytes,
        headers: Mapping[str, str],
        extensions: dict[str, Any] | None = None,
    ) -> HttpResponse:
        handshake = None
        if (url.scheme if isinstance(url, httpx.URL) else url[:6]) in ("https", "https:"):
            handshake = _Handshake()
            extensions = {**(extensions or {}), "trace": handshake}
        try:
            async with client.stream(
                "POST",
                url,
                content=body,
                headers=headers,
                follow_redirects=False,
                extensions=extensions,
            ) as response:
                capped = _CappedBody(self.max_response_bytes)
                async for chunk in response.aiter_bytes():
                    if capped.add(chunk):
                        break
                return capped.response(response)
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
            if handshake is None or not handshake.done or _caused_by(exc, ssl.SSLError):
                raise
            # Our own handshake of this request, then the connection ended before any
            # response: under TLS 1.3 a server that refuses our client certificate (one on
            # asyncio: without an alert).
            message = refused_handshake(None, "", after=True)
            raise ConnectError(message, url=str(url)) from exc

    def close(self) -> None:
        """Close the sync client flnotify created (a host's own client stays open)."""
        with self._lock:
            client, self._own_client = self._own_client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the async clients flnotify created for the running event loop."""
        clients = self._own_async.pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients.aclose()


def _pinned(
    url: str, headers: Mapping[str, str], address: str
) -> tuple[httpx.URL, Mapping[str, str], dict[str, Any] | None]:
    """The URL, headers and extensions that send ``url``'s request to ``address``.

    The URL names the address (so httpcore connects there without resolving anything);
    the host name stays in ``Host`` and, for ``https``, in SNI and certificate checks.
    """
    target = httpx.URL(url)
    name = target.host
    if name == address:
        return target, headers, None
    pinned = {**headers, "host": target.netloc.decode("ascii")}
    # httpcore verifies the certificate against sni_hostname (it is the server_hostname)
    extensions = {"sni_hostname": name} if target.scheme == "https" else None
    return target.copy_with(host=address), pinned, extensions


def _origin(url: str) -> str:
    """``scheme://host:port`` of an absolute URL, without parsing it in full (hot path)."""
    start = url.find("//")
    end = url.find("/", start + 2) if start >= 0 else -1
    return url if end < 0 else url[:end]


class _OriginClients:
    """One small ``AsyncClient`` per origin; beyond ``limit`` the least recently used goes.

    httpcore's pool scans every queued request against every connection on each event; one
    pool shared by a wide fan-out (hundreds of requests over many hosts) spends most of its
    time there. Small pools per origin keep each scan short (see docs/benchmarks.md). An
    evicted client is closed once its last request has finished, never under a request.
    """

    def __init__(self, limit: int, slots: int) -> None:
        self._limit = limit
        self._slots = slots
        self._gates: dict[httpx.AsyncClient, asyncio.Semaphore] = {}
        self._clients: collections.OrderedDict[str, httpx.AsyncClient] = collections.OrderedDict()
        self._in_use: dict[httpx.AsyncClient, int] = {}
        self._evicted: set[httpx.AsyncClient] = set()
        self._closing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def use(
        self, origin: str, factory: Callable[[], httpx.AsyncClient]
    ) -> AsyncIterator[httpx.AsyncClient]:
        """The origin's client, once one of its connection slots is free (queueing)."""
        client = self._clients.get(origin)
        if client is None:
            client = self._clients[origin] = factory()
            self._gates[client] = asyncio.Semaphore(self._slots)
            while len(self._clients) > self._limit:
                _, old = self._clients.popitem(last=False)
                self._evicted.add(old)
                if not self._in_use.get(old):
                    self._close_later(old)
        else:
            self._clients.move_to_end(origin)
        self._in_use[client] = self._in_use.get(client, 0) + 1
        try:
            async with self._gates[client]:  # so that httpx's own pool never has to wait
                yield client
        finally:
            left = self._in_use[client] - 1
            if left:
                self._in_use[client] = left
            else:
                del self._in_use[client]
                if client in self._evicted:
                    self._close_later(client)

    def _close_later(self, client: httpx.AsyncClient) -> None:
        self._evicted.discard(client)
        self._gates.pop(client, None)
        task = asyncio.get_running_loop().create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        clients = [*self._clients.values(), *self._evicted]
        self._clients.clear()
        self._evicted.clear()
        for client in clients:
            await client.aclose()
        if self._closing:
            await asyncio.gather(*self._closing)


class _Handshake:
    """An httpcore trace hook: whether this request made its own TLS handshake."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    async def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        if event == "connection.start_tls.complete":
            self.done = True


class _CappedBody:
    """Collects a response body up to ``cap`` bytes; the rest is never read."""

    __slots__ = ("_cap", "_chunks", "_size")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; ``True`` once the cap is passed (stop reading)."""
        self._chunks.append(chunk)
        self._size += len(chunk)
        return self._size > self._cap

    def response(self, response: httpx.Response) -> HttpResponse:
        return HttpResponse(
            status_code=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=b"".join(self._chunks)[: self._cap],
            truncated=self._size > self._cap,
        )


def _caused_by(
    exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _tls_alert(exc: ssl.SSLError, url: str) -> ConnectError:
    """A TLS error: the server's certificate is not trusted, or the server refused us.

    Under TLS 1.3 a refused client certificate arrives after the handshake seemed
    complete, with the first read of the answer.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        return ConnectError(f"the TLS certificate of the server is not trusted: {detail}", url=url)
    if "_ALERT_" in (exc.reason or str(exc)):
        return ConnectError(refused_handshake(exc, ""), url=url)
    return ConnectError(f"the TLS handshake failed: {exc.reason or exc}", url=url)


def _tls_refusal(exc: httpx.HTTPError, url: str) -> ConnectError | None:
    """A failed or refused TLS handshake (a certificate not trusted, on either side)."""
    if not url.startswith("https:"):
        return None
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, ssl.SSLEOFError):
            return _tls_alert(seen, url)
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, httpx.ConnectError) and _caused_by(
        exc, (ConnectionResetError, ssl.SSLEOFError, EOFError)
    ):
        return ConnectError(refused_handshake(None, ""), url=url)
    return None


def _translate(exc: httpx.HTTPError, url: str, timeouts: Timeouts) -> TransportError:
    """Map an httpx exception to flnotify's tree, worded as a person would say it.

    The one place httpx errors are known; the httpx exception stays as ``__cause__``.
    """
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        for kind, (phase, doing) in _PHASES.items():
            if isinstance(exc, kind):
                seconds = getattr(timeouts, phase)
                return TransportTimeoutError(f"timed out after {seconds:g} s {doing}", url=url)
        return TransportTimeoutError(f"timed out ({message})", url=url)
    tls = _tls_refusal(exc, url)
    if tls is not None:
        return tls
    if isinstance(exc, httpx.ConnectError):
        if _caused_by(exc, socket.gaierror):
            return DNSError(f"the host name did not resolve ({exc})", url=url)
        if _caused_by(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
            return ConnectError("connection refused", url=url)
        if "all connection attempts failed" in str(exc).lower():
            return ConnectError("connection refused or host unreachable", url=url)
        return ConnectError(f"could not connect: {exc}", url=url)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return InvalidURLError(message, url=url)
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return ConnectionLostError(f"the connection was lost ({message})", url=url)
    if isinstance(exc, httpx.RemoteProtocolError):
        text = str(exc).lower()
        if "disconnect" in text or "closed" in text or "incomplete" in text:
            return ConnectionLostError(f"the connection was closed mid-response ({exc})", url=url)
        return ProtocolError(f"the answer was not valid HTTP ({exc})", url=url)
    if isinstance(exc, httpx.LocalProtocolError):
        return InvalidURLError(message, url=url)
    return TransportError(message, url=url)
