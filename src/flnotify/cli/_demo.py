"""``flnotify demo``: a whole training against FL clients on loopback, shown step by step."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
import threading
from typing import Any, TextIO, Union

from .. import Delivery, Notification, Outcome, RoundBody, SQLiteTrainingRepository
from .._demo import DEMO_RETRY, DemoClient, DemoConfig, DemoResult, StepResult, run_demo
from ..errors import FlnotifyError
from ._output import Style, emit, rich_module, seconds, table, terminal_width

__all__ = ["run_demo_command"]

_Progress = Union["_PlainProgress", "_LineProgress", "_RichProgress"]


def run_demo_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo and show its progress and summary."""
    if args.faults and args.clients < 3:
        parser.error("--faults needs at least 3 clients (--clients 3 or more)")
    pollable = args.clients - 1 - (1 if args.faults else 0)  # not the actor, not the dead one
    if args.pull > pollable:
        parser.error(
            f"argument --pull: at most {pollable} of {args.clients} clients can poll"
            " (the actor and the unreachable client are pushed to)"
        )
    if args.db is not None:
        try:
            SQLiteTrainingRepository(args.db).close()  # refuse a bad file before starting
        except FlnotifyError as exc:  # a bad path or a file that is not a database
            parser.error(f"argument --db: {exc}")
    config = DemoConfig(
        clients=args.clients,
        rounds=args.rounds,
        faults=args.faults,
        seed=args.seed,
        db=args.db,
        strict=args.strict,
        pull=args.pull,
    )
    out = sys.stdout
    style = Style(out)
    if args.json:
        result = run_demo(config)
        emit(json.dumps(result.as_dict(), indent=2))
        return 0
    progress: _Progress
    if style.tty and rich_module("progress") is not None:
        progress = _RichProgress(out)
    elif style.tty:
        progress = _LineProgress(out)
    else:
        progress = _PlainProgress(out)
    faults = " with faults" if args.faults else ""
    faults += ", strict failure policy" if args.strict else ", tolerant failure policy"
    if args.pull:
        faults += f", {args.pull} polling a mailbox (behind NAT)"
    where = args.db or "a temporary SQLite file"
    emit(
        style(
            f"flnotify demo: {args.clients} FL clients on 127.0.0.1, {args.rounds} rounds"
            f"{faults}; trainings in {where}",
            "bold",
        )
    )
    with progress:
        result = run_demo(config, progress)
    emit()
    if style.tty and rich_module("table") is not None:
        _rich_demo_summary(result, out)
    else:
        _plain_demo_summary(result, style, out, terminal_width(out))
    if args.verbose and result.log:
        emit()
        emit(style("flnotify log:", "bold"))
        for line in result.log:
            emit(f"  {line}")
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
        emit(
            f"{label}: {step.delivered} delivered, {step.rejected} rejected, "
            f"{step.failed} failed in {seconds(step.elapsed)}",
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
            self._draw(f"  {seconds(step.elapsed)}")
            self.out.write("\n")
            self.drawn = 0


class _RichProgress:
    """A terminal with rich: a live bar per step."""

    def __init__(self, out: TextIO) -> None:
        progress = rich_module("progress")
        console = rich_module("console").Console(file=out)
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
    "skipped (open circuit)",
    "removed",
]
_SUMMARY_SHORT = [
    "#",
    "type",
    "rd",
    "to",
    "dlv",
    "rej",
    "fail",
    "time",
    "state",
    "part.",
    "skipped",
    "removed",
]
"""The header's names where the whole one does not fit the terminal."""


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
                seconds(step.elapsed),
                step.state.value,
                str(step.participants),
                ", ".join(result.name_of(i) for i in step.skipped),
                ", ".join(result.name_of(i) for i in step.removed),
            ]
        )
    return rows


