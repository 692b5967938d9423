"""``flnotify outbox``: see and re-drive an outbox (SQLite file or PostgreSQL database).

Subcommands:

- ``status``: how many deliveries are pending, claimed and done, and how many failed;
- ``list``: the failed deliveries with their last error;
- ``retry``: make failed deliveries pending again (all with ``--all``, or the given message
  ids); they keep their ``webhook-id``, so clients that deduplicate run their handler once;
- ``prune --older-than 7d``: delete done deliveries recorded before then;
- ``prune-tracking --older-than 30d``: in an SQLite file that also holds a
  [`SQLiteTrainingRepository`][flnotify.SQLiteTrainingRepository] or a
  [`SQLiteHealthStore`][flnotify.health.SQLiteHealthStore], forget the outcome tracking
  of sends whose last outcome is older than that, and the health of endpoints not heard
  of since (``--db`` only: the bundled repository and health store are SQLite files).

``--db``, ``--url`` and ``--json`` go before or after the subcommand. The command opens
only an outbox that exists: a missing file, or a database without the outbox's tables, is
an error (status 2), never created or added to.

The operations are the outbox's own ([`Outbox.counts`][flnotify.outbox.Outbox.counts],
[`failed`][flnotify.outbox.Outbox.failed],
[`retry_failed`][flnotify.outbox.Outbox.retry_failed],
[`prune`][flnotify.outbox.Outbox.prune]); this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ._exceptions import FlnotifyError, NoOutboxError
from .health import SQLiteHealthStore
from .outbox import OutboxEntry, OutboxOperations, OutboxState, open_outbox
from .outbox._existing import sqlite_tables
from .repository import SQLiteTrainingRepository

__all__ = ["add_arguments", "run"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def _duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w``."""
    match = _DURATION.match(text)
    if match is None:
        msg = f"not a duration: {text!r} (e.g. 90s, 15m, 12h, 7d)"
        raise argparse.ArgumentTypeError(msg)
    return float(match[1]) * _UNITS[match[2] or "s"]


def _where(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--db``/``--url``/``--json``: on the command and on each subcommand alike.

    On a subcommand they default to "not given", so a value given before the subcommand
    stays when none is given after it.
    """
    default: Any = None if top else argparse.SUPPRESS
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", default=default, help="the outbox's SQLite file")
    where.add_argument(
        "--url",
        metavar="postgresql://...",
        default=default,
        help="the outbox's PostgreSQL database",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print JSON instead of text",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the outbox options and subcommands to ``parser``."""
    _where(parser, top=True)
    commands = parser.add_subparsers(dest="outbox_command", metavar="COMMAND", required=True)
    status = commands.add_parser("status", help="deliveries by state, and how many failed")
    listing = commands.add_parser("list", help="failed deliveries with their last error")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    retry = commands.add_parser("retry", help="send failed deliveries again, same webhook-id")
    retry.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID", help="only these")
    retry.add_argument("--all", action="store_true", help="every failed delivery")
    prune = commands.add_parser("prune", help="delete old done deliveries")
    prune.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="AGE",
        help="recorded longer ago than this (e.g. 7d, 12h)",
    )
    tracking = commands.add_parser(
        "prune-tracking", help="forget old outcome tracking and endpoint health (SQLite)"
    )
    tracking.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="AGE",
        help="last recorded longer ago than this (e.g. 30d)",
    )
    for command in (status, listing, retry, prune, tracking):
        _where(command, top=False)


