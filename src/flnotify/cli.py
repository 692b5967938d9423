"""The ``flnotify`` command: ``demo``, ``send`` and ``listen``.

* ``flnotify demo`` runs a whole training against FL clients on loopback (see
  `flnotify._demo`) and shows what happened to every notification.
* ``flnotify send TYPE URL...`` sends one notification and prints the delivery report;
  the exit status is 1 when a receiver did not answer 2xx.
* ``flnotify listen`` is an FL client that prints every verified notification.

Usage errors exit with status 2. Colour is used on a terminal only, never when
``NO_COLOR`` is set; ``rich`` (the ``cli`` extra) gives a live progress display.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, TextIO, Union
from uuid import UUID

from . import __version__
from ._codec import Codec
from ._delivery import Delivery, DeliveryReport, Notifier
from ._demo import DemoConfig, DemoResult, StepResult, make_wsgi_server, run_demo
from ._exceptions import ConfigurationError, EndpointError
from ._notification import Notification, TrainingNotification
from ._retry import Outcome, RetryPolicy
from ._types import NotificationType, Receiver
from .endpoints import EndpointPolicy
from .receiving import MessageContext, NotificationRouter
from .repository import SQLiteTrainingRepository
from .signing import Signer
from .training import (
    ClientRemovedBody,
    ClientRemovedNotification,
    GlobalModelBody,
    RoundBody,
    TrainingFinishedNotification,
    TrainingModelTestNotification,
    TrainingRoundStartNotification,
    TrainingStartNotification,
    TrainingSWAGRoundStartNotification,
)
from .transports import HttpxTransport, Timeouts

__all__ = ["main"]

SECRET_ENV = "FLNOTIFY_SECRET"  # noqa: S105 - the name of a variable, not a secret
"""Environment variable read when ``--secret`` is not given (keeps it out of ``ps``)."""

_ROUND_TYPES = {
    NotificationType.UPDATE_ROUND_START: TrainingRoundStartNotification,
    NotificationType.SWAG_ROUND_START: TrainingSWAGRoundStartNotification,
    NotificationType.MODEL_TEST_ROUND: TrainingModelTestNotification,
}
_MODEL_TYPES = {
    NotificationType.TRAINING_START: TrainingStartNotification,
    NotificationType.TRAINING_FINISHED: TrainingFinishedNotification,
}


# --------------------------------------------------------------------------- output


class _Style:
    """ANSI colour for a terminal; plain text when not a TTY or when ``NO_COLOR`` is set."""

    _CODES: ClassVar[dict[str, str]] = {
        "green": "32",
        "yellow": "33",
        "red": "31",
        "bold": "1",
        "dim": "2",
    }

    def __init__(self, stream: TextIO) -> None:
        self.tty = _isatty(stream)
        self.color = self.tty and not os.environ.get("NO_COLOR")

    def __call__(self, text: str, style: str) -> str:
        if not self.color:
            return text
        return f"\x1b[{self._CODES[style]}m{text}\x1b[0m"

    def outcome(self, outcome: Outcome) -> str:
        colour = {Outcome.DELIVERED: "green", Outcome.REJECTED: "yellow"}.get(outcome, "red")
        return self(outcome.value, colour)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _rich(module: str) -> Any:
    """A ``rich`` submodule, or ``None`` when rich is not installed (it is optional)."""
    try:
        return importlib.import_module(f"rich.{module}")
    except ImportError:
        return None


def _table(rows: Sequence[Sequence[str]], style: _Style, header_style: str = "bold") -> str:
    """Left-aligned columns; the first row is the header. Widths ignore ANSI codes."""
    plain = [[_strip_ansi(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in plain) for i in range(len(rows[0]))]
    lines = []
    for n, (row, bare) in enumerate(zip(rows, plain, strict=True)):
        cells = [cell + " " * (w - len(b)) for cell, b, w in zip(row, bare, widths, strict=True)]
        line = "  ".join(cells).rstrip()
        lines.append(style(line, header_style) if n == 0 else line)
    return "\n".join(lines)


def _strip_ansi(text: str) -> str:
    out, skipping = [], False
    for char in text:
        if char == "\x1b":
            skipping = True
        elif skipping:
            skipping = char != "m"
        else:
            out.append(char)
    return "".join(out)


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _print(text: str = "", file: TextIO | None = None) -> None:
    stream = sys.stdout if file is None else file
    stream.write(text + "\n")
    stream.flush()


# --------------------------------------------------------------------------- arguments


def _uuid_arg(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        msg = f"not a UUID: {value!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _type_arg(value: str) -> NotificationType:
    wanted = value.strip().upper()
    for kind in NotificationType:
        if kind.value == wanted:
            return kind
    names = ", ".join(t.value for t in NotificationType)
    msg = f"unknown notification type {value!r} (choose from {names})"
    raise argparse.ArgumentTypeError(msg)


def _int_arg(low: int, high: int | None = None) -> Callable[[str], int]:
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


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        msg = f"not a number: {value!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not number > 0:
        msg = f"must be > 0, not {value}"
        raise argparse.ArgumentTypeError(msg)
    return number


def _secret_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--secret",
        metavar="WHSEC",
        default=os.environ.get(SECRET_ENV) or None,
        help=f"the whsec_... secret {what} (default: ${SECRET_ENV}; none: unsigned)",
    )


def _check_secret(parser: argparse.ArgumentParser, secret: str | None) -> None:
    if secret is None:
        return
    try:
        Signer(secret)
    except ConfigurationError as exc:  # names the problem, never the secret
        parser.error(f"argument --secret: {exc}")


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
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
            "callbacks remove them) and one is unreachable (the training goes to ERROR)."
        ),
    )
    demo.add_argument(
        "--clients", type=_int_arg(1, 500), default=20, metavar="N", help="FL clients (default 20)"
    )
    demo.add_argument(
        "--rounds", type=_int_arg(1, 100), default=3, metavar="N", help="update rounds (default 3)"
    )
    demo.add_argument(
        "--faults", action="store_true", help="some clients reject a round, one is unreachable"
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
            "Example: flnotify send UPDATE_ROUND_START http://127.0.0.1:8080/ "
            "--training-uuid $(uuidgen) --model-uuid $(uuidgen) --round 1"
        ),
    )
    send.add_argument(
        "type",
        metavar="TYPE",
        type=_type_arg,
        help="notification type, e.g. UPDATE_ROUND_START (case-insensitive)",
    )
    send.add_argument("urls", metavar="URL", nargs="+", help="receiver endpoint(s)")
    send.add_argument(
        "--training-uuid", type=_uuid_arg, required=True, metavar="UUID", help="the training"
    )
    send.add_argument(
        "--model-uuid",
        type=_uuid_arg,
        metavar="UUID",
        help="the global model (required except for CLIENT_REMOVED)",
    )
    send.add_argument(
        "--round", type=_int_arg(0), metavar="N", help="round number (round and test types)"
    )
    send.add_argument(
        "--client-uuid", type=_uuid_arg, metavar="UUID", help="the removed client (CLIENT_REMOVED)"
    )
    send.add_argument("--reason", default="", help="why the client was removed (CLIENT_REMOVED)")
    send.add_argument(
        "--receiver-id",
        type=_uuid_arg,
        action="append",
        metavar="UUID",
        help="receiver id, once per URL in order (default: random ids)",
    )
    _secret_option(send, "to sign with")
    send.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="connect/read/write timeout per attempt in seconds (default 10)",
    )
    send.add_argument(
        "--attempts",
        type=_int_arg(1, 20),
        default=3,
        metavar="N",
        help="attempts per receiver, the first included (default 3)",
    )
    send.add_argument("--json", action="store_true", help="print the report as JSON")

    listen = commands.add_parser(
        "listen",
        help="receive notifications and print each one",
        description=(
            "An FL client: verify each notification (with --secret), print it as one line "
            "and answer as the reference client does (200 for TRAINING_START and "
            "TRAINING_FINISHED, 202 for rounds and tests). Ctrl-C stops it."
        ),
    )
    listen.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    listen.add_argument(
        "--port", type=_int_arg(0, 65535), default=8080, help="port (default 8080; 0: any free)"
    )
    listen.add_argument("--path", default="/", help="the endpoint's path (default /)")
    _secret_option(listen, "notifications must be signed with")
    listen.add_argument("--json", action="store_true", help="print one JSON object per line")
    return parser, {"demo": demo, "send": send, "listen": listen}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flnotify`` command line.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 0 on success, 1 when ``send`` did not deliver to everyone.

    Raises:
        SystemExit: On a usage error (status 2), ``--help`` or ``--version``.
    """
    parser, commands = _build_parser()
    args = parser.parse_args(argv)
    command: str = args.command
    run = {"demo": _demo, "send": _send, "listen": _listen}[command]
    try:
        return run(args, commands[command])
    except BrokenPipeError:  # e.g. `flnotify demo | head`: stop quietly, as `cat` does
        with contextlib.suppress(OSError, ValueError):  # no file descriptor (captured)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


