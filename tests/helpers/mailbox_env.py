"""A mailbox server on loopback for tests, and a bare client of its protocol."""

from __future__ import annotations

import io
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from flnotify import Signer
from flnotify.mailbox._wire import Ack, WireMessage, ack_document, fetch_document, parse_messages
from flnotify.receiving import make_wsgi_server


class Clock:
    """A wall clock that moves only when told (the store's, the app's)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def asgi_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1; yields its base URL.

    The socket listens before the server starts, so requests made at once just queue.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/mailbox"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def wsgi_server(app: Any, **options: Any) -> Iterator[str]:
    """Serve a WSGI app with flnotify's bounded server on 127.0.0.1; yields its base URL.

    ``options`` go to `make_wsgi_server` (``request_timeout`` is 60 s unless given).
    """
    options.setdefault("request_timeout", 60)
    server = make_wsgi_server("127.0.0.1", 0, app, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/mailbox"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def signed(
    secret: str, body: bytes, *, nonce: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    headers = Signer(secret).headers(
        nonce or "req_" + secrets.token_hex(16),
        int(time.time()) if timestamp is None else timestamp,
        body,
    )
    headers["content-type"] = "application/json"
    return headers


class BareClient:
    """A polling client made of the wire format alone (no socket of its own listens)."""

    def __init__(
        self, base: str, client_id: uuid.UUID, secret: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.base = base
        self.client_id = client_id
        self.secret = secret
        self.clock = clock
        self.http = httpx.Client(timeout=60)

    def post(self, path: str, body: bytes, **signing: Any) -> httpx.Response:
        signing.setdefault("timestamp", int(self.clock()))
        headers = signed(self.secret, body, **signing)
        return self.http.post(self.base + path, content=body, headers=headers)

    def fetch(self, wait: float = 0, most: int = 100) -> list[WireMessage]:
        answer = self.post("/fetch", fetch_document(self.client_id, wait, most))
        assert answer.status_code == 200, answer.text
        return parse_messages(answer.content, max_messages=most)

    def ack(self, *acks: tuple[str, int]) -> int:
        answer = self.post("/ack", ack_document(self.client_id, [Ack(i, s) for i, s in acks]))
        assert answer.status_code == 200, answer.text
        accepted = answer.json()["accepted"]
        assert isinstance(accepted, int)
        return accepted

    def close(self) -> None:
        self.http.close()


def call_wsgi(app: Any, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """Call a WSGI app in this thread with one POST; its status and body."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
    answer: list[str] = []
    chunks = app(environ, lambda status, _headers: answer.append(status))
    return int(answer[0].split()[0]), b"".join(chunks)
