"""``flnotify mailbox serve``: the mailbox app over a store, for clients behind NAT.

Polling clients (``flnotify listen --pull URL``, or a
[`MailboxPoller`][flnotify.receiving.MailboxPoller]) fetch their notifications from it and
acknowledge them; ``flnotify send ... mailbox: --mailbox PATH`` (or a server's
[`Notifier`][flnotify.Notifier] with ``mailbox=``) posts into the same store. Each client
signs its requests with its own secret: given as ``--client UUID=WHSEC`` or, kept out of
``ps``, one ``UUID WHSEC`` pair per line of ``--clients-file``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from uuid import UUID

from .. import Signer
from .._exceptions import ConfigurationError, FlnotifyError
from ..mailbox import MailboxApp, open_mailbox
from ..receiving import make_wsgi_server
from ._output import emit
from ._serving import normal_path, only_at, serve_until_stopped

__all__ = ["client_secrets", "run_mailbox"]


def _pair(
    text: str, sep: str | None, where: str, parser: argparse.ArgumentParser
) -> tuple[UUID, str]:
    parts = text.split(sep, 1)
    if len(parts) != 2 or not parts[1].strip():
        parser.error(f"{where}: expected a client id and its secret")
    try:
        client = UUID(parts[0].strip())
    except ValueError:
        parser.error(f"{where}: not a UUID: {parts[0].strip()!r}")
    secret = parts[1].strip()
    try:
        Signer(secret)
    except ConfigurationError as exc:  # names the problem, never the secret
        parser.error(f"{where}: {exc}")
    return client, secret


def client_secrets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[UUID, str]:
    """Each client's own secret, from ``--clients-file`` and ``--client`` (checked)."""
    found: dict[UUID, str] = {}
    if args.clients_file is not None:
        path = Path(args.clients_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"argument --clients-file: cannot read {path}: {exc}")
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                client, secret = _pair(line, None, f"{path}, line {number}", parser)
                found[client] = secret
    for given in args.client:
        client, secret = _pair(given, "=", "argument --client", parser)
        found[client] = secret
    if not found:
        parser.error("no clients: give --client UUID=WHSEC or --clients-file FILE")
    return found


def run_mailbox(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve the mailbox until Ctrl-C or SIGTERM."""
    secrets = client_secrets(args, parser)
    signer = Signer(lookup=lambda receiver: secrets.get(receiver.id))
    path = normal_path(args.path)
    target: str = args.db if args.db is not None else args.url
    try:
        store = open_mailbox(target)
    except FlnotifyError as exc:
        emit(f"flnotify mailbox serve: cannot open the mailbox {target!r}: {exc}", sys.stderr)
        return 1
    with store:
        app = MailboxApp(store, signer, max_wait=args.max_wait)
        try:
            # each held long poll takes a server thread: room for two per client
            server = make_wsgi_server(
                args.host,
                args.port,
                only_at(
                    app.wsgi_app(),
                    {f"{path.rstrip('/')}/fetch", f"{path.rstrip('/')}/ack"},
                    "the mailbox answers at .../fetch and .../ack",
                ),
                max_connections=max(64, 2 * len(secrets) + 8),
            )
        except OSError as exc:
            emit(
                f"flnotify mailbox serve: cannot listen on {args.host}:{args.port}: {exc}",
                sys.stderr,
            )
            return 1
        shown = f"[{args.host}]" if ":" in args.host else args.host
        emit(
            f"serving the mailbox at http://{shown}:{server.server_port}{path} "
            f"for {len(secrets)} client(s)"
        )
        try:
            serve_until_stopped(server, "mailbox serve")
        finally:
            app.close()  # held polls answer now, before the server stops
            server.server_close()
            server.drain(10.0)  # then the store closes: no request left to find it closed
    return 0
