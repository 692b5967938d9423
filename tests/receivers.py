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

HOST = "127.0.0.1"
TESTS = Path(__file__).resolve().parent
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
