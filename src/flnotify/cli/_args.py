"""Arguments: the parser of every subcommand and the checks of single values."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from uuid import UUID

from .. import NotificationType, Signer, __version__
from .._outbox_cli import add_arguments as add_outbox_arguments
from ..errors import ConfigurationError

__all__ = [
    "SECRET_ENV",
    "build_parser",
    "check_secret",
    "int_arg",
    "positive_float",
    "secret_option",
    "type_arg",
    "uuid_arg",
]

SECRET_ENV = "FLNOTIFY_SECRET"  # noqa: S105 - the name of a variable, not a secret
"""Environment variable read when ``--secret`` is not given (keeps it out of ``ps``)."""


def uuid_arg(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        msg = f"not a UUID: {value!r}"
        raise argparse.ArgumentTypeError(msg) from None


def type_arg(value: str) -> NotificationType:
    wanted = value.strip().upper()
    for kind in NotificationType:
        if kind.value == wanted:
            return kind
    names = ", ".join(t.value for t in NotificationType)
    msg = f"unknown notification type {value!r} (choose from {names})"
    raise argparse.ArgumentTypeError(msg)


def int_arg(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            msg = f"not an integer: {value!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if number < low or (high is not None and number > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            msg = f"must be {bound}, not {number}"
            raise argparse.ArgumentTypeError(msg)
        return number

    return parse


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        msg = f"not a number: {value!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not number > 0:
        msg = f"must be > 0, not {value}"
        raise argparse.ArgumentTypeError(msg)
    return number


def secret_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--secret",
        metavar="WHSEC",
        default=os.environ.get(SECRET_ENV) or None,
        help=(
            f"the whsec_... secret {what} (default: ${SECRET_ENV}; none: unsigned; "
            "make one with: flnotify secret)"
        ),
    )


def check_secret(parser: argparse.ArgumentParser, secret: str | None) -> None:
    if secret is None:
        return
    try:
        Signer(secret)
    except ConfigurationError as exc:  # names the problem, never the secret
        parser.error(f"argument --secret: {exc}")


def add_mailbox_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mailbox`` subcommands (``serve``) to ``parser``."""
    commands = parser.add_subparsers(dest="mailbox_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a mailbox to polling clients (listen --pull)",
        description=(
            "Serve the mailbox app over a mailbox store (an SQLite file, created if "
            "missing, or a PostgreSQL database): polling clients fetch at URL/fetch and "
            "acknowledge at URL/ack, each signing its requests with its own secret. "
            "flnotify send ... mailbox: --mailbox PATH posts into the same store. "
            "Ctrl-C stops it."
        ),
    )
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="PATH", help="the mailbox's SQLite file")
    where.add_argument(
        "--url", metavar="postgresql://...", help="the mailbox's PostgreSQL database"
    )
    serve.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="UUID=WHSEC",
        help="a client's id and its own secret (repeatable; visible in ps: prefer --clients-file)",
    )
    serve.add_argument(
        "--clients-file",
        metavar="FILE",
        help="a file of clients, one 'UUID WHSEC' per line (# starts a comment)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=int_arg(0, 65535),
        default=8090,
        help="port (default 8090; 0: any free)",
    )
    serve.add_argument(
        "--path", default="/mailbox", help="where the mailbox answers (default /mailbox)"
    )
    serve.add_argument(
        "--max-wait",
        type=positive_float,
        default=25.0,
        metavar="S",
        help="longest long poll in seconds (default 25)",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each subcommand's own (for errors that name the subcommand)."""
    parser = argparse.ArgumentParser(
        prog="flnotify",
        description="Typed, signed notifications from an FL server to its clients.",
    )
    parser.add_argument("--version", action="version", version=f"flnotify {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="run a whole training against FL clients on 127.0.0.1",
        description=(
            "Start FL clients on 127.0.0.1 (each verifying signatures with a secret of its "
            "own), then run one training through the Notifier with an SQLite training "
            "store: TRAINING_START, the update rounds, a MODEL_TEST_ROUND and "
            "TRAINING_FINISHED. With --faults a few clients reject a round (the default "
            "callbacks remove them and tell them) and one is unreachable: its circuit "
            "breaker skips it at no cost, the tolerant failure policy keeps the training "
            "going and removes it after two failed rounds. --strict applies the original "
            "platform's rule instead (the FL platform, Django + Celery, whose notification "
            "layer flnotify was lifted from): one failure puts the training into ERROR. "
            "With --pull N, N clients open no socket: they long-poll the server's mailbox "
            "and acknowledge each notification, and the same send reaches them and the others."
        ),
    )
    demo.add_argument(
        "--clients", type=int_arg(1, 500), default=20, metavar="N", help="FL clients (default 20)"
    )
    demo.add_argument(
        "--rounds", type=int_arg(1, 100), default=3, metavar="N", help="update rounds (default 3)"
    )
    demo.add_argument(
        "--faults", action="store_true", help="some clients reject a round, one is unreachable"
    )
    demo.add_argument(
        "--strict",
        action="store_true",
        help=(
            "the original platform's rule (the FL platform flnotify was lifted from): "
            "any failure puts the training into ERROR (no breaker)"
        ),
    )
    demo.add_argument(
        "--pull",
        type=int_arg(0, 500),
        default=0,
        metavar="N",
        help="N clients poll the server's mailbox instead of listening (clients behind NAT)",
    )
    demo.add_argument(
        "--seed", type=int, metavar="N", help="repeat a run: same ids, same faulty clients"
    )
    demo.add_argument("--db", metavar="PATH", help="SQLite file to keep (default: a temporary one)")
    demo.add_argument("--json", action="store_true", help="print a JSON summary only")
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="also print what the flnotify logger said"
    )

    send = commands.add_parser(
        "send",
        help="send one notification and print the delivery report",
        description=(
            "Send one notification to the given receiver URLs and print what happened to "
            "each. Exit status 0 when every receiver answered 2xx, 1 otherwise."
        ),
        epilog=(
            "Receiver ids (sent nowhere, but used for signing lookups and shown in the report) "
            "are random unless given with --receiver-id, once per URL in the same order. "
            "On a terminal a progress line shows on stderr while the send runs. "
            "Example: flnotify send UPDATE_ROUND_START http://127.0.0.1:8080/ --round 1 "
            "--model-uuid 8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6 (make a secret for --secret "
            "with: flnotify secret)"
        ),
    )
    send.add_argument(
        "type",
        metavar="TYPE",
        type=type_arg,
        help="notification type, e.g. UPDATE_ROUND_START (case-insensitive)",
    )
    send.add_argument("urls", metavar="URL", nargs="+", help="receiver endpoint(s)")
    send.add_argument(
        "--training-uuid",
        type=uuid_arg,
        metavar="UUID",
        help="the training (default: a new random UUID, shown in the output)",
    )
    send.add_argument(
        "--model-uuid",
        type=uuid_arg,
        metavar="UUID",
        help="the global model (all types but CLIENT_REMOVED)",
    )
    send.add_argument(
        "--round", type=int_arg(0), metavar="N", help="round number (round and test types)"
    )
    send.add_argument(
        "--client-uuid", type=uuid_arg, metavar="UUID", help="the removed client (CLIENT_REMOVED)"
    )
    send.add_argument("--reason", help="why the client was removed (CLIENT_REMOVED)")
    send.add_argument(
        "--receiver-id",
        type=uuid_arg,
        action="append",
        metavar="UUID",
        help="receiver id, once per URL in order (default: random ids)",
    )
    secret_option(send, "to sign with")
    send.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="connect/read/write timeout per attempt in seconds (default 10)",
    )
    send.add_argument(
        "--attempts",
        type=int_arg(1, 20),
        default=3,
        metavar="N",
        help="attempts per receiver, the first included (default 3)",
    )
    send.add_argument(
        "--mailbox",
        metavar="PATH",
        help=(
            "the mailbox store (SQLite file or postgresql:// URL) that mailbox: receivers "
            "poll, e.g. through flnotify mailbox serve"
        ),
    )
    send.add_argument(
        "--ack-deadline",
        type=positive_float,
        metavar="S",
        help="seconds a polling client has to acknowledge (default 300; with --mailbox)",
    )
    quiet_or_json = send.add_mutually_exclusive_group()
    quiet_or_json.add_argument(
        "-q", "--quiet", action="store_true", help="no progress and no table: the summary line only"
    )
    quiet_or_json.add_argument(
        "--json", action="store_true", help="print the report as JSON (and no progress)"
    )

    secret = commands.add_parser(
        "secret",
        help="print a new whsec_ signing secret",
        description=(
            "Print a new random secret in the Standard Webhooks format (whsec_ and the base64 "
            "of random bytes), for --secret / $FLNOTIFY_SECRET on the server and its clients."
        ),
    )
    secret.add_argument(
        "--bytes",
        type=int_arg(1, 64),  # below 24: refused by generate_secret, with its message
        default=32,
        metavar="N",
        help="random bytes in the secret, 24 to 64 (default 32)",
    )

    listen = commands.add_parser(
        "listen",
        help="receive notifications and print each one",
        description=(
            "An FL client: verify each notification (with --secret), print it as one line "
            "and answer as the reference client does (200 for TRAINING_START and "
            "TRAINING_FINISHED, 202 for rounds and tests). With --pull it opens no port "
            "(a client behind NAT): it long-polls the server's mailbox at URL as "
            "--client-id, signs its requests with --secret and acknowledges each "
            "notification with that answer. Ctrl-C stops it."
        ),
    )
    listen.add_argument(
        "--host", help="address to bind (default 127.0.0.1; not with --pull)", default=None
    )
    listen.add_argument(
        "--port",
        type=int_arg(0, 65535),
        default=None,
        help="port (default 8080; 0: any free; not with --pull)",
    )
    listen.add_argument(
        "--path", default=None, help="the endpoint's path (default /; not with --pull)"
    )
    listen.add_argument(
        "--pull",
        metavar="URL",
        help="poll the server's mailbox at URL instead of listening (needs --client-id, --secret)",
    )
    listen.add_argument(
        "--client-id",
        type=uuid_arg,
        metavar="UUID",
        help="this client's receiver id, whose mailbox --pull polls",
    )
    secret_option(listen, "notifications must be signed with (with --pull: the client's own)")
    listen.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per notification on stdout (start-up lines go to stderr)",
    )
    outbox = commands.add_parser(
        "outbox",
        help="see and re-drive the durable outbox (SQLite or PostgreSQL)",
        description=(
            "Counts by state, the failed deliveries with their last error, re-drive of "
            "failed deliveries (same webhook-id, so deduplicating clients run their "
            "handler once), and pruning of old done rows."
        ),
    )
    add_outbox_arguments(outbox)
    mailbox = commands.add_parser(
        "mailbox",
        help="serve a mailbox to clients behind NAT (listen --pull)",
        description=(
            "The server's side of clients behind NAT: serve sends the mailbox app over a "
            "store that flnotify send ... mailbox: --mailbox PATH posts into."
        ),
    )
    add_mailbox_arguments(mailbox)
    commands_by_name = {"demo": demo, "send": send, "secret": secret, "listen": listen}
    return parser, {**commands_by_name, "outbox": outbox, "mailbox": mailbox}
