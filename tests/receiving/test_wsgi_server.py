"""The bounded WSGI server (and ``flnotify listen``, which uses it) against stalled peers.

Real servers on 127.0.0.1 and raw sockets that send nothing, drip bytes, or stop in the
middle of a body. Waits are event-driven with an upper bound: a blocking ``recv`` that
returns when the server answers or closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

import flnotify
import flnotify.codec
from flnotify import RoundBody, TrainingRoundStartNotification, generate_secret
from flnotify.errors import ConfigurationError
from flnotify.receiving import BoundedWSGIServer, NotificationRouter, make_wsgi_server
from flnotify.signing import sign_payload

SECRET = generate_secret()
ROUND = TrainingRoundStartNotification(
    receivers=(),
    body=RoundBody(round=1, global_model_uuid=UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")),
    training_uuid=UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01"),
)
BODY = flnotify.codec.encode(ROUND)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition`` (checked on a short event wait), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        pause.wait(0.005)


@contextlib.contextmanager
def serving(**bounds: Any) -> Iterator[BoundedWSGIServer]:
    router = NotificationRouter(secrets=SECRET)
    router.add_handler(TrainingRoundStartNotification, lambda notification: None)
    server = make_wsgi_server("127.0.0.1", 0, router.wsgi_app(), **bounds)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (bounded by ``timeout``)."""
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_and_error(raw: bytes) -> tuple[int, str | None]:
    if not raw:
        return 0, None
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"] if body.startswith(b"{") else None


def genuine_request(msg_id: str, path: str = "/fl") -> bytes:
    headers = sign_payload(BODY, SECRET, msg_id=msg_id)
    lines = [f"POST {path} HTTP/1.1".encode(), b"host: x", b"content-type: application/json"]
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    lines.append(f"content-length: {len(BODY)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + BODY


def post_genuine(port: int, msg_id: str, path: str = "/fl") -> int:
    with connect(port) as sock:
        sock.sendall(genuine_request(msg_id, path))
        return status_and_error(read_until_closed(sock))[0]


def test_silent_connections_time_out_and_the_pool_is_capped() -> None:
    with serving(read_timeout=1.0, request_timeout=5, max_connections=4, max_queued=2) as server:
        port = server.server_port
        silent = [connect(port) for _ in range(4)]
        wait_until(lambda: server.active_connections == 4)
        queued = [connect(port) for _ in range(2)]
        overflow = connect(port)  # the queue is full: refused at once
        assert status_and_error(read_until_closed(overflow, 5)) == (503, "too_many_connections")
        answers = [status_and_error(read_until_closed(sock)) for sock in silent + queued]
        assert server.threads == 4  # never more threads than the cap
        wait_until(lambda: server.active_connections == 0)
        assert post_genuine(port, "msg_after_silence") == 202
        for sock in [*silent, *queued, overflow]:
            sock.close()
    # each silent connection was answered 408 by its read timeout (the queued ones too)
    assert answers == [(408, "request_timeout")] * 6


def test_a_queued_connection_that_waited_too_long_is_refused() -> None:
    with serving(read_timeout=1.0, max_connections=1, max_queued=4, queue_timeout=0.2) as server:
        port = server.server_port
        staller = connect(port)
        wait_until(lambda: server.active_connections == 1)
        waiting = connect(port)
        waiting.sendall(genuine_request("msg_waited"))  # its turn comes after ~1 s: too late
        assert status_and_error(read_until_closed(waiting)) == (503, "too_many_connections")
        assert status_and_error(read_until_closed(staller)) == (408, "request_timeout")
        staller.close()
        waiting.close()


def test_a_dripping_peer_is_cut_off_by_the_request_deadline() -> None:
    with serving(read_timeout=0.5, request_timeout=1.0) as server:
        started = time.monotonic()
        drip = b"POST /fl HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 10_000
        sent = 0
        with connect(server.server_port) as sock:
            sock.settimeout(0.05)  # each byte well within the read timeout
            answer = b""
            while sent < len(drip):
                sock.sendall(drip[sent : sent + 1])
                sent += 1
                try:
                    answer = sock.recv(65536)  # waits for the server (or 50 ms)
                except TimeoutError:
                    continue
                answer += read_until_closed(sock)
                break
        elapsed = time.monotonic() - started
    assert status_and_error(answer) == (408, "request_timeout")
    assert sent < len(drip)  # cut off before the request was complete
    assert elapsed < 5


def test_a_body_that_stops_arriving_is_the_routers_408() -> None:
    with serving(read_timeout=0.3) as server, connect(server.server_port) as sock:
        request = genuine_request("msg_short")
        sock.sendall(request[:-10])  # the Content-Length promises 10 more bytes
        assert status_and_error(read_until_closed(sock)) == (408, "request_timeout")


def test_the_stdlib_parsers_refusals_are_json() -> None:
    with serving() as server, connect(server.server_port) as sock:
        headers = b"".join(b"x-h%d: v\r\n" % i for i in range(150))
        sock.sendall(b"POST /fl HTTP/1.1\r\n" + headers + b"\r\n")
        assert status_and_error(read_until_closed(sock)) == (431, "headers_too_large")


def test_bounds_are_checked() -> None:
    app: Any = NotificationRouter().wsgi_app()
    for bad in ({"read_timeout": 0}, {"max_connections": 0}, {"queue_timeout": -1}):
        with pytest.raises(ConfigurationError):
            make_wsgi_server("127.0.0.1", 0, app, **bad)


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_listen_survives_200_stalled_connections() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLNOTIFY_SECRET"}
    listener = subprocess.Popen(  # noqa: S603 - our own command
        [sys.executable, "-m", "flnotify", "listen", "--port", "0", "--secret", SECRET],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    stalled: list[socket.socket] = []
    try:
        assert listener.stdout is not None
        first = listener.stdout.readline()
        assert first.startswith("listening on http://127.0.0.1:"), first
        url = urllib.parse.urlsplit(first.removeprefix("listening on ").strip())
        assert url.port is not None
        port = url.port
        baseline = thread_count(listener.pid)
        stalled = [connect(port) for _ in range(200)]
        peak = 0
        answers = []
        for sock in stalled:  # each recv returns when the listener answers or closes
            answers.append(status_and_error(read_until_closed(sock, timeout=30)))
            peak = max(peak, thread_count(listener.pid))
        statuses = {status for status, _ in answers}
        assert statuses <= {408, 503}, answers
        assert peak <= baseline + 64  # the pool's cap, not one thread per connection
        assert post_genuine(port, "msg_after_stall", url.path) == 202
    finally:
        for sock in stalled:
            sock.close()
        listener.send_signal(signal.SIGINT)
        try:
            listener.wait(timeout=10)
        except subprocess.TimeoutExpired:
            listener.kill()
            listener.wait()
        for stream in (listener.stdout, listener.stderr):
            if stream is not None:
                stream.close()