# --------------------------------------------------------------------------- demo


_Progress = Union["_PlainProgress", "_LineProgress", "_RichProgress"]


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.faults and args.clients < 3:
        parser.error("--faults needs at least 3 clients (--clients 3 or more)")
    if args.db is not None:
        try:
            SQLiteTrainingRepository(args.db).close()  # refuse a bad file before starting
        except ConfigurationError as exc:
            parser.error(f"argument --db: {exc}")
    config = DemoConfig(
        clients=args.clients, rounds=args.rounds, faults=args.faults, seed=args.seed, db=args.db
    )
    out = sys.stdout
    style = _Style(out)
    if args.json:
        result = run_demo(config)
        _print(json.dumps(result.as_dict(), indent=2))
        return 0
    progress: _Progress
    if style.tty and _rich("progress") is not None:
        progress = _RichProgress(out)
    elif style.tty:
        progress = _LineProgress(out)
    else:
        progress = _PlainProgress(out)
    faults = " with faults" if args.faults else ""
    where = args.db or "a temporary SQLite file"
    _print(
        style(
            f"flnotify demo: {args.clients} FL clients on 127.0.0.1, {args.rounds} rounds"
            f"{faults}; trainings in {where}",
            "bold",
        )
    )
    with progress:
        result = run_demo(config, progress)
    _print()
    if style.tty and _rich("table") is not None:
        _rich_demo_summary(result, out)
    else:
        _plain_demo_summary(result, style)
    if args.verbose and result.log:
        _print()
        _print(style("flnotify log:", "bold"))
        for line in result.log:
            _print(f"  {line}")
    return 0


