"""``flnotify listen``: an FL client that prints every verified notification."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import Codec, MessageContext, Notification, NotificationRouter, NotificationType
from .._demo import make_wsgi_server
from ._args import check_secret
from ._output import emit

__all__ = ["run_listen"]


def _normal_path(path: str) -> str:
    return "/" + path.strip("/")


class _Printer:
    """Prints one line per received notification; called from the server's threads."""

    def __init__(self, *, as_json: bool, verified: bool) -> None:
        self.as_json = as_json
        self.verified = verified
        self.lock = threading.Lock()
        self.codec = Codec()

    def __call__(self, notification: Notification[Any], context: MessageContext) -> None:
        document = self.codec.to_dict(notification)
        now = time.time()
        if self.as_json:
            line = json.dumps(
                {
                    "time": round(now, 3),
                    "id": context.id,
                    "verified": context.verified,
                    **document,
                },
                separators=(",", ":"),
            )
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
            training = document.get("training_uuid", "-")
            body = json.dumps(document["body"], separators=(",", ":"))
            line = f"{stamp} {document['notification_type']} training={training} {body}"
        with self.lock:
            emit(line)


def run_listen(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve until Ctrl-C or SIGTERM, printing each verified notification."""
    check_secret(parser, args.secret)
    path = _normal_path(args.path)
    router = NotificationRouter(secrets=args.secret)
    printer = _Printer(as_json=args.json, verified=args.secret is not None)
    for kind in NotificationType:
        router.add_handler(kind, printer)
    inner = router.wsgi_app()

    def app(environ: Any, start_response: Any) -> Any:
        if _normal_path(environ.get("PATH_INFO", "")) != path:
            body = b'{"error":"not_found","detail":"no endpoint at this path"}'
            start_response(
                "404 Not Found",
                [("content-type", "application/json"), ("content-length", str(len(body)))],
            )
            return [body]
        return inner(environ, start_response)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("flnotify: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("flnotify")
    logger.addHandler(handler)
    try:
        server = make_wsgi_server(args.host, args.port, app)
    except OSError as exc:
        logger.removeHandler(handler)
        emit(f"flnotify listen: cannot listen on {args.host}:{args.port}: {exc}", sys.stderr)
        return 1
    host = f"[{args.host}]" if ":" in args.host else args.host
    # with --json, stdout carries JSON lines only: where it listens goes to stderr
    where = f"listening on http://{host}:{server.server_port}{path}"
    emit(where, sys.stderr if args.json else None)
    if args.secret is None:
        emit(
            "flnotify listen: no --secret: unsigned notifications are accepted "
            "(anyone who can reach this port can send)",
            sys.stderr,
        )
    try:
        with _stop_on_sigterm():
            server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, _StopError):
        emit("flnotify listen: stopped", sys.stderr)
    finally:
        server.server_close()
        logger.removeHandler(handler)
    return 0


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
