"""Real loopback HTTP(S) servers for the test suite (no mocks).

Everything binds ``127.0.0.1`` on ephemeral ports and runs an asyncio loop in a
background thread, so the same synchronous API serves plain and async tests::

    from helpers.servers import FaultServer, SinkServer

    with FaultServer() as server:
        url = server.url("/status/500")
        ...
        assert server.requests_for("/status/500")[0].body == b"..."

As a pytest fixture::

    @pytest.fixture
    def fault_server() -> Iterator[FaultServer]:
        with FaultServer() as server:
            yield server

``FaultServer`` picks its behaviour from the request path (see ``FaultServer``);
``SinkServer`` answers every request with one status as fast as it can.
Stopping a server closes every client connection and cancels every handler at
once (hanging and slow answers included), then joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import json
import os
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import trustme

__all__ = ["FaultServer", "RecordedRequest", "SinkServer", "refused_url"]

HOST = "127.0.0.1"
_CHUNK = b"x" * 65536
_BACKLOG = 1024
_READ_LIMIT = 1 << 20


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server read it.

    ``headers`` maps lower-cased names to values (repeated headers joined with
    ", "); ``header_list`` keeps every (lower-cased name, value) pair in order.
    ``target`` is the raw request target (path and query); ``path`` drops the
    query.  ``chunked`` is true when the body came with
    ``Transfer-Encoding: chunked`` (``body`` is then the decoded body).
    ``connection_id`` numbers TCP connections from 1 per server; ``port`` is
    the listening port the request came in on.
    """

    method: str
    target: str
    path: str
    http_version: str
    headers: dict[str, str]
    header_list: tuple[tuple[str, str], ...]
    body: bytes
    chunked: bool
    connection_id: int
    port: int
    received_at: float

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class _BadRequestError(Exception):
    pass


