"""A small threaded WSGI server with bounds: for ``flnotify listen``, demos and try-outs.

[`make_wsgi_server`][flnotify.receiving.make_wsgi_server] builds on `wsgiref` and
bounds what a peer can hold:

* **a read timeout per connection**: each read waits at most ``read_timeout`` seconds
  for the next bytes, and the whole request (line, headers, body) must arrive within
  ``request_timeout``, so neither a silent peer nor one dripping a byte at a time keeps
  a thread; a request that runs out of time is answered 408 and closed;
* **a cap on concurrent connections**: a pool of at most ``max_connections`` threads
  serves them; accepted connections wait in a queue of at most ``max_queued`` (no thread
  each), and one that finds the queue full, or waited longer than ``queue_timeout``, is
  answered 503 with ``Retry-After`` (retryable for the sender) and closed. The accept
  loop never waits, so a flood of stalled connections costs at most ``max_connections``
  threads and ``max_connections + max_queued`` sockets, for at most ``request_timeout``;
* the stdlib parser's own limits (100 header lines, 64 KiB per line) answer with the
  router's JSON error body rather than an HTML page.

For production prefer a real server (gunicorn, uvicorn); these bounds make this one safe
to leave listening on a network.
"""

from __future__ import annotations

import io
import json
import queue
import socket
import socketserver
import threading
import time
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .._exceptions import ConfigurationError
from .._web.responses import status_line

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["BoundedWSGIServer", "make_wsgi_server"]

DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 15.0
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_QUEUED = 256
DEFAULT_QUEUE_TIMEOUT = 2.0


_ERROR_CODES = {
    408: "request_timeout",
    414: "uri_too_long",
    431: "headers_too_large",
    501: "not_implemented",
    505: "http_version_not_supported",
}


class _DeadlineReader(io.RawIOBase):
    """Socket reads bounded per read (``read_timeout``) and in total (the deadline)."""

    def __init__(self, sock: socket.socket, read_timeout: float, deadline: float) -> None:
        self._sock = sock
        self._read_timeout = read_timeout
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            msg = "the request did not arrive within its deadline"
            raise TimeoutError(msg)
        self._sock.settimeout(min(self._read_timeout, remaining))
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._read_timeout)  # writes: the plain read timeout


