"""Outcome tracking and endpoint health can be pruned: neither grows for ever."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flnotify import Outcome
from flnotify._outbox_cli import add_arguments, run
from flnotify.health import InMemoryHealthStore, SQLiteHealthStore
from flnotify.repository import (
    InMemoryTrainingRepository,
    OutcomePruning,
    SQLiteTrainingRepository,
)

TRAINING = UUID(int=7)
START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def repository(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    clock = Clock()
    if request.param == "memory":
        yield InMemoryTrainingRepository(clock=clock)
    else:
        with SQLiteTrainingRepository(tmp_path / "repo.db", clock=clock) as repo:
            yield repo


def _send(repo: Any, send: str, clients: int, outcome: Outcome = Outcome.DELIVERED) -> None:
    for i in range(clients):
        repo.record_outcome(TRAINING, send, clients, UUID(int=i + 1), outcome)
    assert repo.claim_verdict(send)


def test_twenty_sends_to_a_hundred_clients_can_be_forgotten(repository: Any) -> None:
    """The issue's count: 2,000 outcome rows and 20 verdicts; pruning leaves none."""
    pruning: OutcomePruning = repository  # the extension both bundled repositories have
    assert isinstance(pruning, OutcomePruning)
    clock = repository.clock
    for n in range(20):
        _send(repository, f"s{n}", 100)
        clock.now += 60
    assert repository.prune_outcomes(START) == 0  # nothing is older than the first send
    assert repository.prune_outcomes(START + 10 * 60) == 10  # the first ten sends
    # a pruned send counts afresh; a kept one still knows its outcomes and its verdict
    assert (
        repository.record_outcome(TRAINING, "s0", 100, UUID(int=1), Outcome.FAILED).tally.failed
        == 1
    )
    kept = repository.record_outcome(TRAINING, "s19", 100, UUID(int=1), Outcome.FAILED)
    assert (kept.tally.delivered, kept.tally.failed) == (100, 0)
    assert not repository.claim_verdict("s19")
    assert repository.claim_verdict("s3")  # its verdict went with it
    assert repository.prune_outcomes(clock.now + 1) == 11  # s0 again, and s10 to s19


def test_a_send_still_collecting_outcomes_is_kept(repository: Any) -> None:
    clock = repository.clock
    repository.record_outcome(TRAINING, "slow", 2, UUID(int=1), Outcome.DELIVERED)
    clock.now += 3600
    repository.record_outcome(TRAINING, "slow", 2, UUID(int=2), Outcome.FAILED)
    assert repository.prune_outcomes(START + 60) == 0  # its last outcome is recent


def test_consecutive_failures_survive_pruning(repository: Any) -> None:
    clock = repository.clock
    _send(repository, "a", 1, Outcome.FAILED)
    clock.now += 60
    _send(repository, "b", 1, Outcome.FAILED)
    clock.now += 60
    assert repository.prune_outcomes(clock.now) == 2
    record = repository.record_outcome(TRAINING, "c", 1, UUID(int=1), Outcome.FAILED)
    assert record.consecutive_failures == 3


def test_prune_outcomes_refuses_what_is_no_time(repository: Any) -> None:
    from flnotify.errors import ConfigurationError

    for bad in ("yesterday", None, True):
        with pytest.raises(ConfigurationError, match="before must be epoch seconds"):
            repository.prune_outcomes(bad)


def test_a_version_2_file_gains_the_times_and_is_pruned(tmp_path: Path) -> None:
    """A file written before pruning existed: its rows count as recorded at 0."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE send_outcomes (send_id TEXT NOT NULL, receiver_id TEXT NOT NULL,
                training_id TEXT NOT NULL, total INTEGER NOT NULL, outcome TEXT NOT NULL,
                PRIMARY KEY (send_id, receiver_id));
            CREATE TABLE send_verdicts (send_id TEXT PRIMARY KEY);
            INSERT INTO send_outcomes VALUES ('old', 'r', 't', 1, 'delivered');
            INSERT INTO send_verdicts VALUES ('old');
            PRAGMA user_version = 2;
            """
        )
    with SQLiteTrainingRepository(path, clock=Clock()) as repo:
        assert repo.prune_outcomes(START) == 1
        assert repo.claim_verdict("old")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)


@pytest.fixture(params=["memory", "sqlite"])
def health(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemoryHealthStore()
    else:
        with SQLiteHealthStore(tmp_path / "health.db") as store:
            yield store


def test_endpoints_not_heard_of_are_forgotten(health: Any) -> None:
    for n in range(3):  # gone: two failures long ago, below the threshold
        health.record(f"http://gone{n}.test", False, START, 5, 60)
    health.record("http://open.test", False, START, 1, 3600)  # open until START + 3600
    health.record("http://recent.test", False, START + 500, 5, 60)
    assert health.prune(START + 100) == 3
    assert health.get("http://open.test").open_until == START + 3600  # still open: kept
    assert health.get("http://recent.test").failures == 1
    assert health.prune(START + 3601) == 2
    assert health.get("http://open.test").failures == 0


def test_an_old_health_file_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "health.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE flnotify_endpoint_health (endpoint TEXT PRIMARY KEY,"
            " failures INTEGER NOT NULL, open_until REAL NOT NULL, probe_until REAL NOT NULL)"
        )
        db.execute("INSERT INTO flnotify_endpoint_health VALUES ('http://x.test', 2, 0, 0)")
    with SQLiteHealthStore(path) as store:
        assert store.get("http://x.test").failures == 2
        assert store.prune(START) == 1


# -- the command ----------------------------------------------------------------------------


def command(*argv: str, clock: float) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="flnotify outbox")
    add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        args = parser.parse_args(argv)
    code = run(args, out=out, err=err, clock=lambda: clock)
    return code, out.getvalue(), err.getvalue()


def test_prune_tracking_prunes_the_repository_and_health_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    with SQLiteTrainingRepository(path, clock=Clock()) as repo:
        _send(repo, "s", 3)
    with SQLiteHealthStore(path) as store:
        store.record("http://gone.test", False, START, 5, 60)
    db = ["--db", str(path)]
    assert command("prune-tracking", "--older-than", "1d", *db, "--json", clock=START + 60) == (
        0,
        json.dumps({"sends": 0, "endpoints": 0}, indent=2) + "\n",
        "",
    )
    code, out, _ = command("prune-tracking", "--older-than", "1d", *db, clock=START + 86401)
    assert (code, out) == (0, "1 sends forgotten\n1 endpoints forgotten\n")


def test_prune_tracking_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    code, _, err = command(
        "prune-tracking", "--older-than", "1d", "--db", str(missing), clock=START
    )
    assert code == 2
    assert "no such file" in err
    assert not missing.exists()
    empty = tmp_path / "other.db"
    with sqlite3.connect(empty) as db:
        db.execute("CREATE TABLE app (x)")
    code, _, err = command("prune-tracking", "--older-than", "1d", "--db", str(empty), clock=START)
    assert code == 2
    assert "holds no outcome tracking" in err
    with sqlite3.connect(empty) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("app",)]


def test_prune_tracking_refuses_a_url() -> None:
    code, _, err = command(
        "prune-tracking", "--older-than", "1d", "--url", "postgresql://db/x", clock=START
    )
    assert code == 2
    assert "give --db PATH" in err
