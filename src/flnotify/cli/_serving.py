"""Serving until stopped: the loop ``listen`` and ``mailbox serve`` share.

Ctrl-C and SIGTERM stop the server alike; the command then says so on stderr.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from ..receiving import BoundedWSGIServer
from ._output import emit

__all__ = ["serve_until_stopped"]


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
