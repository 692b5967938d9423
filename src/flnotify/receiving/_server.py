"""A small threaded WSGI server with bounds: for ``flnotify listen``, demos and try-outs.

[`make_wsgi_server`][flnotify.receiving.make_wsgi_server] builds on :mod:`wsgiref` and
bounds what a peer can hold:

* **a read timeout per connection**: each read waits at most ``read_timeout`` seconds
  for the next bytes, and the whole request (line, headers, body) must arrive within
  ``request_timeout``, so neither a silent peer nor one dripping a byte at a time keeps
  a thread; a request that runs out of time is answered 408 and closed;
* **a cap on concurrent connections**: at most ``max_connections`` are served at once
  (one thread each); above it the accept loop waits up to ``queue_timeout`` for a free
  slot (new connections wait in the kernel's backlog meanwhile), then answers 503 with
  ``Retry-After`` and closes;
* the stdlib parser's own limits (100 header lines, 64 KiB per line) answer with the
  router's JSON error body rather than an HTML page.

For production prefer a real server (gunicorn, uvicorn); these bounds make this one safe
to leave listening on a network.
"""

from __future__ import annotations

import io
import json
import socket
import socketserver
import threading
import time
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .._exceptions import ConfigurationError
from ._responses import status_line

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["BoundedWSGIServer", "make_wsgi_server"]

DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 15.0
DEFAULT_MAX_CONNECTIONS = 128
DEFAULT_QUEUE_TIMEOUT = 1.0


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
        self._send_raw(_raw_error(code, "bad_request", detail))

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the access log line."""


class BoundedWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per connection up to a cap, reads under a deadline.

    Built by [`make_wsgi_server`][flnotify.receiving.make_wsgi_server], which documents
    the bounds; no reverse DNS lookup on bind.
    """

    daemon_threads = True
    request_queue_size = 1024  # socketserver's 5 drops concurrent SYNs: 1 s retransmits

    def __init__(
        self,
        address: tuple[str, int],
        *,
        read_timeout: float,
        request_timeout: float,
        max_connections: int,
        queue_timeout: float,
    ) -> None:
        self.read_timeout = read_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.queue_timeout = queue_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._count_lock = threading.Lock()
        self._active = 0
        self.refused = 0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def active_connections(self) -> int:
        """How many connections are being served right now (one thread each)."""
        with self._count_lock:
            return self._active

    def server_bind(self) -> None:
        """Bind without ``socket.getfqdn`` (HTTPServer's default may query DNS)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve in a thread if a slot frees within ``queue_timeout``; else answer 503."""
        if not self._slots.acquire(timeout=self.queue_timeout):
            self._refuse(request)
            return
        with self._count_lock:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection, then free its slot."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._count_lock:
            self._active -= 1
        self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        with self._count_lock:
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
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
) -> BoundedWSGIServer:
    """A threaded, quiet, bounded WSGI server bound to ``host:port`` (0: any free port).

    Args:
        host: The address to listen on (IPv6 addresses contain ``:``).
        port: The port; 0 picks a free one (see ``server.server_port``).
        app: The WSGI application, e.g. [`router.wsgi_app()`][flnotify.NotificationRouter.wsgi_app].
        read_timeout: Seconds one read may wait for the next bytes (default 5).
        request_timeout: Seconds the whole request may take to arrive (default 15).
        max_connections: Connections served at once, one thread each (default 128).
        queue_timeout: Seconds a connection above the cap waits for a slot before it is
            answered 503 (default 1); the accept loop waits with it.

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
    if type(max_connections) is not int or max_connections < 1:
        msg = f"max_connections must be an integer >= 1, not {max_connections!r}"
        raise ConfigurationError(msg)
    server = BoundedWSGIServer(
        (host, port),
        read_timeout=float(read_timeout),
        request_timeout=float(request_timeout),
        max_connections=max_connections,
        queue_timeout=float(queue_timeout),
    )
    server.set_app(app)
    return server
