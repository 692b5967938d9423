"""What the command prints: colour, tables, the ``send`` progress line, the report summary.

Everything the CLI writes about a delivery goes through here, so the wording lives in one
place: a delivery's detail is the text its error gives (or the start of a rejecting
answer), and a report's closing line is ``report_summary(report)``.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TextIO

from .. import Delivery, DeliveryReport, Outcome
from ..hooks import NullHook

__all__ = [
    "SendProgress",
    "Style",
    "delivery_detail",
    "emit",
    "isatty",
    "outcome_counts",
    "outcome_word",
    "report_summary",
    "rich_module",
    "seconds",
    "strip_ansi",
    "table",
    "terminal_width",
]


class Style:
    """ANSI colour for a terminal; plain text when not a TTY or when ``NO_COLOR`` is set."""

    _CODES: ClassVar[dict[str, str]] = {
        "green": "32",
        "yellow": "33",
        "red": "31",
        "bold": "1",
        "dim": "2",
    }

    def __init__(self, stream: TextIO) -> None:
        self.tty = isatty(stream)
        self.color = self.tty and not os.environ.get("NO_COLOR")

    def __call__(self, text: str, style: str) -> str:
        if not self.color:
            return text
        return f"\x1b[{self._CODES[style]}m{text}\x1b[0m"

    def outcome(self, outcome: Outcome) -> str:
        colour = {Outcome.DELIVERED: "green", Outcome.REJECTED: "yellow"}.get(outcome, "red")
        return self(outcome.value, colour)


def isatty(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (``False`` for anything without a descriptor)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def rich_module(module: str) -> Any:
    """A ``rich`` submodule, or ``None`` when rich is not installed (it is optional)."""
    try:
        return importlib.import_module(f"rich.{module}")
    except ImportError:
        return None


def terminal_width(stream: TextIO) -> int | None:
    """The width tables must fit: ``$COLUMNS`` if set, else the terminal's.

    ``None`` (no limit, one line per row) when ``stream`` is not a terminal.
    """
    given = os.environ.get("COLUMNS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    if not isatty(stream):
        return None
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return None


_BREAK_AFTER = re.compile(r"(?<=[ _,/-])")  # where a cell may wrap: after these
_MIN_WIDTH = 10  # a column is never narrowed below its longest word, up to this
_SQUEEZED = 3  # ... unless even that does not fit: then down to this


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``; nothing is left out.

    Broken after a space, ``_``, ``,``, ``/`` or ``-`` where possible, inside a word where not.
    """
    lines: list[str] = []
    line = ""
    for part in _BREAK_AFTER.split(text):
        piece = part if line else part.lstrip()
        if len((line + piece).rstrip()) <= width:
            line += piece
            continue
        if line:
            lines.append(line.rstrip())
        line = piece.lstrip()
        while len(line) > width:
            lines.append(line[:width])
            line = line[width:]
    lines.append(line.rstrip())
    return lines


def _longest_word(text: str) -> int:
    return max((len(p.strip()) for p in _BREAK_AFTER.split(text)), default=0)


def _narrowed(widths: list[int], least: list[int], room: int) -> None:
    """Narrow the widest columns first, none below its ``least``, until they fit ``room``."""
    while sum(widths) > room:
        i = max(range(len(widths)), key=lambda n: (widths[n] > least[n], widths[n]))
        if widths[i] <= least[i]:
            return
        widths[i] -= 1


def _layout(plain: list[list[str]], fixed: list[bool], width: int | None) -> tuple[list[int], int]:
    """Column widths and the gap between columns, to fit ``width`` where it can.

    Cells wrap at spaces first (two spaces between columns, then one); only if that is
    not enough do words break after ``_``, ``,``, ``-`` or ``/``, then anywhere, down to
    3 characters a column.
    """
    count = len(plain[0])
    columns = range(count)
    natural = [max(len(row[i]) for row in plain) for i in columns]
    if width is None or sum(natural) + 2 * (count - 1) <= width:
        return natural, 2
    keep = [max((len(row[i]) for row in plain[1:]), default=0) if fixed[i] else 1 for i in columns]
    spaced = [max(len(w) for row in plain for w in row[i].split() or [""]) for i in columns]
    broken = [min(max(_longest_word(row[i]) for row in plain), _MIN_WIDTH) for i in columns]
    gap = 2 if sum(map(max, keep, spaced)) + 2 * (count - 1) <= width else 1
    widths = list(natural)
    for words in (spaced, broken, [_SQUEEZED] * count):
        least = [max(k, min(w, n)) for k, w, n in zip(keep, words, natural, strict=True)]
        _narrowed(widths, least, width - gap * (count - 1))
    return widths, gap


