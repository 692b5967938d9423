"""``flnotify listen --pull``: argument errors in-process, and a real process polling a
loopback mailbox (``mailbox_fake``), printing each notification and stopping on a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import flnotify
import flnotify.codec
from flnotify import GlobalModelBody, RoundBody, cli, generate_secret
from flnotify.mailbox._wire import Ack
from helpers.mailbox_fake import FakeMailbox
from helpers.processes import Lines

SECRET = generate_secret()
CLIENT = uuid.UUID("0b9d3c64-5d0e-4c11-9a57-2f1d0f3b6d2e")
TRAINING = uuid.UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01")
MODEL = uuid.UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")
ROUND = flnotify.codec.encode(
    flnotify.TrainingRoundStartNotification((), RoundBody(7, MODEL), TRAINING)
)
START = flnotify.codec.encode(
    flnotify.TrainingStartNotification((), GlobalModelBody(MODEL), TRAINING)
)
PULL = ["listen", "--pull", "http://127.0.0.1:9/mailbox"]


@pytest.fixture(autouse=True)
def _no_secret_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.SECRET_ENV, raising=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*PULL, "--secret", SECRET], "--pull needs --client-id UUID"),
        ([*PULL, "--client-id", str(CLIENT)], "--pull needs --secret (or $FLNOTIFY_SECRET)"),
        (
            [*PULL, "--client-id", str(CLIENT), "--secret", SECRET, "--port", "8080"],
            "--port cannot be used with --pull (it opens no port)",
        ),
        (
            [*PULL, "--client-id", str(CLIENT), "--secret", SECRET, "--host", "::", "--path", "/"],
            "--host, --path cannot be used with --pull",
        ),
        (
            ["listen", "--pull", "mailbox.example", "--client-id", str(CLIENT), "--secret", SECRET],
            "argument --pull: url must be an http:// or https:// URL with a host",
        ),
        ([*PULL, "--client-id", "nope", "--secret", SECRET], "argument --client-id: not a UUID"),
        ([*PULL, "--client-id", str(CLIENT), "--secret", "whsec_"], "argument --secret: secret"),
        (["listen", "--client-id", str(CLIENT)], "--client-id goes with --pull"),
    ],
)
def test_pull_argument_errors_name_the_problem(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert SECRET not in err


@pytest.fixture
def mailbox() -> Iterator[FakeMailbox]:
    with FakeMailbox(CLIENT, SECRET) as box:
        yield box


def pulling(mailbox: FakeMailbox, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != cli.SECRET_ENV}
    env["NO_COLOR"] = "1"
    env[cli.SECRET_ENV] = SECRET  # kept out of the command line, as the docs advise
    argv = ["listen", "--pull", mailbox.url, "--client-id", str(CLIENT), *extra]
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # a child inherits an ignored SIGINT (a background job)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        return subprocess.Popen(  # noqa: S603 - our own command with fixed arguments
            [sys.executable, "-m", "flnotify", *argv],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


def stopped(process: subprocess.Popen[str], signum: int) -> str:
    """Send ``signum``, wait for the exit; what the process wrote on stderr."""
    process.send_signal(signum)
    try:
        process.wait(timeout=20)  # below the mailbox's 30 s hold: the poll was cut short
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.stderr is not None
    return process.stderr.read()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_listen_pull_prints_each_notification_and_acks_it(
    mailbox: FakeMailbox, signum: int
) -> None:
    ids = [mailbox.post(ROUND), mailbox.post(START)]
    process = pulling(mailbox)
    with process:
        assert process.stdout is not None
        lines = Lines(process.stdout)
        try:
            assert lines.next(30) == f"polling {mailbox.url} as client {CLIENT}"
            first, second = lines.next(30), lines.next(30)
            assert mailbox.acked.wait(30)
            assert mailbox.holding_started.wait(30)  # the next long poll is held
        finally:
            err = stopped(process, signum)
        lines.thread.join(5)
    assert f"UPDATE_ROUND_START training={TRAINING}" in first
    assert f'{{"round":7,"global_model_uuid":"{MODEL}"}}' in first
    assert f"TRAINING_START training={TRAINING}" in second
    assert mailbox.acks == [[Ack(ids[0], 202), Ack(ids[1], 200)]]
    assert process.returncode == 0, err
    assert "flnotify listen: stopped" in err
    assert "Traceback" not in err


def test_listen_pull_json_writes_json_lines_only_on_stdout(mailbox: FakeMailbox) -> None:
    message_id = mailbox.post(ROUND)
    process = pulling(mailbox, "--json")
    with process:
        assert process.stdout is not None
        lines = Lines(process.stdout)
        try:
            document: dict[str, Any] = json.loads(lines.next(30))
            assert mailbox.holding_started.wait(30)
        finally:
            err = stopped(process, signal.SIGINT)
        lines.thread.join(5)
    assert document["id"] == message_id
    assert document["verified"] is True
    assert document["notification_type"] == "UPDATE_ROUND_START"
    assert document["training_uuid"] == str(TRAINING)
    assert lines.queue.empty()  # nothing else on stdout
    assert f"polling {mailbox.url} as client {CLIENT}" in err
    assert process.returncode == 0, err


def test_listen_pull_says_when_its_credentials_are_refused() -> None:
    with FakeMailbox(uuid.uuid4(), SECRET) as mailbox:  # another client's mailbox
        process = pulling(mailbox)
        with process:
            assert process.stderr is not None
            errors = Lines(process.stderr)
            try:
                line = errors.next(30)
                while "refused" not in line:
                    line = errors.next(30)
            finally:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=20)
    assert "refused this client's credentials (401)" in line
    assert "check the client id" in line
    assert process.returncode == 0