def _step_label(number: int, total: int, notification_type: str, round_: int | None) -> str:
    where = f" round {round_}" if round_ is not None else ""
    return f"[{number}/{total}] {notification_type}{where}"


def _round_of(notification: Notification[Any]) -> int | None:
    body = notification.body
    return body.round if isinstance(body, RoundBody) else None


class _PlainProgress:
    """Not a terminal: one line per finished step."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def step_started(self, number: int, total: int, notification: Notification[Any]) -> None:
        pass

    def delivery_done(self, number: int, delivery: Delivery) -> None:
        pass

    def step_finished(self, step: StepResult, total: int) -> None:
        label = _step_label(step.number, total, step.notification_type, step.round)
        _print(
            f"{label}: {step.delivered} delivered, {step.rejected} rejected, "
            f"{step.failed} failed in {_seconds(step.elapsed)}",
            self.out,
        )


class _LineProgress:
    """A terminal without rich: one line per step, rewritten with a carriage return."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.label = ""
        self.total = 0
        self.counts = dict.fromkeys(Outcome, 0)
        self.drawn = 0

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def _draw(self, end: str = "") -> None:
        done = sum(self.counts.values())
        width = 20
        filled = width * done // self.total if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        c = self.counts
        text = (
            f"{self.label:<32} [{bar}] {done}/{self.total}  {c[Outcome.DELIVERED]} delivered  "
            f"{c[Outcome.REJECTED]} rejected  {c[Outcome.FAILED]} failed{end}"
        )
        columns = shutil.get_terminal_size().columns
        self.out.write("\r" + text[: max(columns - 1, 20)].ljust(self.drawn))
        self.drawn = min(len(text), max(columns - 1, 20))
        self.out.flush()

    def step_started(self, number: int, total: int, notification: Notification[Any]) -> None:
        with self.lock:
            self.label = _step_label(
                number, total, notification.notification_type.value, _round_of(notification)
            )
            self.total = len(notification.receivers)
            self.counts = dict.fromkeys(Outcome, 0)
            self._draw()

    def delivery_done(self, number: int, delivery: Delivery) -> None:
        with self.lock:
            self.counts[delivery.outcome] += 1
            self._draw()

    def step_finished(self, step: StepResult, total: int) -> None:
        with self.lock:
            self._draw(f"  {_seconds(step.elapsed)}")
            self.out.write("\n")
            self.drawn = 0


