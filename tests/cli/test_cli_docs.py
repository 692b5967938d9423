"""docs/cli.md against the command: every subcommand and option, and every output shown.

Each ``$ flnotify ...`` command of a ```text block of docs/cli.md that ends on its own
(``demo``, ``send``, ``secret``, ``outbox``; ``listen`` and ``mailbox serve`` serve until
stopped and are tested in test_cli.py and test_cli_mailbox.py, with the page's send to a
polling client) is run in a temporary directory, and what it prints must be the lines the
page shows after it: ids, times, ports, secrets and runs of spaces (column widths) are
normalised. A usage error's example is compared with the last lines of stderr (argparse
prints the usage before it).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from flnotify.cli._args import build_parser
from helpers.processes import normal

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "cli.md"
RUNS = {"demo", "send", "secret", "outbox"}


def sections(text: str) -> dict[str, str]:
    """``## `flnotify NAME` `` heading -> the text up to the next such heading."""
    parts = re.split(r"^## `flnotify (\w+)`\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[tuple[str, ...]]:
    """The options of a parser and of its own subcommands, each with its spellings."""
    found = {
        tuple(action.option_strings)
        for action in parser._actions
        if action.option_strings and "--help" not in action.option_strings
    }
    for sub in _subparsers(parser).values():
        found |= _options(sub)
    return found


def test_every_subcommand_and_option_is_on_the_page() -> None:
    parser, _ = build_parser()
    text = PAGE.read_text(encoding="utf-8")
    commands = _subparsers(parser)
    assert set(commands) == {"demo", "send", "secret", "listen", "outbox", "mailbox"}
    words = {4: "four", 5: "five", 6: "six", 7: "seven"}
    assert f"{words[len(commands)]} subcommands" in " ".join(text.split())
    shown = sections(text)
    missing = []
    for name, sub in commands.items():
        if name not in shown:
            missing.append(f"no section for flnotify {name}")
            continue
        if not re.search(rf"^\| `flnotify {name}\b", text, re.MULTILINE):
            missing.append(f"flnotify {name} is not in the table of subcommands")
        synopsis = shown[name].split("```text\n", 1)[1].split("```", 1)[0]
        for spellings in _options(sub):
            if not any(re.search(rf"(?<![\w-]){o}\b", synopsis) for o in spellings):
                missing.append(f"{name} {'/'.join(spellings)} not in its synopsis")
        for outbox_command in _subparsers(sub):
            if outbox_command not in synopsis:
                missing.append(f"flnotify {name} {outbox_command} not in its synopsis")
    assert not missing, "\n".join(missing)


def examples() -> list[tuple[int, list[list[str]], list[str]]]:
    """(line, the commands of a block, the output lines after the last one)."""
    found = []
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        if lines[index] != "```text" or not lines[index + 1].startswith("$ "):
            index += 1
            continue
        start, index = index + 1, index + 1
        commands: list[list[str]] = []
        output: list[str] = []
        while lines[index] != "```":
            line = lines[index]
            if line.startswith("$ "):
                command = line[2:]
                while command.endswith("\\"):
                    index += 1
                    command = command[:-1] + lines[index].strip()
                commands.append(shlex.split(command, comments=True))
                output = []
            else:
                output.append(line)
            index += 1
        # a send to mailbox: needs a polling client: test_cli_mailbox.py runs it with one
        if all(c[0] == "flnotify" and c[1] in RUNS and "--mailbox" not in c for c in commands):
            found.append((start, commands, output))
    return found


def test_the_page_has_output_examples() -> None:
    kinds = {command[1] for _, commands, _ in examples() for command in commands}
    assert kinds == RUNS


@pytest.mark.parametrize(
    ("line", "commands", "output"), examples(), ids=[f"line {e[0]}" for e in examples()]
)
def test_shown_output_is_what_the_command_prints(
    line: int, commands: list[list[str]], output: list[str], tmp_path: Path
) -> None:
    # not a terminal and no COLUMNS: tables keep one line per row, as the page shows them
    env = {
        k: v for k, v in os.environ.items() if k not in ("FLNOTIFY_SECRET", "NO_COLOR", "COLUMNS")
    }
    for command in commands:
        done = subprocess.run(  # noqa: S603 - the page's own command
            [sys.executable, "-m", "flnotify", *command[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    printed = (done.stderr if done.returncode == 2 else done.stdout).splitlines()
    printed = printed[-len(output) :] if done.returncode == 2 else printed
    assert [normal(x) for x in printed] == [normal(x) for x in output], f"docs/cli.md:{line}"