def refused_url(path: str = "/") -> str:
    """A URL on a loopback port where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    return f"http://{HOST}:{port}{path}"


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _bodyless(status: int) -> bool:
    return status < 200 or status in (204, 304)


class FaultServer:
    """An HTTP/1.1 server on loopback whose request path selects its behaviour.

    Behaviours (any method; unknown paths answer ``default_status``):

    - ``/status/<code>``: ``<code>`` with a small JSON body and Content-Length.
    - ``/retry-after/<code>/<value>``: ``<code>`` with ``Retry-After: <value>``
      (sent verbatim, so invalid values can be tested too).
    - ``/retry-after-date/<code>/<seconds>``: ``<code>`` with an HTTP-date
      ``Retry-After`` that many seconds in the future.
    - ``/hang``: reads the request, never answers; the connection stays open
      until the client closes it or the server stops.
    - ``/slow-headers/<seconds>[/<code>]``: sends the status line, waits, then
      the rest of the response.
    - ``/slow-body/<seconds>[/<code>]``: sends the headers, waits, then the body.
    - ``/reset``: sends part of a response, then resets the connection (RST).
    - ``/close``: closes the connection without any response.
    - ``/redirect[/<code>]``: ``<code>`` (default 301) with
      ``Location: <this server>/status/200``.
    - ``/big/<bytes>[/<code>]``: a body of that many bytes with Content-Length.
    - ``/chunked/<code>``: a JSON body with ``Transfer-Encoding: chunked``.
    - ``/flaky/<n>/<code>``: 503 for the first ``n`` requests to this target
      (path and query: add ``?id=...`` for independent counters), then ``<code>``.
    - ``/keepalive-close``: 202 with ``Connection: close``, then closes.
    - ``/delay/<seconds>/<code>``: waits, then answers ``<code>``.
    - ``/drip/<seconds>[/<code>]``: headers with a large Content-Length, then one body
      byte every ``<seconds>``, forever (a peer that never lets a read time out).
    - ``/down-for-rounds``: 503 to anything but a ``CLIENT_REMOVED`` notification, which it
      accepts (200): a client that cannot take part, but can be told it was removed.
    - ``/script/<key>``: the next of ``scripts[key]`` (the last one repeats): raw bytes
      written as they are (then the connection closes), ``"close"`` (no answer) or
      ``"reset"`` (RST).

    Every other answer keeps the connection alive (unless the client sent
    ``Connection: close`` or spoke HTTP/1.0).

    Args:
        tls: serve HTTPS with a certificate for 127.0.0.1/localhost/::1 issued
            by a throw-away ``trustme`` CA (``ca``, ``ca_pem_path``,
            ``client_ssl_context()``).
        ports: how many listening ports to serve from the one loop
            (``url(path, index=i)``, ``urls(path)``).
        record: keep every request in ``requests`` (counts are always kept).
        default_status: the status for paths that name no behaviour.
        ca: reuse this CA instead of making one.
    """

    _sink_status: int | None = None

    def __init__(
        self,
        *,
        tls: bool = False,
        ports: int = 1,
        record: bool = True,
        default_status: int = 404,
        ca: trustme.CA | None = None,
    ) -> None:
        if ports < 1:
            raise ValueError("ports must be >= 1")
        self.tls = tls
        self.record = record
        self.default_status = default_status
        self._port_count = ports
        self._ca = ca
        self._server_ctx: ssl.SSLContext | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._ca_pem_path: str | None = None

        self._cond = threading.Condition()
        self._watchers: set[Callable[[], None]] = set()
        self._requests: list[RecordedRequest] = []
        self._request_count = 0
        self._port_counts: dict[int, int] = {}
        self._connections_opened = 0
        self._open_connections = 0
        self._handshake_failures = 0
        self._errors: list[BaseException] = []

        self._listeners: list[socket.socket] = []
        self._ports: list[int] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None

        self.scripts: dict[str, list[bytes | str]] = {}
        """Answers of ``/script/<key>``, set by the test before it sends."""
        self._script_pos: dict[str, int] = {}

        # Only touched from the server loop.
        self._flaky: dict[str, int] = {}
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.Transport] = set()
        self._pending_socks: set[socket.socket] = set()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Bind the ports and start serving in a background thread."""
        if self._thread is not None or self._ports:
            raise RuntimeError("a server can be started only once")
        try:
            if self.tls:
                self._setup_tls()
            for _ in range(self._port_count):
                sock = socket.create_server((HOST, 0), backlog=_BACKLOG)
                self._listeners.append(sock)
                sock.setblocking(False)
                self._ports.append(sock.getsockname()[1])
            self._thread = threading.Thread(
                target=self._run, name=f"{type(self).__name__}-{self._ports[0]}", daemon=True
            )
            self._thread.start()
            if not self._started.wait(10):
                raise RuntimeError("server thread did not start")
            if self._startup_error is not None:
                raise RuntimeError("server failed to start") from self._startup_error
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection, cancel every handler and join the thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is not None:
            if loop is not None and stop_event is not None and thread.is_alive():
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(stop_event.set)
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError("server thread did not stop")
            self._thread = None
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def _setup_tls(self) -> None:
        if self._ca is None:
            self._ca = trustme.CA()
        cert = self._ca.issue_cert(HOST, "localhost", "::1")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        ctx.set_alpn_protocols(["http/1.1"])
        self._server_ctx = ctx
        self._tmpdir = tempfile.TemporaryDirectory(prefix="flnotify-ca-")
        path = os.path.join(self._tmpdir.name, "ca.pem")
        self._ca.cert_pem.write_to_path(path)
        self._ca_pem_path = path

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_exception)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException as exc:
            self._startup_error = exc
            self._started.set()
        finally:
            loop.close()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError):
            return  # a client went away; that is what these servers are for
        with self._cond:
            self._errors.append(
                exc if isinstance(exc, BaseException) else RuntimeError(context.get("message"))
            )

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        accepters = [
            asyncio.ensure_future(self._accept_loop(sock, port))
            for sock, port in zip(self._listeners, self._ports, strict=True)
        ]
        self._started.set()
        try:
            await self._stop_event.wait()
        finally:
            for task in accepters:
                task.cancel()
            await asyncio.gather(*accepters, return_exceptions=True)
            for transport in list(self._transports):
                transport.abort()
            tasks = list(self._conn_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sock in list(self._pending_socks):
                sock.close()
            self._pending_socks.clear()
            # Let the transports' connection_lost callbacks close their sockets.
            for _ in range(3):
                await asyncio.sleep(0)

    async def _accept_loop(self, listener: socket.socket, port: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError:
                continue
            with self._cond:
                self._connections_opened += 1
                self._open_connections += 1
                conn_id = self._connections_opened
                self._changed()
            self._pending_socks.add(conn)
            task = loop.create_task(self._handle_connection(conn, port, conn_id))
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)

    # ------------------------------------------------------------------ public API

    @property
    def host(self) -> str:
        return HOST

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    @property
    def port(self) -> int:
        return self._ports[0]

    def base_url(self, index: int = 0, *, host: str = HOST) -> str:
        """``scheme://host:port`` of the ``index``-th port, without a trailing slash."""
        return f"{self.scheme}://{host}:{self._ports[index]}"

    def url(self, path: str = "/", *, index: int = 0, host: str = HOST) -> str:
        """The URL of ``path`` (may carry a query) on the ``index``-th port."""
        if not path.startswith("/"):
            path = "/" + path
        return self.base_url(index, host=host) + path

    def urls(self, path: str = "/") -> list[str]:
        """The URL of ``path`` on each port."""
        return [self.url(path, index=i) for i in range(len(self._ports))]

    @staticmethod
    def refused_url(path: str = "/") -> str:
        """A URL on a loopback port where nothing listens."""
        return refused_url(path)

    @property
    def ca(self) -> trustme.CA:
        if self._ca is None:
            raise RuntimeError("not a TLS server (pass tls=True)")
        return self._ca

    @property
    def ca_pem_path(self) -> str:
        """Path of the CA certificate (PEM) while the server runs."""
        if self._ca_pem_path is None:
            raise RuntimeError("not a started TLS server")
        return self._ca_pem_path

    def client_ssl_context(self) -> ssl.SSLContext:
        """A default client context that trusts this server's CA."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every recorded request, in arrival order."""
        with self._cond:
            return list(self._requests)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        """Recorded requests whose path (or full target, if it has a query) is ``path``."""
        with self._cond:
            return [r for r in self._requests if path in (r.path, r.target)]

    @property
    def request_count(self) -> int:
        """Requests fully read so far (counted even with ``record=False``)."""
        with self._cond:
            return self._request_count

    @property
    def port_request_counts(self) -> dict[int, int]:
        """Requests read so far per listening port."""
        with self._cond:
            return dict(self._port_counts)

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted so far (TLS handshake failures included)."""
        with self._cond:
            return self._connections_opened

    @property
    def open_connections(self) -> int:
        """TCP connections currently open on the server side."""
        with self._cond:
            return self._open_connections

    @property
    def handshake_failures(self) -> int:
        """TLS handshakes that failed (e.g. a client that rejected the certificate)."""
        with self._cond:
            return self._handshake_failures

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected server-side errors (client disconnects are not errors)."""
        with self._cond:
            return list(self._errors)

    def clear(self) -> None:
        """Forget recorded requests and request counts (not connection counts)."""
        with self._cond:
            self._requests.clear()
            self._request_count = 0
            self._port_counts.clear()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` holds (re-checked on every server event)."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"condition not met within {timeout} s")

    def wait_for_requests(
        self, n: int, *, path: str | None = None, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Block until ``n`` requests (to ``path``, if given) were read; return them."""
        self.wait_until(lambda: self._count_locked(path) >= n, timeout)
        return self.requests if path is None else self.requests_for(path)

    async def wait_until_async(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """``wait_until`` for async tests: waits without blocking the running loop."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the waiting loop has closed
                loop.call_soon_threadsafe(event.set)

        deadline = loop.time() + timeout
        with self._cond:
            self._watchers.add(wake)
        try:
            while True:
                event.clear()
                with self._cond:
                    if predicate():
                        return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout} s")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            with self._cond:
                self._watchers.discard(wake)

    async def wait_for_requests_async(
        self, n: int, *, path: str | None = None, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """``wait_for_requests`` for async tests."""
        await self.wait_until_async(lambda: self._count_locked(path) >= n, timeout)
        return self.requests if path is None else self.requests_for(path)

    def _count_locked(self, path: str | None) -> int:
        if path is None:
            return self._request_count
        return sum(1 for r in self._requests if path in (r.path, r.target))

    def _changed(self) -> None:
        # Caller holds self._cond.
        self._cond.notify_all()
        for wake in list(self._watchers):
            wake()

    # ------------------------------------------------------------------ connections

    async def _handle_connection(self, conn: socket.socket, port: int, conn_id: int) -> None:
        loop = asyncio.get_running_loop()
        transport: asyncio.Transport | None = None
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = asyncio.StreamReader(limit=_READ_LIMIT)
            protocol = asyncio.StreamReaderProtocol(reader)
            # From here on the transport owns the socket.
            self._pending_socks.discard(conn)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=self._server_ctx
                )
            except (OSError, EOFError):
                if self._server_ctx is not None:
                    with self._cond:
                        self._handshake_failures += 1
                        self._changed()
                return
            self._transports.add(transport)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            try:
                await self._serve(reader, writer, port, conn_id)
            except (OSError, EOFError, asyncio.IncompleteReadError):
                pass  # the client went away
            except Exception as exc:
                with self._cond:
                    self._errors.append(exc)
            finally:
                transport.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        finally:
            if conn in self._pending_socks:
                self._pending_socks.discard(conn)
                conn.close()
            if transport is not None:
                self._transports.discard(transport)
            with self._cond:
                self._open_connections -= 1
                self._changed()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        port: int,
        conn_id: int,
    ) -> None:
        while True:
            try:
                request = await self._read_request(reader, writer, port, conn_id)
            except _BadRequestError:
                await self._send_simple(writer, 400, close=True)
                return
            if request is None:
                return
            self._record(request)
            client_close = self._client_wants_close(request)
            keep = await self._respond(request, reader, writer, client_close)
            if not keep or client_close:
                return

    async def _read_request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        port: int,
        conn_id: int,
    ) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequestError from exc
            return None  # clean end of the connection between requests
        except asyncio.LimitOverrunError as exc:
            raise _BadRequestError from exc
        lines = head.lstrip(b"\r\n")[:-4].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise _BadRequestError from exc
        header_list: list[tuple[str, str]] = []
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequestError
            key, value = name.strip().lower(), value.strip()
            header_list.append((key, value))
            headers[key] = f"{headers[key]}, {value}" if key in headers else value

        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = 0
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError as exc:
                raise _BadRequestError from exc
        if (chunked or length) and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if chunked:
            body = await self._read_chunked(reader)
        elif length:
            body = await reader.readexactly(length)
        else:
            body = b""
        return RecordedRequest(
            method=method,
            target=target,
            path=target.split("?", 1)[0],
            http_version=version,
            headers=headers,
            header_list=tuple(header_list),
            body=body,
            chunked=chunked,
            connection_id=conn_id,
            port=port,
            received_at=time.monotonic(),
        )

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _BadRequestError from exc
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise _BadRequestError

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._request_count += 1
            self._port_counts[request.port] = self._port_counts.get(request.port, 0) + 1
            if self.record:
                self._requests.append(request)
            self._changed()

    @staticmethod
    def _client_wants_close(request: RecordedRequest) -> bool:
        tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
        if request.http_version == "HTTP/1.0":
            return "keep-alive" not in tokens
        return "close" in tokens

    # ------------------------------------------------------------------ responses

    @staticmethod
    def _head(
        status: int,
        headers: list[tuple[str, str]],
        *,
        close: bool,
        status_line: bool = True,
    ) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}"] if status_line else []
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append("Server: flnotify-tests")
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    @staticmethod
    def _json_body(status: int, **extra: Any) -> bytes:
        return json.dumps({"status": status, **extra}).encode()

    async def _send_simple(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        *,
        close: bool,
        extra_headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> None:
        headers = list(extra_headers or [])
        if _bodyless(status):
            payload = b""
        else:
            payload = self._json_body(status) if body is None else body
            headers += [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
            ]
        writer.write(self._head(status, headers, close=close) + payload)
        await writer.drain()

    async def _respond(
        self,
        request: RecordedRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        close: bool,
    ) -> bool:
        """Answer one request; return whether the connection may be reused."""
        if self._sink_status is not None:
            await self._send_simple(writer, self._sink_status, close=close)
            return True
        parts = [p for p in request.path.split("/") if p]
        name, args = (parts[0], parts[1:]) if parts else ("", [])
        try:
            return await self._behave(name, args, request, reader, writer, close)
        except (ValueError, IndexError):
            await self._send_simple(
                writer,
                400,
                close=close,
                body=self._json_body(400, error=f"bad behaviour path {request.path!r}"),
            )
            return True

    async def _behave(
        self,
        name: str,
        args: list[str],
        request: RecordedRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        close: bool,
    ) -> bool:
        if name == "status":
            await self._send_simple(writer, int(args[0]), close=close)
        elif name == "retry-after":
            await self._send_simple(
                writer, int(args[0]), close=close, extra_headers=[("Retry-After", args[1])]
            )
        elif name == "retry-after-date":
            when = email.utils.formatdate(time.time() + float(args[1]), usegmt=True)
            await self._send_simple(
                writer, int(args[0]), close=close, extra_headers=[("Retry-After", when)]
            )
        elif name == "hang":
            while await reader.read(65536):
                pass  # until the client closes or the server stops
            return False
        elif name == "slow-headers":
            delay, status = float(args[0]), int(args[1]) if len(args) > 1 else 200
            writer.write(f"HTTP/1.1 {status} {_reason(status)}\r\n".encode("latin-1"))
            await writer.drain()
            await asyncio.sleep(delay)
            payload = self._json_body(status)
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
            writer.write(self._head(status, headers, close=close, status_line=False) + payload)
            await writer.drain()
        elif name == "slow-body":
            delay, status = float(args[0]), int(args[1]) if len(args) > 1 else 200
            payload = self._json_body(status)
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
            writer.write(self._head(status, headers, close=close))
            await writer.drain()
            await asyncio.sleep(delay)
            writer.write(payload)
            await writer.drain()
        elif name == "reset":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            await writer.drain()
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        elif name == "close":
            return False
        elif name == "redirect":
            status = int(args[0]) if args else 301
            location = f"{self.scheme}://{HOST}:{request.port}/status/200"
            await self._send_simple(
                writer, status, close=close, extra_headers=[("Location", location)]
            )
        elif name == "big":
            await self._send_big(
                writer, int(args[0]), int(args[1]) if len(args) > 1 else 200, close
            )
        elif name == "chunked":
            status = int(args[0])
            writer.write(
                self._head(
                    status,
                    [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
                    close=close,
                )
            )
            for piece in (b'{"status": ', str(status).encode(), b', "chunked": true}'):
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        elif name == "flaky":
            failures, status = int(args[0]), int(args[1])
            seen = self._flaky.get(request.target, 0)
            self._flaky[request.target] = seen + 1
            await self._send_simple(writer, 503 if seen < failures else status, close=close)
        elif name == "keepalive-close":
            await self._send_simple(writer, 202, close=True)
            return False
        elif name == "delay":
            await asyncio.sleep(float(args[0]))
            await self._send_simple(writer, int(args[1]), close=close)
        elif name == "drip":
            interval, status = float(args[0]), int(args[1]) if len(args) > 1 else 200
            headers = [("Content-Type", "text/plain"), ("Content-Length", "100000000")]
            writer.write(self._head(status, headers, close=close))
            while True:
                await writer.drain()
                await asyncio.sleep(interval)
                writer.write(b".")
        elif name == "script":
            return await self._scripted(args[0], writer)
        elif name == "down-for-rounds":
            status = 200 if b'"CLIENT_REMOVED"' in request.body else 503
            await self._send_simple(writer, status, close=close)
        else:
            await self._send_simple(
                writer,
                self.default_status,
                close=close,
                body=self._json_body(self.default_status, error=f"no behaviour {request.path!r}"),
            )
        return True

    async def _scripted(self, key: str, writer: asyncio.StreamWriter) -> bool:
        with self._cond:
            answers = self.scripts[key]
            position = self._script_pos.get(key, 0)
            self._script_pos[key] = position + 1
        answer = answers[min(position, len(answers) - 1)]
        if answer == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif isinstance(answer, bytes):
            writer.write(answer)
            await writer.drain()
        return False

    async def _send_big(
        self, writer: asyncio.StreamWriter, size: int, status: int, close: bool
    ) -> None:
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        writer.write(self._head(status, headers, close=close))
        chunk = memoryview(_CHUNK)
        remaining = size
        while remaining > 0:
            n = min(remaining, len(chunk))
            writer.write(chunk[:n])
            remaining -= n
            await writer.drain()


class SinkServer(FaultServer):
    """Answers every request with ``status`` as fast as it can (keep-alive).

    Counts requests (``request_count``, ``port_request_counts``) and records
    them in ``requests`` only with ``record=True``.  ``ports=N`` serves N
    origins from one loop; see ``FaultServer`` for the other arguments.
    """

    def __init__(
        self,
        status: int = 202,
        *,
        tls: bool = False,
        ports: int = 1,
        record: bool = False,
        ca: trustme.CA | None = None,
    ) -> None:
        super().__init__(tls=tls, ports=ports, record=record, ca=ca)
        self._sink_status = status

    def __enter__(self) -> SinkServer:
        self.start()
        return self


class AddressServer(FaultServer):
    """A ``FaultServer`` on another loopback address, port or certificate.

    For what ``127.0.0.1`` alone cannot show: two servers on the same port of two loopback
    addresses (Linux routes all of 127.0.0.0/8 to loopback), a certificate for a name
    only, a server that requires a client certificate.

    Args:
        address: The loopback address to bind (``127.x.y.z`` only).
        port: The port to bind; 0 for an ephemeral one.
        names: The names (and addresses) the TLS certificate is issued for.
        client_ca: Require a client certificate signed by this CA (mutual TLS).
        tls13: With ``client_ca``, speak TLS 1.3 only (else 1.2 at most): a refused client
            certificate is then refused after the client's side of the handshake, and
            this asyncio server closes without a TLS alert (as uvicorn does).
        **kwargs: As for ``FaultServer``.
    """

    def __init__(
        self,
        address: str = HOST,
        *,
        port: int = 0,
        names: tuple[str, ...] = (HOST, "localhost", "::1"),
        client_ca: trustme.CA | None = None,
        tls13: bool = False,
        **kwargs: Any,
    ) -> None:
        if not address.startswith("127."):
            raise ValueError("test servers bind loopback addresses only")
        super().__init__(**kwargs)
        self.address = address
        self._bind_port = port
        self._names = names
        self._client_ca = client_ca
        self._tls13 = tls13

    def start(self) -> None:
        """Bind ``address:port`` and start serving in a background thread."""
        if self._thread is not None or self._ports:
            raise RuntimeError("a server can be started only once")
        try:
            if self.tls:
                self._setup_tls()
            sock = socket.create_server((self.address, self._bind_port), backlog=_BACKLOG)
            self._listeners.append(sock)
            sock.setblocking(False)
            self._ports.append(sock.getsockname()[1])
            self._thread = threading.Thread(
                target=self._run, name=f"AddressServer-{self.address}", daemon=True
            )
            self._thread.start()
            if not self._started.wait(10):
                raise RuntimeError("server thread did not start")
            if self._startup_error is not None:
                raise RuntimeError("server failed to start") from self._startup_error
        except BaseException:
            self.stop()
            raise

    def _setup_tls(self) -> None:
        if self._ca is None:
            self._ca = trustme.CA()
        cert = self._ca.issue_cert(*self._names)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        ctx.set_alpn_protocols(["http/1.1"])
        if self._client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self._client_ca.configure_trust(ctx)
            # TLS 1.2: a refused client certificate fails the handshake itself; under 1.3
            # after it, and asyncio closes the connection without flushing the alert
            if self._tls13:
                ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            else:
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self._server_ctx = ctx
        self._tmpdir = tempfile.TemporaryDirectory(prefix="flnotify-ca-")
        path = os.path.join(self._tmpdir.name, "ca.pem")
        self._ca.cert_pem.write_to_path(path)
        self._ca_pem_path = path

    def base_url(self, index: int = 0, *, host: str | None = None) -> str:
        """``scheme://host:port``, the host defaulting to the bound address."""
        return super().base_url(index, host=self.address if host is None else host)

    def url(self, path: str = "/", *, index: int = 0, host: str | None = None) -> str:
        """The URL of ``path``, the host defaulting to the bound address."""
        return super().url(path, index=index, host=self.address if host is None else host)

    def __enter__(self) -> AddressServer:
        self.start()
        return self


class ClientCertRefusingServer:
    """A TLS server that requires a client certificate and refuses every one it gets.

    Blocking sockets on purpose: OpenSSL writes the refusal alert before the handshake call
    returns, and the server then half-closes and drains the connection, so the client
    reads the alert (not a reset). Under TLS 1.3 (the default) that alert arrives after
    the client's handshake completed, with the first read of the answer; under TLS 1.2
    (``version``) during the handshake.
    """

    def __init__(self, ca: trustme.CA, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> None:
        self.ca = ca
        self.refused = 0
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(HOST, "localhost").configure_cert(self._ctx)
        self._ctx.minimum_version = self._ctx.maximum_version = version
        self._ctx.verify_mode = ssl.CERT_REQUIRED
        trustme.CA().configure_trust(self._ctx)  # no client certificate can pass
        self._sock = socket.create_server((HOST, 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "/") -> str:
        return f"https://{HOST}:{self.port}{path}"

    def __enter__(self) -> ClientCertRefusingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            # the TLS socket takes the connection over (and closes it when done)
            with self._ctx.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            ) as tls:
                try:
                    tls.do_handshake()
                except (ssl.SSLError, OSError):
                    self.refused += 1
                with contextlib.suppress(OSError):
                    tls.shutdown(socket.SHUT_WR)  # the alert is out; no more TLS from here
                    while tls.recv(65536):  # until the client closes: no reset
                        pass


@contextlib.contextmanager
def wsgi_apps(apps: Mapping[str, Any]) -> Iterator[str]:
    """Serve WSGI apps by path (``"/name/"``) on 127.0.0.1 with flnotify's server.

    Yields the base URL (``http://127.0.0.1:PORT``); stops the server on the way out.
    """
    from flnotify.receiving import make_wsgi_server

    def dispatch(environ: Any, start_response: Any) -> Any:
        return apps[environ["PATH_INFO"]](environ, start_response)

    server = make_wsgi_server("127.0.0.1", 0, dispatch)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