class _RichProgress:
    """A terminal with rich: a live bar per step."""

    def __init__(self, out: TextIO) -> None:
        progress = _rich("progress")
        console = _rich("console").Console(file=out)
        self.progress = progress.Progress(
            progress.TextColumn("{task.description:<34}"),
            progress.BarColumn(),
            progress.MofNCompleteColumn(),
            progress.TextColumn("{task.fields[counts]}"),
            progress.TimeElapsedColumn(),
            console=console,
        )
        self.task: Any = None
        self.counts = dict.fromkeys(Outcome, 0)

    def __enter__(self) -> _RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def _counts(self) -> str:
        c = self.counts
        return (
            f"[green]{c[Outcome.DELIVERED]} delivered[/] "
            f"[yellow]{c[Outcome.REJECTED]} rejected[/] [red]{c[Outcome.FAILED]} failed[/]"
        )

    def step_started(self, number: int, total: int, notification: Notification[Any]) -> None:
        self.counts = dict.fromkeys(Outcome, 0)
        label = _step_label(
            number, total, notification.notification_type.value, _round_of(notification)
        )
        self.task = self.progress.add_task(
            label, total=len(notification.receivers), counts=self._counts()
        )

    def delivery_done(self, number: int, delivery: Delivery) -> None:
        self.counts[delivery.outcome] += 1
        self.progress.update(self.task, advance=1, counts=self._counts())

    def step_finished(self, step: StepResult, total: int) -> None:
        self.progress.update(self.task, completed=step.receivers, counts=self._counts())
        self.progress.stop_task(self.task)


_SUMMARY_HEADER = [
    "#",
    "notification",
    "round",
    "to",
    "delivered",
    "rejected",
    "failed",
    "time",
    "state",
    "participants",
    "removed",
]


def _summary_rows(result: DemoResult) -> list[list[str]]:
    rows = []
    for step in result.steps:
        rows.append(
            [
                str(step.number),
                step.notification_type,
                "-" if step.round is None else str(step.round),
                str(step.receivers),
                str(step.delivered),
                str(step.rejected),
                str(step.failed),
                _seconds(step.elapsed),
                step.state.value,
                str(step.participants),
                ", ".join(result.name_of(i) for i in step.removed),
            ]
        )
    return rows


