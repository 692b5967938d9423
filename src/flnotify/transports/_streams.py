"""The fast transport: a lean HTTP/1.1 client on asyncio with per-origin keep-alive pools.

Built for fan-out (one small JSON POST to thousands of receivers): an ``asyncio.Protocol``
per connection, responses parsed by ``httptools`` (llhttp), request heads assembled from
lines cached per origin plus the per-request headers, and one read timer per connection that
is moved, not re-created, for each request. It speaks only what this job needs: ``POST``
with a ``Content-Length`` body (never chunked); responses framed by ``Content-Length``,
chunked encoding or the end of the connection; interim ``1xx`` answers skipped; redirects
never followed.

Parses with ``httptools`` (``pip install flnotify[fast]``) if installed, else with h11
(installed with httpx) through ``_h11parser``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import collections
import inspect
import re
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final, cast
from urllib.parse import quote, unquote, urlsplit

import attrs

try:
    import httptools
except ImportError:  # without the fast extra: h11's parser behind httptools' interface
    import flnotify.transports._h11parser as httptools  # type: ignore[no-redef]

from .._closing import AsyncClosing
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
from .._version import __version__
from ._base import (
    DEFAULT_MAX_RESPONSE_BYTES,
    OWNED_HEADERS,
    Done,
    HttpResponse,
    Job,
    Timeouts,
    bad_value_char,
    checked_addresses,
    drive_each,
    is_token,
    tried_addresses,
)
from ._tls import TLSConfig, TLSFor, refused_handshake, tls_context

__all__ = ["StreamTransport"]

_MAX_HEAD_BYTES: Final = 64 * 1024
"""A response whose status line and headers exceed this is refused as broken HTTP."""

_MAX_CACHED_ORIGINS: Final = 4096
"""``scheme://authority`` prefixes remembered with their origin; emptied when full."""

_MAX_CACHED_NAMES: Final = 512
"""Header names remembered with their formatted ``"Name: "``."""

