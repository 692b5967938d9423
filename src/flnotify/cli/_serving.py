"""Serving until stopped: the loop ``listen`` and ``mailbox serve`` share.

Ctrl-C and SIGTERM stop the server alike; the command then says so on stderr.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..receiving import BoundedWSGIServer
from ._output import emit

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["normal_path", "only_at", "serve_until_stopped"]


class _StopError(Exception):
    """SIGTERM arrived: stop serving as on Ctrl-C."""


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise _StopError

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_until_stopped(server: BoundedWSGIServer, command: str) -> None:
    """Serve until Ctrl-C or SIGTERM, then say ``flnotify COMMAND: stopped`` on stderr.

    The server is not closed here: the caller closes what must close first (a mailbox
    app's held polls) and then the server.
    """
    try:
        with _stop_on_sigterm():
            server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, _StopError):
        emit(f"flnotify {command}: stopped", sys.stderr)


def normal_path(path: str) -> str:
    """``path`` with one leading slash and no trailing one (``/`` for the root)."""
    return "/" + path.strip("/")


def only_at(app: WSGIApplication, paths: set[str], detail: str) -> WSGIApplication:
    """``app`` at ``paths`` (normalised) only; any other path is answered 404 with ``detail``."""
    body = b'{"error":"not_found","detail":"' + detail.encode() + b'"}'

    def mounted(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        if normal_path(environ.get("PATH_INFO", "")) not in paths:
            start_response(
                "404 Not Found",
                [("content-type", "application/json"), ("content-length", str(len(body)))],
            )
            return [body]
        return app(environ, start_response)

    return mounted