def table(
    rows: Sequence[Sequence[str]],
    style: Style,
    header_style: str = "bold",
    *,
    width: int | None = None,
    short: Sequence[str] | None = None,
) -> str:
    """Left-aligned columns; the first row is the header. Widths ignore ANSI codes.

    With ``width`` the table fits it: the header takes its ``short`` names, then the
    widest columns wrap their cells (at spaces, ``_``, ``,``, ``-`` where they can);
    no column is ever left out. A coloured cell is never wrapped.
    """
    plain = [[strip_ansi(cell) for cell in row] for row in rows]
    if width is not None and short is not None:
        natural = sum(max(len(row[i]) for row in plain) for i in range(len(plain[0])))
        if natural + 2 * (len(plain[0]) - 1) > width:
            rows = [list(short), *rows[1:]]
            plain = [list(short), *plain[1:]]
    fixed = [
        any(c != p for c, p in zip(col, pcol, strict=True))
        for col, pcol in zip(zip(*rows, strict=True), zip(*plain, strict=True), strict=True)
    ]
    widths, gap = _layout(plain, fixed, width)
    lines = []
    for n, (row, bare) in enumerate(zip(rows, plain, strict=True)):
        cells = [[cell] if fixed[i] else _wrap(bare[i], widths[i]) for i, cell in enumerate(row)]
        for depth in range(max(len(c) for c in cells)):
            parts = []
            for i, wrapped in enumerate(cells):
                text = wrapped[depth] if depth < len(wrapped) else ""
                shown = len(strip_ansi(text))
                parts.append(text + " " * max(widths[i] - shown, 0))
            line = (" " * gap).join(parts).rstrip()
            lines.append(style(line, header_style) if n == 0 else line)
    return "\n".join(lines)


def strip_ansi(text: str) -> str:
    """``text`` without ANSI colour codes."""
    out, skipping = [], False
    for char in text:
        if char == "\x1b":
            skipping = True
        elif skipping:
            skipping = char != "m"
        else:
            out.append(char)
    return "".join(out)


def seconds(value: float) -> str:
    """A duration for people: ``12 ms`` or ``1.50 s``."""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def emit(text: str = "", file: TextIO | None = None) -> None:
    """Write one line and flush (stdout unless told otherwise)."""
    stream = sys.stdout if file is None else file
    stream.write(text + "\n")
    stream.flush()


# --------------------------------------------------------------------------- reports


def outcome_word(outcome: object) -> str:
    """An outcome as a plain word (``"delivered"``), whether given as enum or as text."""
    return outcome.value if isinstance(outcome, Outcome) else str(outcome)


def outcome_counts(counts: Mapping[Any, int]) -> str:
    """``"3 delivered, 1 rejected, 0 failed"``: every outcome, in a fixed order."""
    words = {outcome_word(key): count for key, count in counts.items()}
    return ", ".join(f"{words.get(o.value, 0)} {o.value}" for o in Outcome)


def report_summary(report: DeliveryReport) -> str:
    """The one line that closes a report: the counts and how long the send took."""
    return report.summary()


def delivery_detail(delivery: Delivery) -> str:
    """Why a delivery ended as it did: its error's text, or the start of a refusal's body."""
    if delivery.error is not None:
        return str(delivery.error)
    response = delivery.response
    if delivery.ok or response is None or not response.body:
        return ""
    text = response.body[:120].decode("utf-8", "replace")
    return " ".join(text.split()) + ("..." if len(response.body) > 120 else "")


# --------------------------------------------------------------------------- send progress


class SendProgress(NullHook):
    """A live line on a terminal while ``send`` runs: done / total, outcomes so far, rate.

    A delivery hook: ``on_outcome`` is called once per finished receiver (on the
    Notifier's event loop thread). A ticker thread redraws it meanwhile, so the elapsed
    time moves on even while every receiver is still waiting for an answer. The line is
    erased when the send ends, before the report is printed.
    """

    def __init__(
        self,
        out: TextIO,
        label: str,
        total: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.2,
    ) -> None:
        self.out = out
        self.label = label
        self.total = total
        self.clock = clock
        self.interval = interval
        self.counts = dict.fromkeys(Outcome, 0)
        self.started = clock()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="flnotify-progress", daemon=True)
        self._drawn = 0
        self._closed = False

    def __enter__(self) -> SendProgress:
        self.started = self.clock()
        self._draw()
        self._ticker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._ticker.join()
        with self._lock:
            self._closed = True
            self.out.write("\r" + " " * self._drawn + "\r")
            self.out.flush()
            self._drawn = 0

    def on_outcome(self, delivery: Delivery, /) -> None:
        """One receiver reached its outcome."""
        with self._lock:
            self.counts[delivery.outcome] += 1
        self._draw()

    def line(self) -> str:
        """The text of the progress line as it stands."""
        with self._lock:
            return self._line()

    def _line(self) -> str:
        done = sum(self.counts.values())
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = f"{done / elapsed:,.0f}/s" if done else "-/s"
        return (
            f"{self.label}: {done}/{self.total} done ({outcome_counts(self.counts)}), "
            f"{rate}, {seconds(elapsed)}"
        )

    def _tick(self) -> None:
        while not self._stopped.wait(self.interval):
            self._draw()

    def _draw(self) -> None:
        width = max(shutil.get_terminal_size().columns - 1, 20)
        with self._lock:  # one writer at a time, and never an older count after a newer one
            if self._closed:
                return
            text = self._line()[:width]
            self.out.write("\r" + text.ljust(self._drawn))
            self.out.flush()
            self._drawn = len(text)