def run(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Run the parsed ``outbox`` command; the exit status (0 ok, 1 failed, 2 misuse)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    command = args.outbox_command
    if command == "retry" and bool(args.all) == bool(args.message_ids):
        print("flnotify outbox retry: give message ids or --all (not both)", file=err)
        return 2
    if bool(args.db) == bool(args.url):
        print(
            f"flnotify outbox {command}: give one of --db PATH or --url postgresql://...", file=err
        )
        return 2
    try:
        if command == "prune-tracking":
            result = _prune_tracking(args, clock)
        else:
            with open_outbox(args.url or args.db, create=False) as outbox:
                result = _COMMANDS[command](outbox, args, clock)
    except NoOutboxError as exc:
        print(f"flnotify outbox {command}: {exc}", file=err)
        return 2
    except FlnotifyError as exc:
        print(f"flnotify outbox {command}: {exc}", file=err)
        return 1
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    else:
        print(_TEXT[command](result), file=out)
    return 0


# -- the commands: each returns JSON-ready data -------------------------------------------


def _status(outbox: OutboxOperations, args: argparse.Namespace, clock: Callable[[], float]) -> Any:
    counts = outbox.counts()
    return {
        **{state.value: counts[state] for state in OutboxState},
        "failed": len(outbox.failed()),
    }


def _entry(entry: OutboxEntry) -> dict[str, Any]:
    return {
        "message_id": entry.message_id,
        "receiver_id": str(entry.receiver.id),
        "endpoint": entry.receiver.message_endpoint,
        "attempts": entry.attempts,
        "claims": entry.claims,
        "status_code": entry.status_code,
        "error_kind": None if entry.error_kind is None else entry.error_kind.value,
        "error": entry.error,
        "recorded_at": entry.recorded_at,
    }


def _list(outbox: OutboxOperations, args: argparse.Namespace, clock: Callable[[], float]) -> Any:
    return [_entry(e) for e in outbox.failed(limit=args.limit)]


def _retry(outbox: OutboxOperations, args: argparse.Namespace, clock: Callable[[], float]) -> Any:
    retried = outbox.retry_failed(None if args.all else args.message_ids)
    return {"retried": retried}


def _prune(outbox: OutboxOperations, args: argparse.Namespace, clock: Callable[[], float]) -> Any:
    return {"pruned": outbox.prune(before=clock() - args.older_than)}


def _prune_tracking(args: argparse.Namespace, clock: Callable[[], float]) -> Any:
    """Prune what the file holds of outcome tracking and endpoint health; create nothing.

    Raises:
        NoOutboxError: ``--url`` was given, or the file holds neither.
    """
    if args.url:
        msg = "the bundled repository and health store are SQLite files: give --db PATH"
        raise NoOutboxError(msg)
    tables = sqlite_tables(args.db, "outcome tracking or endpoint health")
    before = clock() - args.older_than
    result = {}
    if "send_outcomes" in tables:
        with SQLiteTrainingRepository(args.db) as repository:
            result["sends"] = repository.prune_outcomes(before)
    if "flnotify_endpoint_health" in tables:
        with SQLiteHealthStore(args.db) as health:
            result["endpoints"] = health.prune(before)
    if not result:
        msg = f"{args.db!r} holds no outcome tracking and no endpoint health"
        raise NoOutboxError(msg)
    return result


_COMMANDS: dict[str, Callable[[OutboxOperations, argparse.Namespace, Callable[[], float]], Any]] = {
    "status": _status,
    "list": _list,
    "retry": _retry,
    "prune": _prune,
}


# -- text output ----------------------------------------------------------------------------


def _status_text(result: dict[str, int]) -> str:
    return "\n".join(f"{name:<8} {result[name]:>8}" for name in result)


def _list_text(result: list[dict[str, Any]]) -> str:
    if not result:
        return "no failed deliveries"
    lines = []
    for row in result:
        why = row["error"] or f"HTTP {row['status_code']}"
        kind = f" ({row['error_kind']})" if row["error_kind"] else ""
        lines.append(
            f"{row['message_id']}  {row['endpoint']}  attempts {row['attempts']}: {why}{kind}"
        )
    return "\n".join(lines)


_TEXT: dict[str, Callable[[Any], str]] = {
    "status": _status_text,
    "list": _list_text,
    "retry": lambda result: f"{result['retried']} failed delivery(ies) pending again",
    "prune": lambda result: f"{result['pruned']} done delivery(ies) deleted",
    "prune-tracking": lambda result: "\n".join(
        f"{n} {what} forgotten" for what, n in result.items()
    ),
}