def _raw_error(status: int, code: str, detail: str, *extra: tuple[str, str]) -> bytes:
    """A whole HTTP/1.0 error response with the router's JSON body, closing the connection."""
    body = json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode()
    head = [
        f"HTTP/1.0 {status_line(status)}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in extra),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _Handler(WSGIRequestHandler):
    """wsgiref's handler: quiet, reading against a deadline, answering errors as JSON."""

    server: BoundedWSGIServer

    def setup(self) -> None:
        """Make ``rfile`` read with the server's read timeout and request deadline."""
        super().setup()
        self.connection.settimeout(self.server.read_timeout)
        self.rfile.close()
        deadline = time.monotonic() + self.server.request_timeout
        raw = _DeadlineReader(self.connection, self.server.read_timeout, deadline)
        self.rfile = io.BufferedReader(raw)

    def handle(self) -> None:
        """Serve one request; a peer out of time gets 408 (when it still listens)."""
        try:
            super().handle()
        except TimeoutError:
            self._send_raw(_raw_error(408, "request_timeout", "the request did not arrive in time"))
        except OSError:  # the peer reset or went away: nothing to answer
            pass

    def _send_raw(self, data: bytes) -> None:
        try:
            self.connection.settimeout(1.0)
            self.connection.sendall(data)
        except OSError:
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib parser's refusals (too many headers, long lines) as JSON errors."""
        self.close_connection = True
        detail = message or status_line(code)
        self._send_raw(_raw_error(code, _ERROR_CODES.get(code, "bad_request"), detail))

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the access log line."""


class BoundedWSGIServer(WSGIServer):
    """wsgiref's server with a bounded pool of threads and a bounded queue of connections.

    Built by [`make_wsgi_server`][flnotify.receiving.make_wsgi_server], which documents
    the bounds. The accept loop never blocks on a busy pool: it queues the connection or
    refuses it at once. Threads are started as needed, up to ``max_connections``, and
    stay for the server's life. No reverse DNS lookup on bind.
    """

    request_queue_size = 1024  # socketserver's 5 drops concurrent SYNs: 1 s retransmits

    def __init__(
        self,
        address: tuple[str, int],
        *,
        read_timeout: float,
        request_timeout: float,
        max_connections: int,
        max_queued: int,
        queue_timeout: float,
    ) -> None:
        self.read_timeout = read_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_queued = max_queued
        self.queue_timeout = queue_timeout
        self.refused = 0
        self._queue: queue.SimpleQueue[tuple[socket.socket, Any, float] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._queued = 0
        self._active = 0
        self._idle = 0
        self._threads: list[threading.Thread] = []
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def active_connections(self) -> int:
        """How many connections are being served right now (one pool thread each)."""
        with self._lock:
            return self._active

    @property
    def threads(self) -> int:
        """How many pool threads exist (at most ``max_connections``)."""
        with self._lock:
            return len(self._threads)

    def server_bind(self) -> None:
        """Bind without ``socket.getfqdn`` (HTTPServer's default may query DNS)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Queue the connection for the pool, or answer 503 at once when the queue is full."""
        with self._lock:
            # held: served now, or waiting for a thread (of which max_queued beyond the pool)
            if self._active + self._queued >= self.max_connections + self.max_queued:
                full = True
            else:
                full = False
                self._queued += 1
                # one idle thread per waiting connection, up to the cap
                if self._queued > self._idle and len(self._threads) < self.max_connections:
                    thread = threading.Thread(target=self._work, name="flnotify-wsgi", daemon=True)
                    self._threads.append(thread)
                    self._idle += 1
                    thread.start()
        if full:
            self._refuse(request)
            return
        self._queue.put((request, client_address, time.monotonic()))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address, queued_at = item
            with self._lock:
                self._queued -= 1
                self._idle -= 1
                self._active += 1
            try:
                if time.monotonic() - queued_at > self.queue_timeout:
                    self._refuse(request)
                    continue
                try:
                    self.finish_request(request, client_address)
                except Exception:
                    self.handle_error(request, client_address)
                finally:
                    self.shutdown_request(request)
            finally:
                with self._lock:
                    self._active -= 1
                    self._idle += 1

    def _refuse(self, request: socket.socket) -> None:
        with self._lock:
            self.refused += 1
        try:
            request.setblocking(False)  # a fresh socket's send buffer takes it at once
            request.send(
                _raw_error(
                    503, "too_many_connections", "the receiver is busy", ("retry-after", "1")
                )
            )
        except OSError:
            pass
        self.shutdown_request(request)

    def server_close(self) -> None:
        """Close the listening socket and let the pool threads end."""
        super().server_close()
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)

    def drain(self, timeout: float) -> bool:
        """After ``server_close``: wait up to ``timeout`` s for the requests being served.

        Call it before closing what the app uses (a store), so that no request still
        running finds it closed. Whether every pool thread ended in time.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request is not worth a traceback."""


def make_wsgi_server(
    host: str,
    port: int,
    app: WSGIApplication,
    *,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_queued: int = DEFAULT_MAX_QUEUED,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
) -> BoundedWSGIServer:
    """A threaded, quiet, bounded WSGI server bound to ``host:port`` (0: any free port).

    Args:
        host: The address to listen on (IPv6 addresses contain ``:``).
        port: The port; 0 picks a free one (see ``server.server_port``).
        app: The WSGI application, e.g.
            [`router.wsgi_app()`][flnotify.receiving.NotificationRouter.wsgi_app].
        read_timeout: Seconds one read may wait for the next bytes (default 5).
        request_timeout: Seconds the whole request may take to arrive (default 15).
        max_connections: Connections served at once, one pool thread each (default 64).
        max_queued: Accepted connections waiting for a thread (default 256); more are
            answered 503 at once.
        queue_timeout: Seconds a connection may wait in the queue; one that waited
            longer is answered 503 when its turn comes (default 2).

    Raises:
        ConfigurationError: A bound is not positive.
        OSError: The address cannot be bound.
    """
    for name, value in (
        ("read_timeout", read_timeout),
        ("request_timeout", request_timeout),
        ("queue_timeout", queue_timeout),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            msg = f"{name} must be a number of seconds > 0, not {value!r}"
            raise ConfigurationError(msg)
    for name, count in (("max_connections", max_connections), ("max_queued", max_queued)):
        if type(count) is not int or count < 1:
            msg = f"{name} must be an integer >= 1, not {count!r}"
            raise ConfigurationError(msg)
    server = BoundedWSGIServer(
        (host, port),
        read_timeout=float(read_timeout),
        request_timeout=float(request_timeout),
        max_connections=max_connections,
        max_queued=max_queued,
        queue_timeout=float(queue_timeout),
    )
    server.set_app(app)
    return server
