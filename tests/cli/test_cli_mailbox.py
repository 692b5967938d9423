"""``flnotify mailbox serve`` with ``flnotify send ... mailbox:`` and ``flnotify listen --pull``:
argument errors in-process, and the two-terminal demo as three real processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from flnotify import cli, generate_secret
from helpers.processes import Lines, flnotify_process, normal

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
SECRET = generate_secret()
CLIENT = uuid.UUID("0b9d3c64-5d0e-4c11-9a57-2f1d0f3b6d2e")
MODEL = uuid.UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")
ROUND = ["UPDATE_ROUND_START", "--round", "3", "--model-uuid", str(MODEL)]


@pytest.fixture(autouse=True)
def _no_secret_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.SECRET_ENV, raising=False)


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert SECRET not in err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mailbox", "serve", "--db", "m.db"], "no clients: give --client UUID=WHSEC"),
        (
            ["mailbox", "serve", "--db", "m.db", "--client", f"nope={SECRET}"],
            "argument --client: not a UUID: 'nope'",
        ),
        (
            ["mailbox", "serve", "--db", "m.db", "--client", str(CLIENT)],
            "argument --client: expected a client id and its secret",
        ),
        (
            ["mailbox", "serve", "--db", "m.db", "--client", f"{CLIENT}=whsec_AAAA"],
            "argument --client: a secret needs at least 24 random bytes, not 3",
        ),
        (["mailbox", "serve", "--client", f"{CLIENT}={SECRET}"], "one of the arguments --db --url"),
        (["send", *ROUND, "mailbox:", "--receiver-id", str(CLIENT)], "give --mailbox PATH"),
        (
            ["send", *ROUND, "mailbox:", "--mailbox", "m.db"],
            "mailbox: receivers need --receiver-id",
        ),
        (
            ["send", *ROUND, "http://127.0.0.1:9/", "--mailbox", "m.db"],
            "--mailbox goes with mailbox: receivers",
        ),
        (
            ["send", *ROUND, "http://127.0.0.1:9/", "--ack-deadline", "5"],
            "--ack-deadline goes with --mailbox",
        ),
    ],
)
def test_mailbox_argument_errors_name_the_problem(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert message in _usage_error(capsys, argv)
    assert not (tmp_path / "m.db").exists()  # refused before anything was opened


def test_clients_file_errors_name_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    clients = tmp_path / "clients"
    clients.write_text(f"# the FL clients\n{CLIENT} {SECRET}\n\nnot-a-uuid {SECRET}\n")
    argv = ["mailbox", "serve", "--db", str(tmp_path / "m.db"), "--clients-file", str(clients)]
    assert f"{clients}, line 4: not a UUID: 'not-a-uuid'" in _usage_error(capsys, argv)
    missing = ["mailbox", "serve", "--db", "m.db", "--clients-file", str(tmp_path / "none")]
    assert "argument --clients-file: cannot read" in _usage_error(capsys, missing)


def _page_send() -> tuple[list[str], list[str]]:
    """The page's ``flnotify send ... mailbox:`` command and the lines it shows after it."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = next(
        i for i, x in enumerate(lines) if x.startswith("$ flnotify send") and "mailbox:" in x
    )
    command, index = lines[start][2:], start
    while command.endswith("\\"):
        index += 1
        command = command[:-1] + lines[index].strip()
    end = lines.index("```", index)
    return shlex.split(command), lines[index + 1 : end]


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.stderr is not None
    return process.stderr.read()


def test_send_to_a_polling_client_through_mailbox_serve(tmp_path: Path) -> None:
    """The two-terminal demo of docs/cli.md: serve + listen --pull, then send mailbox:."""
    db = str(tmp_path / "mailbox.db")  # the page's send names it relative to tmp_path
    clients = tmp_path / "clients"
    clients.write_text(f"{CLIENT} {SECRET}  # the one FL client\n")
    server = flnotify_process(
        *["mailbox", "serve", "--db", db, "--port", "0", "--clients-file", str(clients)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with server, contextlib.ExitStack() as stack:
        assert server.stdout is not None
        served = Lines(server.stdout)
        listener: subprocess.Popen[str] | None = None
        try:
            first = served.next(30)
            assert first.startswith("serving the mailbox at http://127.0.0.1:")
            assert first.endswith("/mailbox for 1 client(s)")
            url = first.removeprefix("serving the mailbox at ").split()[0]
            listener = flnotify_process(
                *["listen", "--pull", url, "--client-id", str(CLIENT), "--secret", SECRET],
                "--json",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            stack.enter_context(listener)  # its pipes closed on the way out
            assert listener.stdout is not None
            heard = Lines(listener.stdout)
            command, shown = _page_send()
            sender = flnotify_process(
                *command[1:], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            out, err = sender.communicate(timeout=90)
            assert sender.returncode == 0, out + err
            assert [normal(x) for x in out.splitlines()] == [normal(x) for x in shown]
            document = json.loads(heard.next(30))
        finally:
            listen_err = _stop(listener) if listener is not None else ""
            serve_err = _stop(server)
        served.thread.join(5)
    assert document["notification_type"] == "UPDATE_ROUND_START"
    assert f"training {document['training_uuid']} (new" in out
    assert document["body"] == {"round": 3, "global_model_uuid": str(MODEL)}
    assert document["verified"] is True
    assert server.returncode == 0, serve_err
    assert "flnotify mailbox serve: stopped" in serve_err
    assert "Traceback" not in serve_err + listen_err, serve_err + listen_err
    assert listener is not None
    assert listener.returncode == 0, listen_err
