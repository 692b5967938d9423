"""Tables fit the terminal: at 80 and 120 columns, with and without ``rich``, cells wrap
(or header names shorten) and no column or character is ever left out."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flnotify import cli
from flnotify.cli._output import Style, strip_ansi, table

HEADER = ["#", "notification", "skipped (open circuit)", "removed"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _chars(rows: list[list[str]]) -> Counter[str]:
    return Counter(c for row in rows for cell in row for c in cell if not c.isspace())


cells = st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=40)


@given(
    rows=st.integers(1, 6).flatmap(
        lambda n: st.lists(st.lists(cells, min_size=n, max_size=n), min_size=1, max_size=8)
    ),
    width=st.integers(24, 200),
)
def test_a_table_fits_its_width_and_keeps_every_character(
    rows: list[list[str]], width: int
) -> None:
    style = Style(io.StringIO())
    shown = table(rows, style, width=width)
    assert all(len(line) <= width for line in shown.splitlines())  # 6 columns of 3 fit in 23
    kept = Counter(c for c in shown if not c.isspace())
    assert kept == _chars(rows)


def test_the_short_header_is_used_only_when_the_whole_one_does_not_fit() -> None:
    rows = [HEADER, ["1", "UPDATE_ROUND_START", "client-04", "client-04, client-07"]]
    short = ["#", "type", "skipped", "removed"]
    style = Style(io.StringIO())
    assert table(rows, style, width=120, short=short).startswith(
        "#  notification        skipped (open circuit)"
    )
    narrow = table(rows, style, width=40, short=short)
    assert narrow.split()[:2] == ["#", "type"]
    assert _chars([short, rows[1]]) == Counter(c for c in narrow if not c.isspace())
    assert table(rows, style).splitlines()[0] == table(rows, style, width=None).splitlines()[0]


def test_a_coloured_cell_is_never_wrapped() -> None:
    colour = Style(FakeTerminal())
    colour.color = True
    rows = [["receiver", "outcome", "detail"], ["a" * 36, colour("delivered", "green"), "x " * 30]]
    shown = table(rows, colour, width=50)
    assert colour("delivered", "green") in shown
    assert all(len(strip_ansi(line)) <= 50 for line in shown.splitlines())


def _demo_table(
    monkeypatch: pytest.MonkeyPatch, width: int, *, with_rich: bool
) -> tuple[list[str], str]:
    """The demo's table on a terminal ``width`` wide, and everything it printed."""
    if not with_rich:
        monkeypatch.setattr("flnotify.cli._demo.rich_module", lambda module: None)
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setenv("NO_COLOR", "1")
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stdout", terminal)
    assert cli.main(["demo", "--clients", "12", "--faults", "--seed", "7"]) == 0
    lines = [strip_ansi(x) for x in terminal.getvalue().split("\n")]
    start = next(i for i, x in enumerate(lines) if x.startswith("#") or "one training" in x)
    end = next(
        i for i in range(start, len(lines)) if not lines[i].strip() or lines[i - 1][:1] == "└"
    )
    return lines[start:end], terminal.getvalue()


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("with_rich", [True, False])
def test_the_demo_table_fits_80_and_120_columns(
    monkeypatch: pytest.MonkeyPatch, width: int, with_rich: bool
) -> None:
    if with_rich:
        pytest.importorskip("rich")
    shown, _ = _demo_table(monkeypatch, width, with_rich=with_rich)
    assert all(len(line) <= width for line in shown), "\n".join(shown)
    text = " ".join(strip_ansi(line) for line in shown)
    assert "…" not in text  # nothing cut short
    for name in ["#", "type", "rd", "to", "dlv", "rej", "fail", "time", "state", "part."]:
        assert f" {name} " in f" {text} "  # every column is there
    assert "skipped" in text
    assert "removed" in text
    for cell in ["COMPLETED", "client-04", "client-07", "MODEL_TEST_ROUND"]:
        assert cell in "".join(text.split()), cell  # whole, if perhaps over two lines


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("with_rich", [True, False])
def test_the_lines_under_the_demo_table_wrap_to_80_and_120_columns(
    monkeypatch: pytest.MonkeyPatch, width: int, with_rich: bool
) -> None:
    if with_rich:
        pytest.importorskip("rich")
    _, printed = _demo_table(monkeypatch, width, with_rich=with_rich)
    lines = [strip_ansi(x) for x in printed.split("\n")]
    under = lines[next(i for i, x in enumerate(lines) if x.startswith("training ")) :]
    assert all(len(line) <= width for line in under), "\n".join(under)
    text = " ".join(line.strip() for line in under)
    assert "removed at step #3 after 2 failed rounds in a row" in text  # nothing lost
    assert "client-07 rejects round 2" in text
