"""The entry point: parse the arguments, run the subcommand, map a closed pipe to status 1."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from .._outbox_cli import run as run_outbox
from ._args import build_parser
from ._demo import run_demo_command
from ._listen import run_listen
from ._mailbox import run_mailbox
from ._secret import run_secret
from ._send import run_send

__all__ = ["main"]


def _run_outbox(args: argparse.Namespace, _: argparse.ArgumentParser) -> int:
    return run_outbox(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flnotify`` command line.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 0 on success, 1 when ``send`` did not deliver to everyone.

    Raises:
        SystemExit: On a usage error (status 2), ``--help`` or ``--version``.
    """
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    command: str = args.command
    run = {
        "demo": run_demo_command,
        "send": run_send,
        "secret": run_secret,
        "listen": run_listen,
        "outbox": _run_outbox,
        "mailbox": run_mailbox,
    }[command]
    try:
        return run(args, commands[command])
    except BrokenPipeError:  # e.g. `flnotify demo | head`: stop quietly, as `cat` does
        with contextlib.suppress(OSError, ValueError):  # no file descriptor (captured)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
