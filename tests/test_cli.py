"""The ``flnotify`` command line: argument errors, ``send`` in-process, ``listen`` + ``send``
as real processes talking over loopback."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import IO, Any

import pytest

import flnotify
from flnotify import cli
from flnotify._demo import make_wsgi_server
from flnotify.receiving import NotificationRouter, Reply
from flnotify.signing import generate_secret

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
            send_args(kind="CLIENT_REMOVED", url="http://127.0.0.1:9/"),
            "CLIENT_REMOVED needs --client-uuid",
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
    out = capsys.readouterr().out
    assert f'UPDATE_ROUND_START {{"round":3,"global_model_uuid":"{MODEL}"}} (signed)' in out
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
    report = json.loads(capsys.readouterr().out)
    assert report["notification_type"] == "TRAINING_START"
    assert report["body"] == {"global_model_uuid": MODEL}
    assert report["training_uuid"] == TRAINING
    assert report["ok"] is False
    assert report["counts"] == {"delivered": 1, "rejected": 0, "failed": 1}
    ok, failed = report["deliveries"]
    assert (ok["outcome"], ok["status_code"], ok["endpoint"]) == ("delivered", 200, client.url)
    assert (failed["outcome"], failed["attempts"], failed["status_code"]) == ("failed", 1, None)
    assert failed["error"] == "connection refused"


def test_send_unsigned_is_rejected_by_a_verifying_client(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(send_args("--round", "1", url=client.url)) == 1
    out = capsys.readouterr().out
    assert "(unsigned)" in out
    assert "rejected  401" in out
    assert "verification_failed" in out  # the start of the client's answer
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


# --------------------------------------------------------------------------- real processes


class Lines:
    """Reads a process's output lines in a thread, so tests can wait with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))

    def next(self, timeout: float = 10.0) -> str:
        return self.queue.get(timeout=timeout)


def flnotify_process(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != cli.SECRET_ENV}
    env["NO_COLOR"] = "1"
    previous = signal.getsignal(signal.SIGINT)
    # a child inherits an ignored SIGINT (e.g. pytest started as a background job)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        return subprocess.Popen(  # noqa: S603 - our own command with fixed arguments
            [sys.executable, "-m", "flnotify", *args], env=env, text=True, **kwargs
        )
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


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
            assert "rejected  404" in out
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