def _final_lines(result: DemoResult, style: _Style) -> list[str]:
    final = result.final
    state = final.state.value
    lines = [
        f"training {final.id}: {style(state, 'red' if state == 'ERROR' else 'green')}, "
        f"round {final.round}, model {final.model_id}",
        f"actor: {result.name_of(final.actor.id)}",
        f"participants ({len(final.participants)} of {len(result.clients)}): "
        + ", ".join(result.name_of(p.id) for p in final.participants),
    ]
    faulty = [c for c in result.clients if c.fault is not None]
    if faulty:
        lines.append("faults:")
        for client in faulty:
            if client.unreachable:
                effect = "failed on every send -> the default callbacks set the training to ERROR"
            else:
                effect = "-> the default callbacks removed it from the training"
            lines.append(f"  {client.name} {client.fault} ({client.message_endpoint}) {effect}")
    totals = result.totals()
    lines.append(
        f"{totals['delivered']} delivered, {totals['rejected']} rejected, "
        f"{totals['failed']} failed; the clients verified {result.verified} signed "
        f"notification(s); {_seconds(result.elapsed)} in all"
    )
    lines.append(style(f"(--seed {result.seed} repeats this run)", "dim"))
    return lines


def _plain_demo_summary(result: DemoResult, style: _Style) -> None:
    _print(_table([_SUMMARY_HEADER, *_summary_rows(result)], style))
    _print()
    for line in _final_lines(result, style):
        _print(line)


def _rich_demo_summary(result: DemoResult, out: TextIO) -> None:
    console = _rich("console").Console(file=out, highlight=False)
    table = _rich("table").Table(title="one training, step by step", title_justify="left")
    for n, name in enumerate(_SUMMARY_HEADER):
        numeric = 2 <= n <= 7
        table.add_column(name, justify="right" if numeric else "left", no_wrap=n < 10)
    colours = {"ERROR": "red", "COMPLETED": "green"}
    for row in _summary_rows(result):
        state = row[8]
        row[8] = f"[{colours[state]}]{state}[/]" if state in colours else state
        table.add_row(*row)
    console.print(table)
    for line in _final_lines(result, _Style(out)):
        _print(line, out)


# --------------------------------------------------------------------------- send


def _build_notification(
    args: argparse.Namespace, parser: argparse.ArgumentParser, receivers: list[Receiver]
) -> TrainingNotification[Any]:
    kind: NotificationType = args.type
    if kind in _ROUND_TYPES and args.round is None:
        parser.error(f"{kind.value} needs --round")
    if kind not in _ROUND_TYPES and args.round is not None:
        parser.error(f"--round does not apply to {kind.value}")
    if kind is NotificationType.CLIENT_REMOVED:
        if args.client_uuid is None:
            parser.error("CLIENT_REMOVED needs --client-uuid")
        return ClientRemovedNotification(
            receivers=receivers,
            body=ClientRemovedBody(client_uuid=args.client_uuid, reason=args.reason),
            training_uuid=args.training_uuid,
        )
    if args.client_uuid is not None or args.reason:
        parser.error(f"--client-uuid and --reason apply to CLIENT_REMOVED only, not {kind.value}")
    if args.model_uuid is None:
        parser.error(f"{kind.value} needs --model-uuid")
    if kind in _ROUND_TYPES:
        return _ROUND_TYPES[kind](
            receivers=receivers,
            body=RoundBody(round=args.round, global_model_uuid=args.model_uuid),
            training_uuid=args.training_uuid,
        )
    return _MODEL_TYPES[kind](
        receivers=receivers,
        body=GlobalModelBody(global_model_uuid=args.model_uuid),
        training_uuid=args.training_uuid,
    )