_LARGE_BODY: Final = 64 * 1024
"""Bodies from this size on are written on their own instead of being copied behind the head."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# The usual URL in one match: scheme://authority, then a path (and query) that needs no
# quoting (RFC 3986 pchar, "/", "?" and percent escapes) and no fragment.
_SIMPLE_URL: Final = re.compile(
    r"([A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*)(/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)"
).fullmatch
# Any other: scheme://authority, then the rest up to a fragment. origin() checks the first part.
_URL_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*)([^#]*)", re.DOTALL)
_TARGET_SAFE: Final = "/?:@!$&'()*+,;=-._~%"
_USER_AGENT: Final = "User-Agent: "


def _default_user_agent() -> str:
    return f"flnotify/{__version__}"


class _Headers(Mapping[str, str]):
    """Response headers as received, decoded (names lower-cased, last value wins) on first use.

    Until then they are one bytes object, ``name NUL value NUL ...`` (llhttp refuses NUL in
    names and values): a report that keeps 100,000 responses keeps 100,000 small blobs, not
    a million bytes objects.
    """

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: list[bytes]) -> None:
        self._raw = b"\0".join(raw)  # name, value, name, value, ...
        self._decoded: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = {}
            if self._raw:
                fields = self._raw.decode("latin-1").split("\0")
                for i in range(0, len(fields) - 1, 2):
                    decoded[fields[i].lower()] = fields[i + 1]
            self._raw = b""
        return decoded

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())

    def __reduce__(self) -> tuple[type[dict[str, str]], tuple[dict[str, str]]]:
        return dict, (self._dict(),)  # pickles (and copies) as a plain dict


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: feeds received bytes to httptools, resolves one response."""

    __slots__ = (
        "_body",
        "_body_len",
        "_deadline",
        "_feeding",
        "_hard_deadline",
        "_head_bytes",
        "_headers_done",
        "_interim",
        "_lost_waiter",
        "_parser",
        "_paused",
        "_pool",
        "_raw_headers",
        "_status",
        "_timer",
        "_truncated",
        "_url",
        "counted",
        "got_bytes",
        "handler",
        "idle",
        "idle_since",
        "job",
        "keep_alive",
        "lost",
        "outcome",
        "reused",
        "transport",
        "waiter",
    )

    _raw_headers: list[bytes]
    _body: list[bytes]

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[HttpResponse] | None = None
        # driven mode (StreamTransport.drive): called with the outcome instead of a future
        self.handler: Callable[[_Connection], None] | None = None
        self.job: Any = None  # the driver's own record of the request in flight
        self.outcome: HttpResponse | TransportError | None = None
        self._feeding = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._hard_deadline = 0.0  # the end of the whole attempt (Timeouts.total)
        self._paused = False
        self._lost_waiter: asyncio.Future[None] | None = None
        self.counted = False  # holds one of the pool's slots
        self.idle = False
        self.idle_since = 0.0
        self.lost = False
        self.reused = False
        self.keep_alive = False
        self.got_bytes = False
        self._url = ""
        self._reset_message()

    def _reset_message(self) -> None:
        self._status = 0
        self._raw_headers = []
        self._body = []
        self._body_len = 0
        self._truncated = False
        self._interim = False
        self._headers_done = False
        self._head_bytes = 0

    # -- used by the pool's client ----------------------------------------------------------

    def send(
        self, url: str, data: bytes, body: bytes | None, hard_deadline: float
    ) -> asyncio.Future[HttpResponse]:
        """Write one request; return the future of its response (due by ``hard_deadline``)."""
        pool = self._pool
        loop = pool.loop
        self._url = url
        self._reset_message()
        self.got_bytes = False
        self.keep_alive = True
        self.handler = None
        waiter = self.waiter = loop.create_future()
        transport = self.transport
        if transport is None or self.lost:  # closed while being handed over: as if stale
            self._end_of_stream(None)
            return waiter
        self._hard_deadline = hard_deadline
        self._deadline = min(loop.time() + pool.read_timeout, hard_deadline)
        self._arm()
        transport.write(data)
        if body is not None:
            transport.write(body)
        return waiter

    def drive(
        self,
        url: str,
        data: bytes,
        hard_deadline: float,
        handler: Callable[[_Connection], None],
        job: object,
    ) -> None:
        """Write one request; ``handler(self)`` is called once its ``outcome`` is set.

        No future: the protocol calls the driver itself when the response is complete
        (or the request failed), outside the parser.
        """
        pool = self._pool
        self._url = url
        self._reset_message()
        self.got_bytes = False
        self.keep_alive = True
        self.waiter = None
        self.outcome = None
        self.handler = handler
        self.job = job
        transport = self.transport
        if transport is None or self.lost:  # closed while being handed over: as if stale
            self._end_of_stream(None)
            return
        self._hard_deadline = hard_deadline
        self._deadline = min(pool.loop.time() + pool.read_timeout, hard_deadline)
        self._arm()
        transport.write(data)

    def _pending(self) -> bool:
        """Whether a request waits for its outcome."""
        if self.handler is not None:
            return self.outcome is None
        waiter = self.waiter
        return waiter is not None and not waiter.done()

    def _hand_over(self) -> None:
        """Give a driven request's outcome to its handler (never from inside the parser)."""
        handler = self.handler
        if handler is not None and self.outcome is not None and not self._feeding:
            self.handler = None
            handler(self)

    def usable(self, now: float, expiry: float) -> bool:
        """Whether this idle connection may carry another request."""
        transport = self.transport
        return (
            not self.lost
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < expiry
        )

    def abort(self) -> None:
        """Close now, dropping anything unsent or unread."""
        self.keep_alive = False
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def wait_lost(self) -> asyncio.Future[None]:
        """A future that completes once the connection is closed."""
        if self._lost_waiter is None:
            self._lost_waiter = self._pool.loop.create_future()
            if self.lost:
                self._lost_waiter.set_result(None)
        return self._lost_waiter

    # -- the timer ------------------------------------------------------------------------------

    def _arm(self) -> None:
        # One timer per connection, moved lazily: a request (or received data) only pushes
        # _deadline; the timer, when it fires early, re-arms itself for the new deadline.
        timer = self._timer
        if timer is None:
            self._timer = self._pool.loop.call_at(self._deadline, self._on_timer)
        elif timer.when() > self._deadline:
            timer.cancel()
            self._timer = self._pool.loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._pending() or self.lost:
            return
        pool = self._pool
        now = pool.loop.time()
        if self._deadline - now > 0.001:
            self._arm()
            return
        if self._hard_deadline - now <= 0.001:
            seconds, what = pool.total_timeout, "the whole attempt took too long"
        elif self._paused:
            seconds, what = pool.write_timeout, "writing the request"
        else:
            seconds, what = pool.read_timeout, "reading the response"
        self._fail(TransportTimeoutError(f"timed out after {seconds:g} s {what}", url=self._url))
        self.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        self._paused = True
        self._deadline = min(self._pool.loop.time() + self._pool.write_timeout, self._hard_deadline)
        self._arm()

    def resume_writing(self) -> None:
        self._paused = False
        self._deadline = min(self._pool.loop.time() + self._pool.read_timeout, self._hard_deadline)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._pending():
            # Bytes nobody asked for (a "408" before the server closes an idle connection,
            # the rest of a truncated body): this connection cannot carry another request.
            self.abort()
            return
        self.got_bytes = True
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._feeding = False
            self._protocol_error("the server switched protocols", exc)
            self._hand_over()  # a response may have completed before the junk
            return
        except httptools.HttpParserError as exc:
            self._feeding = False
            self._protocol_error(f"malformed HTTP response: {exc}", exc)
            self._hand_over()
            return
        self._feeding = False
        if not self._pending():
            self._hand_over()
            return  # the usual case: the whole response came in one piece
        if not self._paused:
            self._deadline = min(
                self._pool.loop.time() + self._pool.read_timeout, self._hard_deadline
            )
        if not self._headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._protocol_error(f"response head larger than {_MAX_HEAD_BYTES} bytes", None)

    def eof_received(self) -> bool:
        self._end_of_stream(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_of_stream(exc)
        self.lost = True
        self.keep_alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        self._pool.connection_lost(self)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept raw; decoded only if someone reads the headers (most fan-outs never do).
        self._raw_headers += (name, value)

    def on_headers_complete(self) -> None:
        if not self._pending():
            self.keep_alive = False  # a second response nobody asked for
            return
        status = self._parser.get_status_code()
        if status < 200:
            self._interim = True  # 1xx: skipped, the real answer follows
            return
        self._status = status
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self._truncated:
            return
        room = self._pool.max_response_bytes - self._body_len
        if len(body) <= room:
            self._body.append(body)
            self._body_len += len(body)
            return
        if room > 0:
            self._body.append(body[:room])
            self._body_len += room
        # The status counts; the rest of the body is never read and the connection is closed.
        self._truncated = True
        self.keep_alive = False
        self._resolve()
        if self.transport is not None:
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._reset_message()
            return
        if not self._parser.should_keep_alive():
            self.keep_alive = False
        self._resolve()

    # -- outcomes -----------------------------------------------------------------------------

    def _resolve(self) -> None:
        if not self._pending():
            return
        body = self._body
        response = HttpResponse(
            self._status,
            _Headers(self._raw_headers),
            body[0] if len(body) == 1 else b"".join(body),
            self._truncated,
        )
        if self.handler is not None:
            self.outcome = response
            self._hand_over()
        else:
            cast(asyncio.Future[HttpResponse], self.waiter).set_result(response)

    def _fail(self, error: TransportError) -> None:
        self.keep_alive = False
        if not self._pending():
            return
        if self.handler is not None:
            self.outcome = error
            self._hand_over()
        else:
            cast(asyncio.Future[HttpResponse], self.waiter).set_exception(error)

    def _protocol_error(self, message: str, cause: BaseException | None) -> None:
        error = ProtocolError(message, url=self._url)
        error.__cause__ = cause
        self._fail(error)
        self.abort()

    def _close_delimited(self) -> bool:
        """Whether the body runs until the connection ends (no length, not chunked)."""
        headers = _Headers(self._raw_headers)
        if "content-length" in headers:
            return False
        return "chunked" not in headers.get("transfer-encoding", "").lower()

    def _end_of_stream(self, exc: Exception | None) -> None:
        self.keep_alive = False
        if not self._pending():
            return
        if self._headers_done and exc is None and self._close_delimited():
            self._resolve()  # a body delimited by the end of the connection
            return
        if self.got_bytes:
            message = "connection closed in the middle of the response"
        else:
            message = "connection closed before any response"
        error: TransportError
        if self._pool.tls and not self.got_bytes and not self.reused and _refusal(exc):
            # a new TLS connection ended before any answer: under TLS 1.3 a server refuses
            # a client certificate after our side of the handshake is done, with an alert
            # or (servers on asyncio) by closing the connection
            where = f"{self._pool.host}:{self._pool.port}"
            error = ConnectError(refused_handshake(exc, where, after=True), url=self._url)
        else:
            if exc is not None:
                message = f"{message}: {exc}"
            error = ConnectionLostError(message, url=self._url)
        error.__cause__ = exc
        self._fail(error)


class _PoolTimeoutError(Exception):
    """Internal: a pool waiter's time ran out."""


def _expire_waiter(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(_PoolTimeoutError())


def _discard_late_connection(
    task: asyncio.Task[tuple[asyncio.BaseTransport, _Connection]],
) -> None:
    """Close a connection whose opener stopped waiting for it (timeout or cancellation)."""
    if not task.cancelled() and task.exception() is None:
        cast(asyncio.Transport, task.result()[0]).abort()


def _connect_error(
    exc: BaseException, url: str, host: str, port: int, tls: bool = False
) -> TransportError:
    """Translate what ``loop.create_connection`` raised (the one place that knows these)."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return DNSError(f"could not resolve {host!r}: {exc.strerror or exc}", url=url)
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        return ConnectError(f"TLS certificate of {where} not trusted: {detail}", url=url)
    if tls and _refusal(exc):
        return ConnectError(refused_handshake(exc, where), url=url)
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"TLS handshake with {where} failed: {exc}", url=url)
    if isinstance(exc, builtins.TimeoutError):
        return TransportTimeoutError(f"timed out connecting to {where}: {exc}", url=url)
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connection refused by {where}", url=url)
    if isinstance(exc, OSError):
        return ConnectError(f"could not connect to {where}: {exc.strerror or exc}", url=url)
    return ConnectError(f"could not connect to {where}: {exc!r}", url=url)


def _refusal(exc: BaseException | None) -> bool:
    """Whether a TLS connection ended as a refusing server ends it: an alert, a close, a reset."""
    if isinstance(exc, ssl.SSLError):
        return isinstance(exc, ssl.SSLEOFError) or "_ALERT_" in (exc.reason or str(exc))
    return exc is None or isinstance(exc, (ConnectionResetError, EOFError))


class _Pool:
    """The connections to one origin: at most ``limit``, idle ones reused newest first."""

    __slots__ = (
        "_addresses",
        "_context",
        "_server_hostname",
        "_state",
        "closed",
        "connections",
        "host",
        "idle",
        "limit",
        "loop",
        "max_response_bytes",
        "port",
        "read_timeout",
        "size",
        "tls",
        "total_timeout",
        "waiters",
        "write_timeout",
    )

    def __init__(
        self,
        state: _LoopState,
        host: str,
        port: int,
        tls: bool,
        addresses: tuple[str, ...] | None = None,
    ) -> None:
        settings = state.settings
        self._state = state
        self.loop = state.loop
        self.host = host
        self.port = port
        # where to connect: the host (the loop resolves it and tries each address), or the
        # addresses the endpoint guard checked, tried in order
        self._addresses = (host,) if addresses is None else addresses
        self.tls = tls
        self._context: ssl.SSLContext | None = None
        self._server_hostname = host if tls else None
        self.limit = settings.max_connections_per_origin
        self.read_timeout = settings.timeouts.read
        self.write_timeout = settings.timeouts.write
        self.total_timeout = settings.timeouts.total
        self.max_response_bytes = settings.max_response_bytes
        self.idle: list[_Connection] = []
        self.connections: set[_Connection] = set()
        self.size = 0  # open or opening connections, plus slots handed to waiters
        self.closed = False
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()

    # -- slots ----------------------------------------------------------------------------------

    def take_idle(self) -> _Connection | None:
        """The newest idle connection still usable, if any (closing the unusable ones)."""
        idle = self.idle
        if not idle:
            return None
        oldest = self.loop.time() - self._state.settings.keepalive_expiry
        state = self._state
        while idle:
            conn = idle.pop()
            conn.idle = False
            state.idle_count -= 1
            transport = conn.transport
            if conn.idle_since > oldest and transport is not None and not transport.is_closing():
                conn.reused = True
                return conn
            self.discard(conn)
        return None

    async def acquire(self, url: str) -> tuple[_Connection, float]:
        """An idle connection, a new one in a free slot, or the next one released.

        Returns:
            The connection, and when the attempt began: when its slot was had, so that
            queueing for a slot is not part of the attempt's time (connecting is).
        """
        conn = self.take_idle()
        if conn is not None:
            return conn, self.loop.time()
        if self.size < self.limit:
            self.size += 1
            begun = self.loop.time()
            return await self.open(url), begun
        return await self._wait(url)

    async def _wait(self, url: str) -> tuple[_Connection, float]:
        loop = self.loop
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self.waiters.append(waiter)
        timeout = self._state.settings.timeouts.pool
        timer = None if timeout is None else loop.call_later(timeout, _expire_waiter, waiter)
        try:
            got = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed over just as we were cancelled
            raise
        except _PoolTimeoutError:
            msg = f"timed out after {timeout:g} s waiting for a free connection"
            raise TransportTimeoutError(msg, url=url) from None
        finally:
            if timer is not None:
                timer.cancel()
        begun = loop.time()
        if got is None:
            return await self.open(url), begun  # a free slot was handed over
        if not got.usable(begun, self._state.settings.keepalive_expiry):
            self.discard(got, keep_slot=True)
            return await self.open(url), begun
        got.reused = True
        return got, begun

    def _give_back(self, conn: _Connection | None) -> None:
        if conn is None:
            self._free_slot()
        else:
            self.release(conn)

    def _free_slot(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter
                return
        self.size -= 1

    def release(self, conn: _Connection) -> None:
        """Take back a connection after a complete response; close it if it cannot be reused."""
        if not conn.keep_alive or conn.lost or self.closed:
            self.discard(conn)
            return
        conn.idle_since = self.loop.time()
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        state = self._state
        if state.idle_count >= state.settings.max_idle_connections:
            self.discard(conn)  # enough idle connections kept over all origins
            return
        conn.idle = True
        self.idle.append(conn)
        state.idle_count += 1

    def discard(self, conn: _Connection, *, keep_slot: bool = False) -> None:
        """Close ``conn`` and free its slot, or keep the slot for the caller's next connection."""
        conn.abort()
        if conn.idle:
            conn.idle = False
            self.idle.remove(conn)
            self._state.idle_count -= 1
        if conn.counted:
            conn.counted = False
            self.connections.discard(conn)
            if not keep_slot:
                self._free_slot()

    def connection_lost(self, conn: _Connection) -> None:
        """The peer (or we) closed ``conn``: an idle one leaves the pool now."""
        if conn.idle:
            self.discard(conn)

    # -- opening ----------------------------------------------------------------------------

    async def open(self, url: str) -> _Connection:
        """Connect in a slot the caller holds; the slot is freed if that fails."""
        try:
            if self.closed:
                raise ConnectionLostError("the transport was closed", url=url)
            conn = await self._connect(url)
        except BaseException:
            self._free_slot()
            raise
        conn.counted = True
        self.connections.add(conn)
        return conn

    async def _connect(self, url: str) -> _Connection:
        """Connect to the first address that answers, within the attempt's time limit."""
        loop = self.loop
        timeouts = self._state.settings.timeouts
        context = self._context
        if context is None and self.tls:  # once per pool: per-receiver settings are looked up
            context = self._context = self._state.settings._tls_context(self.host, self.port)
        addresses = self._addresses
        deadline = loop.time() + timeouts.total
        for number, address in enumerate(addresses, 1):
            limit = min(timeouts.connect, deadline - loop.time())
            try:
                return await self._connect_to(address, context, limit, url)
            except _UnansweredError as failed:
                if number == len(addresses) or deadline - loop.time() <= 0:
                    error = tried_addresses(failed.error, addresses[:number])
                    raise error from failed.__cause__
        raise AssertionError("unreachable: a pool has at least one address")  # pragma: no cover

    async def _connect_to(
        self, address: str, context: ssl.SSLContext | None, timeout: float, url: str
    ) -> _Connection:
        loop = self.loop
        task: asyncio.Task[tuple[asyncio.BaseTransport, _Connection]] = loop.create_task(
            loop.create_connection(
                lambda: _Connection(self),
                address,  # the host, or an address the endpoint guard checked
                self.port,
                ssl=context,
                server_hostname=self._server_hostname,
                ssl_handshake_timeout=timeout if context is not None else None,
                **self._state.connect_options,
            )
        )
        # asyncio.wait, unlike wait_for, neither swallows the caller's cancellation nor
        # loses a connection that completes just as we give up: a late one is closed.
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_discard_late_connection)
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_discard_late_connection)
            msg = f"timed out after {timeout:g} s connecting to {address}:{self.port}"
            raise _UnansweredError(TransportTimeoutError(msg, url=url))
        try:
            _, conn = task.result()
        except (OSError, EOFError, ssl.SSLError) as exc:
            error = _connect_error(exc, url, address, self.port, self.tls)
            if _unanswered(exc):
                raise _UnansweredError(error) from exc
            raise error from exc
        return conn


