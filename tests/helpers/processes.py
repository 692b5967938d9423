"""The ``flnotify`` command as a process: started with a clean environment, its lines read
in a thread so tests wait with a timeout instead of sleeping."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from typing import IO, Any

from flnotify import cli

__all__ = ["Lines", "flnotify_process", "normal"]


class Lines:
    """Reads a process's output lines in a thread, so tests can wait with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))

    def next(self, timeout: float = 10.0) -> str:
        return self.queue.get(timeout=timeout)


def flnotify_process(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != cli.SECRET_ENV}
    env["NO_COLOR"] = "1"
    previous = signal.getsignal(signal.SIGINT)
    # a child inherits an ignored SIGINT (e.g. pytest started as a background job)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        return subprocess.Popen(  # noqa: S603 - our own command with fixed arguments
            [sys.executable, "-m", "flnotify", *args], env=env, text=True, **kwargs
        )
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


# What a docs page shows and a command prints, alike: ids, times, ports, secrets and runs of
# spaces (column widths) normalised.
_NORMAL = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\b\d+(?:\.\d+)? (?:ms|s)\b"), "<time>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_<secret>"),
    (re.compile(r"[ \t]+"), " "),
]


def normal(text: str) -> str:
    for pattern, replacement in _NORMAL:
        text = pattern.sub(replacement, text)
    return text.strip()