def _send(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    urls: list[str] = args.urls
    policy = EndpointPolicy()
    for url in urls:
        try:
            policy.check_url(url)
        except EndpointError as exc:
            parser.error(f"bad receiver URL {url!r}: {exc.reason}")
    ids: list[UUID] | None = args.receiver_id
    if ids is not None and len(ids) != len(urls):
        parser.error(f"{len(ids)} --receiver-id for {len(urls)} URL(s); give one per URL")
    receivers = [
        Receiver(ids[i] if ids is not None else uuid.uuid4(), url) for i, url in enumerate(urls)
    ]
    notification = _build_notification(args, parser, receivers)
    _check_secret(parser, args.secret)
    notifier = Notifier(
        transport=HttpxTransport(timeouts=Timeouts.all(args.timeout)),
        retry=RetryPolicy(max_attempts=args.attempts),
        signer=None if args.secret is None else Signer(args.secret),
        policy=policy,
    )
    with notifier:
        report = notifier.send(notification)
    if args.json:
        _print(json.dumps(_report_dict(report, signed=args.secret is not None), indent=2))
    else:
        _print_report(report, _Style(sys.stdout), signed=args.secret is not None)
    return 0 if report.ok else 1


def _delivery_dict(delivery: Delivery) -> dict[str, Any]:
    return {
        "receiver_id": str(delivery.receiver.id),
        "endpoint": delivery.receiver.message_endpoint,
        "outcome": delivery.outcome.value,
        "status_code": delivery.status_code,
        "attempts": delivery.attempts,
        "elapsed": round(delivery.elapsed, 4),
        "message_id": delivery.message_id,
        "error": None if delivery.error is None else str(delivery.error),
    }


def _report_dict(report: DeliveryReport, *, signed: bool) -> dict[str, Any]:
    document = Codec().to_dict(report.notification)
    counts = report.counts()
    return {
        **document,
        "signed": signed,
        "ok": report.ok,
        "counts": {outcome.value: counts[outcome] for outcome in Outcome},
        "elapsed": round(report.elapsed, 4),
        "deliveries": [_delivery_dict(d) for d in report],
    }


def _detail(delivery: Delivery) -> str:
    """The error, or the start of a rejecting answer's body."""
    if delivery.error is not None:
        return str(delivery.error)
    response = delivery.response
    if delivery.ok or response is None or not response.body:
        return ""
    text = response.body[:120].decode("utf-8", "replace")
    return " ".join(text.split()) + ("..." if len(response.body) > 120 else "")


def _print_report(report: DeliveryReport, style: _Style, *, signed: bool) -> None:
    notification = report.notification
    body = json.dumps(Codec().to_dict(notification)["body"], separators=(",", ":"))
    _print(f"{notification.notification_type.value} {body} ({'signed' if signed else 'unsigned'})")
    rows = [["receiver", "endpoint", "outcome", "status", "attempts", "time", "detail"]]
    for d in report:
        rows.append(
            [
                str(d.receiver.id),
                d.receiver.message_endpoint,
                style.outcome(d.outcome),
                "-" if d.status_code is None else str(d.status_code),
                str(d.attempts),
                _seconds(d.elapsed),
                _detail(d),
            ]
        )
    _print(_table(rows, style))
    counts = report.counts()
    _print(
        f"{counts[Outcome.DELIVERED]} delivered, {counts[Outcome.REJECTED]} rejected, "
        f"{counts[Outcome.FAILED]} failed in {_seconds(report.elapsed)}"
    )


# --------------------------------------------------------------------------- listen


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
            _print(line)


def _listen(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_secret(parser, args.secret)
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
        _print(f"flnotify listen: cannot listen on {args.host}:{args.port}: {exc}", sys.stderr)
        return 1
    host = f"[{args.host}]" if ":" in args.host else args.host
    _print(f"listening on http://{host}:{server.server_port}{path}")
    if args.secret is None:
        _print(
            "flnotify listen: no --secret: unsigned notifications are accepted "
            "(anyone who can reach this port can send)",
            sys.stderr,
        )
    try:
        with _stop_on_sigterm():
            server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, _StopError):
        _print("flnotify listen: stopped", sys.stderr)
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
