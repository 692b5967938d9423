"""Real services for the receiving tests, on 127.0.0.1 only, started and stopped here.

* `redis_server()`: a throw-away ``redis-server`` on an ephemeral port with a temp dir;
* `UvicornWorkers`: ``uvicorn --workers N`` serving a module of ``tests/`` on a socket
  the test holds, so requests wait in its backlog (no polling for readiness) and a
  restart keeps the address;
* `listening_socket()`: such a socket;
* `serve_asgi(app)`: an ASGI app under uvicorn in a thread of this process (its lifespan
  run), on such a socket; yields the base URL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from uuid import UUID
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flnotify import (
    ClientRemovedBody,
    ClientRemovedNotification,
    GlobalModelBody,
    Notification,
    RoundBody,
    TrainingFinishedNotification,
    TrainingModelTestNotification,
    TrainingRoundStartNotification,
    TrainingStartNotification,
    TrainingSWAGRoundStartNotification,
)
from flnotify.receiving import asgi_app, wsgi_app

HOST = "127.0.0.1"
TESTS = Path(__file__).resolve().parents[1]  # the tests folder: helpers import as helpers.*
_READY = "Ready to accept connections"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(timeout: float = 20.0) -> Iterator[str]:
    """A fresh redis-server (no persistence); yields its ``redis://`` URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        import pytest

        pytest.skip("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="flnotify-redis-") as folder:
        port = free_port()
        process = subprocess.Popen(  # noqa: S603 - a fixed local binary
            [
                binary,
                "--port",
                str(port),
                "--bind",
                HOST,
                "--dir",
                folder,
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "notice",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_for_line(process, _READY, timeout)
            yield f"redis://{HOST}:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _wait_for_line(process: subprocess.Popen[str], wanted: str, timeout: float) -> None:
    """Read the process's output until a line contains ``wanted`` (bounded by ``timeout``)."""
    found = threading.Event()
    seen: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if wanted in line:
                found.set()
                # keep draining, so the process never blocks on a full pipe
        found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout) or not any(wanted in line for line in seen):
        process.kill()
        msg = f"{process.args!r} did not say {wanted!r}: {''.join(seen)}"
        raise RuntimeError(msg)


@contextlib.contextmanager
def listening_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(1024)
    try:
        yield sock
    finally:
        sock.close()


class UvicornWorkers:
    """``uvicorn <app> --workers N`` as a subprocess on a socket the test holds.

    Requests sent before the workers are up wait in the socket's backlog; `restart`
    stops every worker (SIGTERM, as a deploy does) and starts new ones on the same socket.
    """

    def __init__(
        self, app: str, sock: socket.socket, env: Mapping[str, str], workers: int = 2
    ) -> None:
        self.app = app
        self.sock = sock
        self.env = {**os.environ, **env, "PYTHONPATH": str(TESTS)}
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.sock.getsockname()[1]}/fl/notify"

    def start(self) -> None:
        fd = self.sock.fileno()
        self.process = subprocess.Popen(  # noqa: S603 - our own test app
            [
                sys.executable,
                "-m",
                "uvicorn",
                self.app,
                "--fd",
                str(fd),
                "--workers",
                str(self.workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            pass_fds=[fd],
            env=self.env,
            cwd=TESTS,
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> UvicornWorkers:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_asgi(app: Any, path: str = "/fl/notify") -> Iterator[str]:
    """Serve ``app`` under uvicorn in a thread; yields ``http://127.0.0.1:<port><path>``.

    The socket listens before uvicorn starts, so requests simply wait in the backlog:
    no polling for readiness. The app's lifespan runs (startup before the first request
    is answered, shutdown on the way out).
    """
    import uvicorn

    with listening_socket() as sock:
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
        thread.start()
        try:
            yield f"http://{HOST}:{port}{path}"
        finally:
            server.should_exit = True
            thread.join()


# -- the six notification types, and the router's servers (ASGI and WSGI) -------------------

_TRAINING = UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01")
_MODEL = UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")
_CLIENT = UUID("c1e2a3b4-d5f6-4789-abcd-ef0123456789")

ALL_TYPES: list[tuple[Notification[Any], int]] = [
    (TrainingStartNotification((), GlobalModelBody(_MODEL), _TRAINING), 200),
    (TrainingRoundStartNotification((), RoundBody(3, _MODEL), _TRAINING), 202),
    (TrainingSWAGRoundStartNotification((), RoundBody(4, _MODEL), _TRAINING), 202),
    (TrainingModelTestNotification((), RoundBody(5, _MODEL), _TRAINING), 202),
    (TrainingFinishedNotification((), GlobalModelBody(_MODEL), _TRAINING), 200),
    (ClientRemovedNotification((), ClientRemovedBody(_CLIENT, "too slow"), _TRAINING), 200),
]

"""One notification of each type, with the status a handler answers it with."""


class Recorder:
    """A handler that records what it got and returns what it is told to."""

    def __init__(self, result: Any = None) -> None:
        self.calls: list[Notification[Any]] = []
        self.result = result

    def __call__(self, notification: Notification[Any]) -> Any:
        self.calls.append(notification)
        return self.result


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/fl/notify"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


SERVERS = {
    "wsgiref": lambda router: serve_wsgi(wsgi_app(router)),
    "uvicorn": lambda router: serve_asgi(asgi_app(router)),
}
