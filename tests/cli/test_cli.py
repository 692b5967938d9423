"""The ``flnotify`` command line: argument errors, ``send`` in-process, ``listen`` + ``send``
as real processes talking over loopback."""

from __future__ import annotations

import base64
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
import standardwebhooks

import flnotify
import flnotify.signing
from flnotify import cli, generate_secret
from flnotify.cli import _output
from flnotify.receiving import NotificationRouter, Reply, make_wsgi_server
from helpers.processes import Lines, flnotify_process

TRAINING = "5b1dabcd-ef01-4a23-8b45-6789abcdef01"
MODEL = "8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6"
SECRET = generate_secret()


def send_args(*extra: str, kind: str = "UPDATE_ROUND_START", url: str = "") -> list[str]:
    urls = [url] if url else []
    return ["send", kind, *urls, "--training-uuid", TRAINING, "--model-uuid", MODEL, *extra]


class Client:
    """A loopback FL client built with flnotify's receiving side, serving in a thread."""

    def __init__(self, secret: str | None, status: int | None = None) -> None:
        self.received: list[flnotify.Notification[Any]] = []
        router = NotificationRouter(secrets=secret)

        def handle(notification: flnotify.Notification[Any]) -> Reply | None:
            self.received.append(notification)
            return None if status is None else Reply(status)

        for kind in flnotify.NotificationType:
            router.add_handler(kind, handle)
        self.server = make_wsgi_server("127.0.0.1", 0, router.wsgi_app())
        self.url = f"http://127.0.0.1:{self.server.server_port}/fl/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))

    def __enter__(self) -> Client:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(SECRET) as running:
        yield running


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["send", "UPDATE_ROUND_START", "http://127.0.0.1:9/", "--training-uuid", "nope"],
            "argument --training-uuid: not a UUID: 'nope'",
        ),
        (
            send_args("--round", "1", kind="ROUND_START", url="http://127.0.0.1:9/"),
            "argument TYPE: unknown notification type 'ROUND_START' (choose from TRAINING_START",
        ),
        (
            send_args("--round", "1", url="ftp://127.0.0.1/x"),
            "bad receiver URL 'ftp://127.0.0.1/x': scheme 'ftp' is not allowed",
        ),
        (
            send_args("--round", "1", url="127.0.0.1:8080"),
            "bad receiver URL '127.0.0.1:8080': not an absolute URL",
        ),
        (send_args(url="http://127.0.0.1:9/"), "UPDATE_ROUND_START needs --round"),
        (send_args(kind="model_test_round", url="http://127.0.0.1:9/"), "MODEL_TEST_ROUND needs"),
        (
            send_args("--round", "2", kind="TRAINING_START", url="http://127.0.0.1:9/"),
            "--round does not apply to TRAINING_START",
        ),
        (
            send_args("--round", "-1", url="http://127.0.0.1:9/"),
            "argument --round: must be >= 0, not -1",
        ),
        (
            ["send", "TRAINING_START", "http://127.0.0.1:9/", "--training-uuid", TRAINING],
            "TRAINING_START needs --model-uuid",
        ),
        (
            ["send", "CLIENT_REMOVED", "http://127.0.0.1:9/"],
            "CLIENT_REMOVED needs --client-uuid",
        ),
        (
            [*send_args(kind="CLIENT_REMOVED", url="http://127.0.0.1:9/"), "--client-uuid", MODEL],
            "--model-uuid does not apply to CLIENT_REMOVED (only to TRAINING_START,",
        ),
        (
            ["send", "CLIENT_REMOVED", "http://x/", "--client-uuid", MODEL, "--round", "1"],
            "--round does not apply to CLIENT_REMOVED (only to UPDATE_ROUND_START,",
        ),
        (
            send_args("--round", "1", "--client-uuid", MODEL, url="http://127.0.0.1:9/"),
            "--client-uuid does not apply to UPDATE_ROUND_START (only to CLIENT_REMOVED)",
        ),
        (
            send_args("--reason", "gone", kind="TRAINING_FINISHED", url="http://127.0.0.1:9/"),
            "--reason does not apply to TRAINING_FINISHED (only to CLIENT_REMOVED)",
        ),
        (
            send_args("--round", "1", "--quiet", "--json", url="http://127.0.0.1:9/"),
            "argument --json: not allowed with argument -q/--quiet",
        ),
        (
            ["secret", "--bytes", "16"],
            "argument --bytes: a secret needs at least 24 random bytes, not 16",
        ),
        (["secret", "--bytes", "65"], "argument --bytes: must be from 1 to 64, not 65"),
        (
            send_args("--round", "1", "--secret", "whsec_AAAA", url="http://127.0.0.1:9/"),
            "argument --secret: a secret needs at least 24 random bytes, not 3",
        ),
        (
            ["listen", "--secret", "whsec_AAAA"],
            "argument --secret: a secret needs at least 24 random bytes, not 3",
        ),
        (
            [
                "send",
                "UPDATE_ROUND_START",
                "http://127.0.0.1:9/",
                "http://127.0.0.1:10/",
                *send_args("--receiver-id", MODEL, "--round", "1")[2:],
            ],
            "1 --receiver-id for 2 URL(s)",
        ),
        (
            send_args("--round", "1", "--secret", "whsec_not base64!", url="http://127.0.0.1:9/"),
            "argument --secret: secret is not valid base64",
        ),
        (send_args("--round", "1", "--attempts", "0", url="http://x/"), "argument --attempts"),
        (send_args("--round", "1", "--timeout", "0", url="http://x/"), "argument --timeout"),
        (["send", "TRAINING_START", "--training-uuid", TRAINING], "required: URL"),
        (["listen", "--port", "70000"], "argument --port: must be from 0 to 65535"),
        (["listen", "--secret", "whsec_"], "argument --secret: secret is empty"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_argument_errors_name_the_problem(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert "whsec_not" not in err  # a secret is never echoed


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"flnotify {flnotify.__version__}"


# --------------------------------------------------------------------------- send in-process


def test_send_delivers_and_prints_a_table(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver = str(uuid.uuid4())
    argv = send_args("--round", "3", "--secret", SECRET, "--receiver-id", receiver, url=client.url)
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""  # not a terminal: no progress line
    assert f'UPDATE_ROUND_START {{"round":3,"global_model_uuid":"{MODEL}"}} (signed)' in out
    assert f"training {TRAINING}\n" in out
    assert f"{receiver}  {client.url}  delivered  202     1" in out
    assert "1 delivered, 0 rejected, 0 failed" in out
    (received,) = client.received
    assert isinstance(received, flnotify.TrainingRoundStartNotification)
    assert received.body == flnotify.RoundBody(round=3, global_model_uuid=uuid.UUID(MODEL))
    assert str(received.training_uuid) == TRAINING


def test_send_json_report_and_exit_status(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = "http://127.0.0.1:9/nobody"  # the discard port: nothing listens on loopback
    argv = send_args("--secret", SECRET, "--attempts", "1", "--json", kind="training_start")
    assert cli.main([*argv[:2], client.url, closed, *argv[2:]]) == 1
    out, err = capsys.readouterr()
    assert err == ""  # not a terminal: no progress, nothing on stderr
    report = json.loads(out)
    assert report["notification_type"] == "TRAINING_START"
    assert report["body"] == {"global_model_uuid": MODEL}
    assert report["training_uuid"] == TRAINING
    assert report["ok"] is False
    assert report["counts"] == {"delivered": 1, "rejected": 0, "failed": 1}
    ok, failed = report["deliveries"]
    assert (ok["outcome"], ok["status_code"], ok["endpoint"]) == ("delivered", 200, client.url)
    assert (failed["outcome"], failed["attempts"], failed["status_code"]) == ("failed", 1, None)
    assert failed["error_kind"] == "connect"
    assert failed["error"] == "connection refused"
    assert failed["error"]  # the error's own words, whatever they are
    assert "1 delivered, 0 rejected, 1 failed in " in report["summary"]
    assert report["training_uuid_generated"] is False


def test_send_unsigned_is_rejected_by_a_verifying_client(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(send_args("--round", "1", url=client.url)) == 1
    out = capsys.readouterr().out
    assert "(unsigned)" in out
    assert re.search(r"\bfailed +401\b", out)  # the server's mistake: no client removed for it
    assert "check the signing secret" in out
    assert client.received == []


def test_send_client_removed(capsys: pytest.CaptureFixture[str]) -> None:
    removed = str(uuid.uuid4())
    with Client(None) as unsigned:
        argv = [
            "send",
            "CLIENT_REMOVED",
            unsigned.url,
            "--training-uuid",
            TRAINING,
            "--client-uuid",
            removed,
            "--reason",
            "left the project",
        ]
        assert cli.main(argv) == 0
    (received,) = unsigned.received
    assert received.body == flnotify.ClientRemovedBody(uuid.UUID(removed), "left the project")
    assert "delivered  200" in capsys.readouterr().out


def test_send_rejected_round_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with Client(SECRET, status=409) as rejecting:
        assert cli.main(send_args("--round", "1", "--secret", SECRET, url=rejecting.url)) == 1
    assert "rejected  409" in capsys.readouterr().out


def test_send_makes_up_a_training_uuid_and_says_which(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["send", "TRAINING_START", client.url, "--model-uuid", MODEL, "--secret", SECRET]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    (received,) = client.received
    assert isinstance(received, flnotify.TrainingStartNotification)
    assert f"training {received.training_uuid} (new; give --training-uuid to choose)" in out


def test_send_quiet_prints_one_summary_line(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = send_args("--round", "1", "--secret", SECRET, "--quiet", url=client.url)
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    assert "1 delivered, 0 rejected, 0 failed in " in line
    assert line.endswith(f"; training {TRAINING}")
    assert err == ""


def test_send_json_says_when_the_training_uuid_was_made_up(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["send", "UPDATE_ROUND_START", client.url, "--round", "0", "--model-uuid", MODEL]
    assert cli.main([*argv, "--secret", SECRET, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["training_uuid_generated"] is True
    (received,) = client.received
    assert isinstance(received, flnotify.TrainingRoundStartNotification)
    assert report["training_uuid"] == str(received.training_uuid)


def test_secret_prints_a_new_standard_webhooks_secret(capsys: pytest.CaptureFixture[str]) -> None:
    secrets = []
    for argv in (["secret"], ["secret"], ["secret", "--bytes", "64"]):
        assert cli.main(argv) == 0
        out, err = capsys.readouterr()
        assert err == ""
        (secret,) = out.splitlines()
        secrets.append(secret)
    assert len(set(secrets)) == 3
    assert all(s.startswith("whsec_") for s in secrets)
    assert len(base64.b64decode(secrets[0].removeprefix("whsec_"), validate=True)) == 32
    assert len(base64.b64decode(secrets[2].removeprefix("whsec_"), validate=True)) == 64
    # it signs, and the reference implementation verifies what it signed
    signed = flnotify.signing.sign_payload(b'{"x":1}', secrets[0], msg_id="msg_1")
    standardwebhooks.Webhook(secrets[0]).verify(b'{"x":1}', signed)


def test_send_progress_line_counts_outcomes_and_rate() -> None:
    """The progress display itself, with a fake clock: what the line says, and its erasure."""
    now = [100.0]
    screen = io.StringIO()
    progress = _output.SendProgress(screen, "sending", 4, clock=lambda: now[0], interval=3600)
    with progress:
        assert progress.line() == "sending: 0/4 done (0 delivered, 0 rejected, 0 failed), -/s, 0 ms"
        now[0] = 102.0
        for outcome in (flnotify.Outcome.DELIVERED, flnotify.Outcome.FAILED):
            progress.on_outcome(cast(Any, SimpleNamespace(outcome=outcome)))
        assert progress.line() == (
            "sending: 2/4 done (1 delivered, 0 rejected, 1 failed), 1/s, 2.00 s"
        )
    drawn = screen.getvalue()
    assert drawn.count("\r") >= 4  # first draw, one per outcome, and the erasure
    assert drawn.endswith("\r")  # the cursor is back at the start of an empty line
    assert _output.outcome_counts({"delivered": 2, "failed": 1}) == (
        "2 delivered, 0 rejected, 1 failed"
    )


# --------------------------------------------------------------------------- real processes


def test_listen_and_send_as_processes() -> None:
    listener = flnotify_process(
        "listen",
        "--port",
        "0",
        "--secret",
        SECRET,
        "--path",
        "/flclient",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with listener:
        assert listener.stdout is not None
        assert listener.stderr is not None
        try:
            lines = Lines(listener.stdout)
            first = lines.next()
            assert first.startswith("listening on http://127.0.0.1:")
            url = first.removeprefix("listening on ")
            assert url.endswith("/flclient")

            sender = flnotify_process(
                *send_args("--round", "7", "--secret", SECRET, url=url),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = sender.communicate(timeout=30)
            assert sender.returncode == 0, out + err
            assert "1 delivered, 0 rejected, 0 failed" in out

            line = lines.next()
            assert f"UPDATE_ROUND_START training={TRAINING}" in line
            assert f'{{"round":7,"global_model_uuid":"{MODEL}"}}' in line

            wrong_path = url.removesuffix("/flclient") + "/elsewhere"
            other = flnotify_process(
                *send_args("--round", "7", "--secret", SECRET, url=wrong_path),
                stdout=subprocess.PIPE,
            )
            out, _ = other.communicate(timeout=30)
            assert other.returncode == 1
            assert re.search(r"\bfailed +404\b", out)  # a wrong endpoint: no client's no
        finally:
            listener.send_signal(signal.SIGINT)
            try:
                listener.wait(timeout=10)
            except subprocess.TimeoutExpired:
                listener.kill()
                raise
        err = listener.stderr.read()
        lines.thread.join(timeout=5)
    assert listener.returncode == 0, err
    assert "flnotify listen: stopped" in err
    assert "Traceback" not in err


def _read_until(fd: int, pattern: re.Pattern[bytes], timeout: float = 60.0) -> bytes:
    """What a pseudo-terminal shows until ``pattern`` appears (or the other side closes)."""
    deadline = time.monotonic() + timeout
    seen = b""
    while pattern.search(seen) is None:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {pattern.pattern!r} within {timeout} s; got {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert pattern.search(seen), f"closed before {pattern.pattern!r}; got {seen!r}"
    return seen


def test_send_shows_live_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a pseudo-terminal: a progress line per outcome on stderr, then the report."""
    monkeypatch.setenv("COLUMNS", "200")  # the progress line is cut to the terminal's width
    with Client(SECRET) as running:
        urls = [running.url, running.url, running.url, "http://127.0.0.1:9/nobody"]
        controller, terminal = pty.openpty()
        try:
            argv = send_args("--round", "4", "--secret", SECRET, "--attempts", "1")
            sender = flnotify_process(
                *argv[:2],
                *urls,
                *argv[2:],
                stdin=terminal,
                stdout=terminal,
                stderr=terminal,
            )
        finally:
            os.close(terminal)
        try:
            with sender:
                summary = re.compile(rb"3 delivered, 0 rejected, 1 failed in [^\r\n]+\r?\n")
                shown = _read_until(controller, summary)
                assert sender.wait(timeout=30) == 1
        finally:
            os.close(controller)
    text = shown.decode()
    assert "\rsending: 0/4 done (0 delivered, 0 rejected, 0 failed), -/s, " in text
    assert "\rsending: 4/4 done (3 delivered, 0 rejected, 1 failed), " in text
    progress_at = text.index("sending: 4/4 done")
    table_at = text.index("receiver  ")
    summary_at = text.index("3 delivered, 0 rejected, 1 failed in")
    assert progress_at < table_at < summary_at  # the line is erased before the report
    assert f"training {TRAINING}" in text
    assert len(running.received) == 3


def test_listen_json_writes_json_lines_only_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    listener = flnotify_process(
        "listen",
        "--port",
        "0",
        "--secret",
        SECRET,
        "--json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with listener:
        assert listener.stdout is not None
        assert listener.stderr is not None
        try:
            errors = Lines(listener.stderr)
            started = errors.next()
            assert started.startswith("listening on http://127.0.0.1:")
            url = started.removeprefix("listening on ")
            assert cli.main(send_args("--round", "2", "--secret", SECRET, url=url)) == 0
            assert cli.main(send_args("--secret", SECRET, kind="TRAINING_START", url=url)) == 0
        finally:
            listener.send_signal(signal.SIGINT)
            try:
                listener.wait(timeout=10)
            except subprocess.TimeoutExpired:
                listener.kill()
                raise
        out = listener.stdout.read()
        errors.thread.join(timeout=5)
    assert listener.returncode == 0
    documents = [json.loads(line) for line in out.splitlines()]  # every line is JSON
    assert [d["notification_type"] for d in documents] == ["UPDATE_ROUND_START", "TRAINING_START"]
    assert documents[0]["body"] == {"round": 2, "global_model_uuid": MODEL}
    assert all(d["verified"] is True and d["training_uuid"] == TRAINING for d in documents)
    assert "flnotify listen: stopped" in "\n".join(_drain(errors))
    capsys.readouterr()


def _drain(lines: Lines) -> list[str]:
    found = []
    while not lines.queue.empty():
        found.append(lines.queue.get_nowait())
    return found