class _UnansweredError(Exception):
    """Internal: an address did not take the connection (the next one may)."""

    def __init__(self, error: TransportError) -> None:
        super().__init__(error)
        self.error = error


def _unanswered(exc: BaseException) -> bool:
    """Whether connecting failed before any TLS: refused, unreachable, no route."""
    if isinstance(exc, (ssl.SSLError, EOFError, ConnectionResetError, socket.gaierror)):
        return False
    return isinstance(exc, OSError)


def _connect_options(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """What this loop's ``create_connection`` takes beyond the common arguments.

    asyncio's races a host's addresses (happy eyeballs); uvloop's tries them in turn and
    refuses the argument.
    """
    try:
        parameters = inspect.signature(loop.create_connection).parameters
    except (TypeError, ValueError):  # a compiled loop may not tell
        return {}
    return {"happy_eyeballs_delay": 0.25} if "happy_eyeballs_delay" in parameters else {}


@attrs.frozen
class _Origin:
    """What a ``scheme://authority`` prefix stands for: its pool and its cached head lines."""

    pool: _Pool
    lines: str  # "Host: ...\r\n", plus "Authorization: ...\r\n" for user:password@
    key: tuple[str, str, int]  # (scheme, host, port)


class _LoopState:
    """The pools of one event loop (asyncio connections belong to the loop that made them)."""

    __slots__ = ("connect_options", "idle_count", "loop", "origins", "pools", "settings")

    def __init__(self, settings: StreamTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.connect_options = _connect_options(loop)
        self.origins: dict[str, _Origin] = {}
        self.pools: dict[tuple[str | int, ...], _Pool] = {}  # (scheme, host, port[, address])
        self.idle_count = 0  # over all origins

    def origin(self, prefix: str, url: str) -> _Origin:
        """Parse and check ``scheme://authority`` once; cache its pool and head lines."""
        if bad_value_char(prefix) or " " in prefix or "\t" in prefix or "\\" in prefix:
            raise InvalidURLError(f"invalid characters in URL {url!r}", url=url)
        try:
            parts = urlsplit(prefix)
            port = parts.port
            host = parts.hostname
        except ValueError as exc:
            raise InvalidURLError(f"invalid URL {url!r}: {exc}", url=url) from exc
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise InvalidURLError(f"unsupported scheme {parts.scheme!r} (http or https)", url=url)
        if not host:
            raise InvalidURLError(f"no host in URL {url!r}", url=url)
        if port is None:
            if parts.netloc.endswith(":"):
                raise InvalidURLError(f"empty port in URL {url!r}", url=url)
            port = _DEFAULT_PORTS[scheme]
        elif port == 0:
            raise InvalidURLError(f"port 0 in URL {url!r}", url=url)
        if ":" in host:  # an IPv6 literal
            host_header = f"[{host}]"
        else:
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise InvalidURLError(f"invalid host name in URL {url!r}", url=url) from exc
            host_header = host
        if port != _DEFAULT_PORTS[scheme]:
            host_header = f"{host_header}:{port}"
        lines = f"Host: {host_header}\r\n"
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(credentials.encode("utf-8")).decode("ascii")
            lines += f"Authorization: Basic {token}\r\n"

        key = (scheme, host, port)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = _Pool(self, host, port, scheme == "https")
        if len(self.origins) >= _MAX_CACHED_ORIGINS:
            self._prune()
        origin = self.origins[prefix] = _Origin(pool, lines, key)
        return origin

    def pinned(self, origin: _Origin, addresses: tuple[str, ...]) -> _Pool:
        """The pool of ``origin``'s connections to ``addresses`` (never shared with others)."""
        key: tuple[str | int, ...] = (*origin.key, *addresses)
        pool = self.pools.get(key)
        if pool is None:
            scheme, host, port = origin.key
            pool = self.pools[key] = _Pool(self, host, port, scheme == "https", addresses)
        return pool

    def _prune(self) -> None:
        """Forget cached prefixes, and pools holding nothing (a fan-out to many hosts)."""
        self.origins.clear()
        for key, pool in list(self.pools.items()):
            if pool.size == 0 and not pool.waiters:
                del self.pools[key]

    async def aclose(self) -> None:
        """Close every connection and fail every pool waiter."""
        lost: list[asyncio.Future[None]] = []
        for pool in self.pools.values():
            pool.closed = True
            for waiter in pool.waiters:
                waiter.cancel()
            pool.waiters.clear()
            for conn in list(pool.connections):
                if not conn.lost:
                    lost.append(conn.wait_lost())
                pool.discard(conn)
        self.pools.clear()
        self.origins.clear()
        self.idle_count = 0
        if lost:
            # abort() reports connection_lost on the next loop iteration; wait for it so
            # that every socket is closed when aclose() returns.
            await asyncio.wait(lost, timeout=1.0)


def _split_url(url: str) -> tuple[str, str, str]:
    """``(url, scheme://authority, request target)`` for URLs _SIMPLE_URL does not take."""
    match = _URL_RE.match(url)
    if match is None:
        url = url.strip(" \t\r\n\f\v\x00")  # as browsers (and httpx) do
        match = _URL_RE.match(url)
        if match is None:
            raise InvalidURLError(f"not an absolute http(s) URL: {url!r}", url=url)
    prefix, target = match.groups()
    if not target.startswith("/"):
        target = "/" + target
    return url, prefix, quote(target, safe=_TARGET_SAFE)


class _Driver:
    """One driven fan-out: pulls jobs as connections free up (see StreamTransport.drive).

    A job whose origin has no idle connection but this fan-out's jobs on some is parked
    for that origin, and the next of those connections to complete carries it at once (no
    task, future or pool waiter per job). A new connection is opened (in a task: the slow
    start) only for an origin none of whose connections carries one of its jobs, or once
    each of them has a parked job waiting, up to ``max_connections_per_origin``.
    """

    __slots__ = (
        "_busy",
        "_connections",
        "_done",
        "_ended",
        "_jobs",
        "_limit",
        "_loop",
        "_parked",
        "_settings",
        "_state",
        "_stopped",
        "_tail",
        "_tasks",
        "in_flight",
    )

    def __init__(
        self,
        settings: StreamTransport,
        state: _LoopState,
        tail: bytes,
        jobs: Iterator[Job],
        done: Done,
        limit: int,
    ) -> None:
        self._settings = settings
        self._state = state
        self._loop = state.loop
        self._tail = tail
        self._jobs = jobs
        self._done = done
        self._limit = limit
        self.in_flight = 0  # jobs started and not reported, parked ones included
        self._stopped = False
        self._ended: asyncio.Future[None] = state.loop.create_future()
        self._connections: set[_Connection] = set()  # carrying a driven request
        self._tasks: set[asyncio.Task[None]] = set()  # opening connections
        self._busy: dict[_Pool, int] = {}  # per origin: jobs on a connection or opening one
        # per origin: jobs waiting for one of its busy connections (url, data, token, since)
        self._parked: dict[_Pool, collections.deque[tuple[str, bytes, object, float]]] = {}

    async def run(self) -> None:
        try:
            self._pump()
            await self._ended
        finally:
            self._stopped = True
            for task in list(self._tasks):
                task.cancel()
            for conn in list(self._connections):
                conn.handler = None
                conn._pool.discard(conn)

    def _pump(self, free: _Connection | None = None) -> None:
        """Start jobs until ``limit`` are in flight or none is left.

        ``free`` is the connection whose response just completed, not yet back in its pool:
        when the next job goes to the same origin it carries that job at once (what
        releasing it and taking the pool's newest idle connection would do).
        """
        jobs, state, loop, busy = self._jobs, self._state, self._loop, self._busy
        origins = state.origins
        while self.in_flight < self._limit and not self._stopped:
            job = next(jobs, None)
            if job is None:
                if free is not None:
                    free._pool.release(free)
                if self.in_flight == 0 and not self._ended.done():
                    self._ended.set_result(None)
                return
            url, own, token = job
            try:
                match = _SIMPLE_URL(url)
                if match is not None:
                    prefix, target = match.groups()
                else:
                    url, prefix, target = _split_url(url)
                origin = origins.get(prefix)
                if origin is None:
                    origin = state.origin(prefix, url)
                try:
                    head = f"POST {target} HTTP/1.1\r\n{origin.lines}{own}"
                    data = head.encode("latin-1") + self._tail
                except UnicodeEncodeError as exc:
                    msg = f"request head not encodable as Latin-1: {exc.reason}"
                    raise InvalidURLError(msg, url=url) from exc
            except Exception as exc:  # refused before any I/O, as apost raises it
                self._report(token, None, exc)
                continue
            self.in_flight += 1
            pool = origin.pool
            conn: _Connection | None
            if free is not None and free._pool is pool:
                conn, free = free, None
                conn.reused = True
            else:
                if free is not None:
                    free._pool.release(free)
                    free = None
                conn = pool.take_idle() if pool.idle else None
            if conn is not None:
                busy[pool] = busy.get(pool, 0) + 1
                self._send(conn, pool, url, data, token, loop.time() + pool.total_timeout, True)
            else:
                working = busy.get(pool, 0)
                parked = self._parked.get(pool)
                if working and (not parked or len(parked) < working or pool.size >= pool.limit):
                    # a busy connection of ours takes it next: no task, no new connection
                    if parked is None:
                        parked = self._parked[pool] = collections.deque()
                    parked.append((url, data, token, loop.time()))
                else:  # more connections while each busy one has a job waiting, to the limit
                    self._start_open(pool, url, data, token)
        if free is not None:  # stopped, or enough in flight: back to its pool
            free._pool.release(free)

    def _send(
        self,
        conn: _Connection,
        pool: _Pool,
        url: str,
        data: bytes,
        token: object,
        hard_deadline: float,
        again: bool,
    ) -> None:
        self._connections.add(conn)
        conn.drive(
            url, data, hard_deadline, self._completed, (pool, token, data, hard_deadline, again)
        )

    def _start_open(
        self, pool: _Pool, url: str, data: bytes, token: object, hard_deadline: float | None = None
    ) -> None:
        if hard_deadline is None:  # a job of this origin more on its way to a connection
            self._busy[pool] = self._busy.get(pool, 0) + 1
        task = self._loop.create_task(self._open(pool, url, data, token, hard_deadline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(
        self,
        pool: _Pool,
        url: str,
        data: bytes,
        token: object,
        hard_deadline: float | None = None,
    ) -> None:
        """A connection for a job (a new one, or the next released): the slow start."""
        try:
            if hard_deadline is None:
                conn, begun = await pool.acquire(url)
                again = True
                hard_deadline = begun + pool.total_timeout
            else:  # the once-only retry after a reused connection was found closed
                conn, again = await pool.open(url), False
        except Exception as exc:
            self._ended_job(pool, token, None, exc)
            self._resume_parked(pool)
            self._pump()
            return
        if self._stopped:
            pool.discard(conn)
            return
        self._send(conn, pool, url, data, token, hard_deadline, again)

    def _completed(self, conn: _Connection) -> None:
        """A driven request ended: record it, then start the next job."""
        self._connections.discard(conn)
        pool, token, data, hard_deadline, again = conn.job
        conn.job = None
        outcome = conn.outcome
        if self._stopped:
            pool.discard(conn)
            return
        if type(outcome) is HttpResponse:
            self._ended_job(pool, token, outcome, None)
            transport = conn.transport
            if (
                conn.keep_alive
                and not conn.lost
                and transport is not None
                and not transport.is_closing()
                and not pool.closed
                and not pool.waiters
            ):
                parked = self._next_parked(pool)
                if parked is None:
                    self._pump(conn)  # the next job, if to the same origin, takes it at once
                    return
                url, data, token, _ = parked
                conn.reused = True
                self._busy[pool] += 1
                now = self._loop.time()
                self._send(conn, pool, url, data, token, now + pool.total_timeout, True)
                self._pump()
                return
            pool.release(conn)
        elif (
            again
            and conn.reused
            and not conn.got_bytes
            and isinstance(outcome, ConnectionLostError)
        ):
            # a kept-alive connection closed just as it was reused: once on a new one, as apost
            pool.discard(conn, keep_slot=True)
            self._start_open(pool, conn._url, data, token, hard_deadline)
            return
        else:
            pool.discard(conn)
            self._ended_job(pool, token, None, cast(TransportError, outcome))
        self._resume_parked(pool)
        self._pump()

    def _ended_job(
        self, pool: _Pool, token: object, response: HttpResponse | None, exc: Exception | None
    ) -> None:
        self.in_flight -= 1
        self._busy[pool] -= 1
        self._report(token, response, exc)

    def _next_parked(self, pool: _Pool) -> tuple[str, bytes, object, float] | None:
        """The next job parked for ``pool``; those that waited too long fail as apost's would."""
        parked = self._parked.get(pool)
        limit = self._state.settings.timeouts.pool
        while parked:
            job = parked.popleft()
            if limit is None or self._loop.time() - job[3] <= limit:
                return job
            self.in_flight -= 1
            msg = f"timed out after {limit:g} s waiting for a free connection"
            self._report(job[2], None, TransportTimeoutError(msg, url=job[0]))
        return None

    def _resume_parked(self, pool: _Pool) -> None:
        """A connection of ``pool`` went without taking a parked job: one goes the slow way."""
        job = self._next_parked(pool)
        if job is not None and not self._stopped:
            url, data, token, _ = job
            self._start_open(pool, url, data, token)

    def _report(self, token: object, response: HttpResponse | None, exc: Exception | None) -> None:
        try:
            self._done(token, response, exc)
        except Exception as failure:  # the caller's bug must not stop the other jobs
            self._stopped = True
            if not self._ended.done():
                self._ended.set_exception(failure)


def _check_positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        msg = f"{attribute.name} must be at least 1, not {value}"
        raise ConfigurationError(msg)


def _check_non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        msg = f"{attribute.name} must not be negative, not {value}"
        raise ConfigurationError(msg)


def _check_user_agent(_: object, __: object, value: str) -> None:
    if bad_value_char(value):
        msg = f"user_agent {value!r} contains control characters"
        raise ConfigurationError(msg)


@attrs.define(eq=False)  # a stateful object: equal only to itself
class StreamTransport(AsyncClosing):
    """A fast asyncio HTTP/1.1 transport: keep-alive pools per origin, httptools parsing.

    Connections are pooled per (scheme, host, port), at most ``max_connections_per_origin``
    each; idle ones are reused newest first, and closed when the server closes them or after
    ``keepalive_expiry`` seconds. A POST that fails on a *reused* connection before any
    response byte arrived is retried once on a new connection (servers close idle
    keep-alives at any moment). Response bodies are read up to ``max_response_bytes``; a
    longer one is cut (``truncated=True``, the status counts) and its connection closed.
    Redirects are never followed. Cancelling [`apost`][] closes the connection it used.

    Connections belong to the event loop that opened them; each loop gets its own pools.

    Args:
        timeouts: Connect (TCP and TLS handshake), write, read (each wait for data), the
            whole attempt (``total``, from having a connection slot to the last byte) and
            the optional pool limit (waiting for a free slot is queueing, unbounded unless
            set).
        max_response_bytes: How much of a response body is read.
        max_connections_per_origin: Connections open at once to one origin.
        ssl_context: For ``https``; by default ``ssl.create_default_context()``:
            certificates verified against the system's CAs, host names checked.
        user_agent: The ``User-Agent``, unless the caller's headers carry one.
        keepalive_expiry: Idle connections older than this many seconds are not reused.
        max_idle_connections: Idle connections kept over all origins (a fan-out to many
            hosts); a connection released beyond this number is closed instead.
        tls: A client certificate and trusted CAs (mutual TLS), instead of
            ``ssl_context``.
        tls_for: Per-receiver TLS: called once per ``https`` origin (and event loop) with
            its host and port; its context or settings, or ``None`` for the transport's.
    """

    bounds_attempts: ClassVar[bool] = True
    """Every attempt ends within ``timeouts.total`` (the Notifier adds no bound of its own)."""

    pins_connections: ClassVar[bool] = True
    """``apost`` takes ``connect_to=``: the address the endpoint guard checked."""

    timeouts: Timeouts = attrs.field(factory=Timeouts)
    max_response_bytes: int = attrs.field(
        default=DEFAULT_MAX_RESPONSE_BYTES, validator=_check_non_negative
    )
    max_connections_per_origin: int = attrs.field(default=6, validator=_check_positive)
    ssl_context: ssl.SSLContext | None = None
    user_agent: str = attrs.field(factory=_default_user_agent, validator=_check_user_agent)
    keepalive_expiry: float = attrs.field(default=5.0, validator=_check_non_negative)
    max_idle_connections: int = attrs.field(default=512, validator=_check_positive)
    tls: TLSConfig | None = None
    tls_for: TLSFor | None = None
    _state: _LoopState | None = attrs.field(init=False, default=None, repr=False)
    _states: dict[asyncio.AbstractEventLoop, _LoopState] = attrs.field(
        init=False, factory=dict, repr=False
    )
    _names: dict[str, str] = attrs.field(init=False, factory=dict, repr=False)
    _default_tls: ssl.SSLContext | None = attrs.field(init=False, default=None, repr=False)

    # -- public API -------------------------------------------------------------------------

    def __attrs_post_init__(self) -> None:
        if self.tls is not None and self.ssl_context is not None:
            msg = "StreamTransport takes tls= or ssl_context=, not both"
            raise ConfigurationError(msg)
        if self.tls is not None:
            self.tls.context()  # a missing or broken file is refused now, not at a POST

    async def apost(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_to: str | Sequence[str] | None = None,
    ) -> HttpResponse:
        """POST ``body`` to ``url`` and return the response, its body capped.

        Args:
            url: An ``http`` or ``https`` URL; its fragment is not sent.
            body: The request body, sent with ``Content-Length``.
            headers: Request headers (``Content-Type``, signatures, ...). Framing and
                connection headers (``Host``, ``Content-Length``, ``Transfer-Encoding``,
                ``Connection``, ...) are the transport's own; these are ignored.
            connect_to: Connect to this IP address instead of resolving the URL's host
                (the address the endpoint guard checked), or to the first of several
                that takes the connection (refused, unreachable or silent ones are
                skipped within the attempt's time limit); the host name stays in the
                ``Host`` header and, for ``https``, in SNI and certificate verification.
                Its connections are pooled apart from every other address's.

        Raises:
            InvalidURLError: ``url`` or a header cannot be sent (raised before any I/O).
            ConnectError: Refused, unreachable, or the TLS handshake failed.
            DNSError: The host name did not resolve.
            TransportTimeoutError: A connect, write, read, pool or total limit passed.
            ConnectionLostError: The connection broke before the response was complete.
            ProtocolError: The answer was not valid HTTP/1.1.
        """
        state = self._state
        loop = asyncio.get_running_loop()
        if state is None or state.loop is not loop:
            state = self._state_for(loop)
        match = _SIMPLE_URL(url)
        if match is not None:
            prefix, target = match.groups()
        else:
            url, prefix, target = _split_url(url)
        origin = state.origins.get(prefix)
        if origin is None:
            origin = state.origin(prefix, url)

        lines = self._lines(headers, url)
        if _USER_AGENT not in lines[::3]:  # the name of each (name, value, CRLF)
            lines += (_USER_AGENT, self.user_agent, "\r\n")
        parts = ["POST ", target, " HTTP/1.1\r\n", origin.lines, *lines]
        parts.append(f"Content-Length: {len(body)}\r\n\r\n")
        try:
            head = "".join(parts).encode("latin-1")
        except UnicodeEncodeError as exc:
            msg = f"request head not encodable as Latin-1: {exc.reason}"
            raise InvalidURLError(msg, url=url) from exc
        if len(body) < _LARGE_BODY:
            data, rest = head + body, None
        else:
            data, rest = head, body

        if connect_to is None:
            pool = origin.pool
        else:
            pool = state.pinned(origin, checked_addresses(connect_to, url))
        conn = pool.take_idle() if pool.idle else None
        if conn is None:
            conn, begun = await pool.acquire(url)
        else:
            begun = loop.time()
        hard_deadline = begun + pool.total_timeout
        try:
            response = await conn.send(url, data, rest, hard_deadline)
        except ConnectionLostError:
            if not conn.reused or conn.got_bytes:
                pool.discard(conn)
                raise
            # The server closed a kept-alive connection just as we reused it, and nothing
            # of an answer arrived. A POST is not idempotent in general, so this is the only
            # retry the transport makes by itself: in this race the request almost always
            # never reached the application (and receivers deduplicate on ``webhook-id``
            # if it did). Once, on a new connection in the same slot.
            pool.discard(conn, keep_slot=True)
            conn = await pool.open(url)
            try:
                response = await conn.send(url, data, rest, hard_deadline)
            except BaseException:
                pool.discard(conn)
                raise
        except BaseException:
            # Timeouts, broken HTTP, cancellation by the caller: the connection is in an
            # unknown state, so it is closed, never returned to the pool.
            pool.discard(conn)
            raise
        if rest is not None and conn.transport is not None:
            # an early answer (say a 413) can leave part of a large body unsent
            conn.keep_alive = conn.keep_alive and not conn.transport.get_write_buffer_size()
        pool.release(conn)
        return response

    async def drive(
        self,
        body: bytes,
        headers: Mapping[str, str],
        jobs: Iterator[Job],
        done: Done,
        concurrency: int,
    ) -> None:
        """POST ``body`` for every job, at most ``concurrency`` at once (a send's fast lane).

        The shared ``headers`` are checked and encoded once; each job adds its own lines
        (checked by whoever made the job).
        A connection's protocol writes the next job's request itself when a response
        completes: no future, coroutine or task switch per request, only when a new
        connection must be opened. Each outcome goes to ``done`` as ``apost`` would have
        returned or raised it (the once-only retry of a reused connection included).
        Cancelling it closes the connections in flight; their jobs are not reported.
        """
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None or state.loop is not loop:
            state = self._state_for(loop)
        if len(body) >= _LARGE_BODY:  # written apart from the head: apost knows how
            await drive_each(self.apost, body, headers, jobs, done, concurrency)
            return
        shared = self._lines(headers, "")
        if _USER_AGENT not in shared[::3]:  # the name of each (name, value, CRLF)
            shared += (_USER_AGENT, self.user_agent, "\r\n")
        tail = ("".join(shared) + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
        await _Driver(self, state, tail, jobs, done, concurrency).run()

    def _lines(self, headers: Mapping[str, str], url: str) -> list[str]:
        """The head lines of caller headers (owned ones dropped), checked."""
        parts: list[str] = []
        names = self._names
        for name, value in headers.items():
            line = names.get(name)
            if line is None:
                line = self._header_line(name, url)
            if not line:
                continue
            if not value.isprintable() and bad_value_char(value):
                raise InvalidURLError(f"header {name!r} contains a control character", url=url)
            parts += (line, value, "\r\n")
        return parts

    async def aclose(self) -> None:
        """Close the connections of the running event loop (new ones open on next use)."""
        loop = asyncio.get_running_loop()
        state = self._states.pop(loop, None)
        if state is self._state:
            self._state = None
        if state is not None:
            await state.aclose()

    def _tls_context(self, host: str, port: int) -> ssl.SSLContext:
        """The context for an ``https`` origin (the default one is made on first use)."""
        if self.tls_for is not None:
            custom = self.tls_for(host, port)
            if custom is not None:
                return tls_context(custom)
        if self.ssl_context is not None:
            return self.ssl_context
        if self.tls is not None:
            return self.tls.context()
        if self._default_tls is None:
            self._default_tls = ssl.create_default_context()
        return self._default_tls

    # -- internals ----------------------------------------------------------------------------

    def _state_for(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        states = self._states
        state = states.get(loop)
        if state is None:
            for old in [old for old in states if old.is_closed()]:
                states.pop(old, None)
            state = states[loop] = _LoopState(self, loop)
        self._state = state
        return state

    def _header_line(self, name: str, url: str) -> str:
        """``"Name: "`` for a caller's header, or ``""`` for names the transport owns."""
        if not is_token(name):
            raise InvalidURLError(f"invalid header name {name!r}", url=url)
        lower = name.lower()
        if lower in OWNED_HEADERS:
            line = ""
        elif lower == "user-agent":
            line = _USER_AGENT
        else:
            line = f"{name}: "
        if len(self._names) < _MAX_CACHED_NAMES:
            self._names[name] = line
        return line