def _final_lines(result: DemoResult, style: Style) -> list[str]:
    final = result.final
    state = final.state.value
    lines = [
        f"training {final.id}: {style(state, 'red' if state == 'ERROR' else 'green')}, "
        f"round {final.round}, model {final.model_id}",
        f"actor: {result.name_of(final.actor.id)}",
        f"participants ({len(final.participants)} of {len(result.clients)}): "
        + ", ".join(result.name_of(p.id) for p in final.participants),
    ]
    polling = [c.name for c in result.clients if c.polling]
    if polling:
        lines.append(
            f"polling the mailbox, no socket of their own ({len(polling)}): " + ", ".join(polling)
        )
    faulty = [c for c in result.clients if c.fault is not None]
    if faulty:
        lines.append("faults:")
        for client in faulty:
            lines.append(f"  {client.name} {client.fault} ({client.message_endpoint}) -> ")
            lines[-1] += _effect(result, client)
    decisions = [s for s in result.steps if s.decision]
    if decisions:
        lines.append("decisions of the failure policy:")
        for step in decisions:
            label = _step_label(step.number, len(result.steps), step.notification_type, step.round)
            lines.append(f"  {label}: {step.decision}")
    totals = result.totals()
    lines.append(
        f"{totals['delivered']} delivered, {totals['rejected']} rejected, "
        f"{totals['failed']} failed; the clients verified {result.verified} signed "
        f"notification(s); {seconds(result.elapsed)} in all"
    )
    lines.append(style(f"(--seed {result.seed} repeats this run)", "dim"))
    return lines


def _effect(result: DemoResult, client: DemoClient) -> str:
    """What happened to one faulty client, in a sentence."""
    removed = next((s for s in result.steps if client.id in s.removed), None)
    if not client.unreachable:
        return "the default callbacks removed it from the training and told it so"
    if result.config.strict:
        return "it failed its first round: the strict policy set the training to ERROR"
    skipped = [s.number for s in result.steps if client.id in s.skipped]
    parts = [f"its circuit opened after {DEMO_RETRY.max_attempts} failed attempts"]
    if skipped:
        steps = ", ".join(f"#{n}" for n in skipped)
        parts.append(f"steps {steps} skipped it at no cost (0 attempts, no timeout)")
    if removed is not None:
        parts.append(
            f"removed at step #{removed.number} after 2 failed rounds in a row, and told "
            "(best effort: CLIENT_REMOVED)"
        )
    return "; ".join(parts)


def _plain_demo_summary(result: DemoResult, style: Style, out: TextIO, width: int | None) -> None:
    rows = [_SUMMARY_HEADER, *_summary_rows(result)]
    emit(table(rows, style, width=width, short=_SUMMARY_SHORT), out)
    emit(file=out)
    _emit_final_lines(result, style, out, width)


def _emit_final_lines(result: DemoResult, style: Style, out: TextIO, width: int | None) -> None:
    """The lines under the table, each wrapped to ``width`` (a continuation indented more)."""
    for line in _final_lines(result, style):
        if width is None or len(line) <= width:
            emit(line, out)
            continue
        indent = " " * (len(line) - len(line.lstrip(" ")))
        emit(
            textwrap.fill(
                line,
                width,
                subsequent_indent=indent + "    ",
                break_long_words=False,
                break_on_hyphens=False,
            ),
            out,
        )


def _rich_demo_summary(result: DemoResult, out: TextIO) -> None:
    """A boxed table where it fits the terminal, with whole header names or short ones.

    Else the plain table, which wraps its cells to fit: no column is ever left out.
    """
    console = rich_module("console").Console(file=out, highlight=False)
    rows = _summary_rows(result)

    def needs(names: list[str]) -> int:  # the widest cells, plus 3 a column for the borders
        widths = (max(len(name), *(len(row[n]) for row in rows)) for n, name in enumerate(names))
        return sum(widths) + 3 * len(names) + 1

    if needs(_SUMMARY_SHORT) > console.width:
        _plain_demo_summary(result, Style(out), out, width=console.width)
        return
    header = _SUMMARY_HEADER if needs(_SUMMARY_HEADER) <= console.width else _SUMMARY_SHORT
    table = rich_module("table").Table(title="one training, step by step", title_justify="left")
    for n, name in enumerate(header):
        numeric = 2 <= n <= 7
        table.add_column(name, justify="right" if numeric else "left", no_wrap=True)
    colours = {"ERROR": "red", "COMPLETED": "green"}
    for row in rows:
        state = row[8]
        row[8] = f"[{colours[state]}]{state}[/]" if state in colours else state
        table.add_row(*row)
    console.print(table)
    _emit_final_lines(result, Style(out), out, console.width)
