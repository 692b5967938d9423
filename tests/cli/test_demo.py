"""``flnotify demo``: a whole training against real, signed clients on loopback."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

import flnotify
from flnotify import cli

TYPES = ["TRAINING_START", "UPDATE_ROUND_START", "MODEL_TEST_ROUND", "TRAINING_FINISHED"]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert cli.main(["demo", "--json", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    summary: dict[str, Any] = json.loads(out)  # nothing but the JSON on stdout
    return summary


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "elapsed"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_demo_runs_a_whole_training(capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_json(capsys, "--clients", "6", "--rounds", "2", "--seed", "1")
    steps = summary["steps"]
    assert [s["notification_type"] for s in steps] == [
        "TRAINING_START",
        "UPDATE_ROUND_START",
        "UPDATE_ROUND_START",
        "MODEL_TEST_ROUND",
        "TRAINING_FINISHED",
    ]
    assert [s["round"] for s in steps] == [None, 1, 2, 2, None]
    for step in steps:
        assert (step["receivers"], step["delivered"], step["rejected"], step["failed"]) == (
            6,
            6,
            0,
            0,
        )
        assert step["removed"] == []
    # each row shows the state after its step: TRAINING_FINISHED completes the training
    assert [step["state"] for step in steps] == ["ONGOING"] * (len(steps) - 1) + ["COMPLETED"]
    assert summary["totals"] == {"delivered": 30, "rejected": 0, "failed": 0}
    assert summary["verified_by_clients"] == 30  # every client checked every signature
    final = summary["final"]
    assert final["state"] == "COMPLETED"
    assert final["round"] == 2
    assert final["participants"] == [c["id"] for c in summary["clients"]]
    assert all(c["fault"] is None for c in summary["clients"])


def test_demo_strict_with_faults_removes_rejecters_and_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = run_json(
        capsys, "--clients", "12", "--rounds", "3", "--faults", "--seed", "5", "--strict"
    )
    assert summary["strict"] is True
    clients = summary["clients"]
    unreachable = [c["id"] for c in clients if c["fault"] == "unreachable"]
    rejecting = {
        c["id"]: int(c["fault"].removeprefix("rejects round "))
        for c in clients
        if c["fault"] not in (None, "unreachable")
    }
    assert len(unreachable) == 1
    assert len(rejecting) == 1  # a tenth of the clients, at least one
    assert clients[0]["fault"] is None  # the actor is never faulty

    steps = summary["steps"]
    # the unreachable client fails every send; the training is in ERROR from round 1 on
    assert all(s["failed"] == 1 for s in steps)
    assert steps[0]["state"] == "ONGOING"  # TRAINING_START has no default callbacks
    assert all(s["state"] == "ERROR" for s in steps[1:])
    # each rejecting client said no once, to its round, and was removed by the callbacks
    removed = {rid: s["round"] for s in steps for rid in s["removed"]}
    assert removed == rejecting
    assert sum(s["rejected"] for s in steps) == len(rejecting)

    final = summary["final"]
    assert final["state"] == "ERROR"
    assert set(final["participants"]) == {c["id"] for c in clients} - set(rejecting)
    assert unreachable[0] in final["participants"]  # failing does not remove
    assert all(not s["skipped"] for s in steps)  # no breaker under the strict rule


def test_demo_with_faults_is_tolerant_skips_the_dead_client_and_completes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = run_json(capsys, "--clients", "12", "--rounds", "3", "--faults", "--seed", "5")
    assert summary["strict"] is False
    clients = summary["clients"]
    (dead,) = [c["id"] for c in clients if c["fault"] == "unreachable"]
    steps = summary["steps"]
    # TRAINING_START: three failed attempts open its circuit; the next two rounds skip it
    assert steps[0]["failed"] == 1
    assert dead not in steps[0]["skipped"]
    assert [dead in s["skipped"] for s in steps[1:3]] == [True, True]
    # two failed round notifications in a row: removed at the second, the training goes on
    assert dead in steps[2]["removed"]
    assert all(s["state"] == "ONGOING" for s in steps[:-1])
    assert steps[-1]["state"] == "COMPLETED"  # the row of TRAINING_FINISHED, as the final line
    assert all("the training goes on" in s["decision"] for s in steps[1:5])
    assert steps[0]["decision"] == ""  # TRAINING_START has no default callbacks
    final = summary["final"]
    assert final["state"] == "COMPLETED"
    assert dead not in final["participants"]


def test_demo_seed_repeats_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--clients", "5", "--rounds", "1", "--faults", "--seed", "42")
    first = run_json(capsys, *args)
    second = run_json(capsys, *args)
    assert without_timings(first) == without_timings(second)
    other = run_json(capsys, "--clients", "5", "--rounds", "1", "--faults", "--seed", "43")
    assert other["training_id"] != first["training_id"]


def test_demo_keeps_its_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "fl.db"
    summary = run_json(capsys, "--clients", "3", "--rounds", "1", "--db", str(db))
    assert summary["db"] == str(db)
    with flnotify.SQLiteTrainingRepository(db) as repo:
        (training,) = repo.list_trainings()
    assert str(training.id) == summary["training_id"]
    assert training.state is flnotify.TrainingState.COMPLETED


def test_demo_plain_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--clients", "4", "--rounds", "1", "--faults", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out  # not a terminal: no colour, no cursor movement
    assert "[1/4] TRAINING_START: 3 delivered, 0 rejected, 1 failed" in out
    assert re.search(r"^#\s+notification\s+round\s+to\s+delivered", out, re.MULTILINE)
    assert ": COMPLETED, round 1" in out
    assert "skipped it at no cost (0 attempts, no timeout)" in out
    assert "decisions of the failure policy:" in out
    assert "rejects round 1" in out
    assert "unreachable" in out
    assert "(--seed 3 repeats this run)" in out


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("with_rich", [True, False])
def test_demo_live_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch, with_rich: bool) -> None:
    if with_rich:
        pytest.importorskip("rich")
    else:
        monkeypatch.setattr("flnotify.cli._demo.rich_module", lambda module: None)
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stdout", terminal)
    assert cli.main(["demo", "--clients", "3", "--rounds", "1", "--seed", "9"]) == 0
    out = terminal.getvalue()
    assert "\x1b[" in out  # colour on a terminal
    assert "COMPLETED" in out
    if not with_rich:
        assert "\r[2/4] UPDATE_ROUND_START round 1" in out  # redrawn in place
        assert "[####################] 3/3" in out


def test_demo_honours_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flnotify.cli._demo.rich_module", lambda module: None)
    monkeypatch.setenv("NO_COLOR", "1")
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stdout", terminal)
    assert cli.main(["demo", "--clients", "3", "--rounds", "1", "--seed", "9"]) == 0
    assert "\x1b" not in terminal.getvalue()


def test_demo_verbose_shows_the_callback_log(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--clients", "3", "--rounds", "1", "--faults", "--seed", "2", "-v"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "flnotify log:" in out
    assert "set_error" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clients", "0"], "argument --clients: must be from 1 to 500, not 0"),
        (["--rounds", "x"], "argument --rounds: not an integer: 'x'"),
        (["--faults", "--clients", "2"], "--faults needs at least 3 clients"),
        (["--db", "."], "argument --db: cannot open SQLite database '.'"),
        (["--clients", "4", "--pull", "4"], "argument --pull: at most 3 of 4 clients can poll"),
        (
            ["--clients", "4", "--faults", "--pull", "3"],
            "argument --pull: at most 2 of 4 clients can poll",
        ),
    ],
)
def test_demo_argument_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["demo", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_with_polling_clients_reaches_them_through_the_mailbox(
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = run_json(capsys, "--clients", "6", "--rounds", "2", "--pull", "3", "--seed", "2")
    clients = summary["clients"]
    polling = [c for c in clients if c["polling"]]
    assert summary["pull"] == 3
    assert len(polling) == 3
    assert not clients[0]["polling"]  # the actor is pushed to
    for step in summary["steps"]:  # one send reaches pushed and polling clients alike
        assert (step["receivers"], step["delivered"], step["failed"]) == (6, 6, 0)
    assert summary["verified_by_clients"] == 30  # the polling ones verified theirs too
    assert summary["final"]["state"] == "COMPLETED"
    assert summary["final"]["participants"] == [c["id"] for c in clients]


def test_demo_pull_with_faults_judges_polling_clients_like_the_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["demo", "--clients", "8", "--pull", "3", "--faults", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "3 polling a mailbox (behind NAT)" in out
    assert "polling the mailbox, no socket of their own (3): " in out
    assert "COMPLETED" in out
