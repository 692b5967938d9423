"""``flnotify listen``: an FL client that prints every verified notification.

It is pushed to (a WSGI server on ``--host``/``--port``) or, with ``--pull``, polls the
server's mailbox and opens no port at all; both print through the same `_Printer`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import Notification, NotificationType
from .._loops import run
from ..codec import Codec
from ..errors import ConfigurationError
from ..receiving import MailboxPoller, MessageContext, NotificationRouter, make_wsgi_server
from ._args import SECRET_ENV, check_secret
from ._output import emit
from ._serving import normal_path, only_at, serve_until_stopped

__all__ = ["run_listen"]


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


def _router(args: argparse.Namespace) -> NotificationRouter:
    router = NotificationRouter(secrets=args.secret)
    printer = _Printer(as_json=args.json, verified=args.secret is not None)
    for kind in NotificationType:
        router.add_handler(kind, printer)
    return router


@contextlib.contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """What the ``flnotify`` logger warns about (refused requests, failing polls) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("flnotify: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("flnotify")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def run_listen(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve (or with ``--pull``, poll) until Ctrl-C or SIGTERM, printing each notification."""
    check_secret(parser, args.secret)
    if args.pull is not None:
        return _run_pull(args, parser)
    if args.client_id is not None:
        parser.error("--client-id goes with --pull (a pushed client is told apart by its URL)")
    host = "127.0.0.1" if args.host is None else args.host
    port = 8080 if args.port is None else args.port
    path = normal_path("/" if args.path is None else args.path)
    app = only_at(_router(args).wsgi_app(), {path}, "no endpoint at this path")

    with _warnings_to_stderr():
        try:
            server = make_wsgi_server(host, port, app)
        except OSError as exc:
            emit(f"flnotify listen: cannot listen on {host}:{port}: {exc}", sys.stderr)
            return 1
        shown = f"[{host}]" if ":" in host else host
        # with --json, stdout carries JSON lines only: where it listens goes to stderr
        where = f"listening on http://{shown}:{server.server_port}{path}"
        emit(where, sys.stderr if args.json else None)
        if args.secret is None:
            emit(
                "flnotify listen: no --secret: unsigned notifications are accepted "
                "(anyone who can reach this port can send)",
                sys.stderr,
            )
        try:
            serve_until_stopped(server, "listen")
        finally:
            server.server_close()
    return 0


def _run_pull(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Poll the mailbox at ``--pull`` until Ctrl-C or SIGTERM; no port is opened."""
    pushed = [f"--{name}" for name in ("host", "port", "path") if getattr(args, name) is not None]
    if pushed:
        parser.error(f"{', '.join(pushed)} cannot be used with --pull (it opens no port)")
    if args.client_id is None:
        parser.error("--pull needs --client-id UUID: the receiver id whose mailbox it polls")
    if args.secret is None:
        parser.error(
            f"--pull needs --secret (or ${SECRET_ENV}): the client's own secret signs its "
            "requests and the notifications"
        )
    try:
        poller = MailboxPoller(
            args.pull, client_id=args.client_id, secret=args.secret, router=_router(args)
        )
    except ConfigurationError as exc:  # names the problem, never the secret
        parser.error(f"argument --pull: {exc}")
    with _warnings_to_stderr():
        # with --json, stdout carries JSON lines only: where it polls goes to stderr
        emit(f"polling {poller.url} as client {args.client_id}", sys.stderr if args.json else None)
        with contextlib.suppress(KeyboardInterrupt):  # where no signal handler could go in
            run(_poll(poller))  # uvloop if installed (FLNOTIFY_EVENT_LOOP)
        emit("flnotify listen: stopped", sys.stderr)
    return 0


async def _poll(poller: MailboxPoller) -> None:
    """Run ``poller`` until SIGINT or SIGTERM stops it (a pending long poll at once)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, poller.stop)
        except (NotImplementedError, RuntimeError, ValueError):  # not Unix, or not main thread
            continue
        installed.append(signum)
    try:
        async with poller:
            await poller.arun()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
