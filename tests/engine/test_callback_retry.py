"""Callbacks that fail on a busy repository are tried again, with a bound, before reported.

The repository declares which of its errors are transient by raising
``RepositoryBusyError``; the bundled SQLite repository does for a database locked by
another connection. Time is fake throughout: the engine's sleeper moves the clock.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import flnotify
from flnotify import (
    InMemoryTrainingRepository,
    Outcome,
    Receiver,
    RetryPolicy,
    SQLiteTrainingRepository,
    TrainingState,
)
from flnotify.callbacks import (
    BUSY_RETRY_DELAYS,
    BUSY_RETRY_FOR,
    FunctionCallbacks,
    run_callbacks,
)
from flnotify.errors import CallbackError, ConnectError, RepositoryBusyError, RepositoryError
from flnotify.repository import OutcomeRecord
from flnotify.testing import MemoryRequest, MemoryTransport, seams
from helpers.fakes import FakeTime

ONCE = RetryPolicy.no_retries()


class Flaky:
    """A repository whose named methods are busy for their first ``busy[name]`` calls.

    ``applied`` counts the calls that went through to the real repository;
    ``call_takes`` moves the fake clock on each busy call (a lock waited for).
    """

    def __init__(
        self,
        inner: InMemoryTrainingRepository,
        time: FakeTime,
        call_takes: float = 0.0,
        **busy: float,
    ) -> None:
        self.inner = inner
        self.time = time
        self.call_takes = call_takes
        self.busy = dict(busy)
        self.calls: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if self.busy.get(name, 0) > 0:
            self.busy[name] -= 1
            self.time.now += self.call_takes
            msg = f"{name}: database is locked"
            raise RepositoryBusyError(msg)
        self.applied[name] += 1

    def get_training(self, training_id: uuid.UUID) -> flnotify.TrainingSnapshot:
        self._enter("get_training")
        return self.inner.get_training(training_id)

    def remove_participant(self, training_id: uuid.UUID, receiver_id: uuid.UUID) -> bool:
        self._enter("remove_participant")
        return self.inner.remove_participant(training_id, receiver_id)

    def set_state(self, training_id: uuid.UUID, state: TrainingState) -> None:
        self._enter("set_state")
        self.inner.set_state(training_id, state)

    def record_outcome(
        self,
        training_id: uuid.UUID,
        send_id: str,
        send_size: int,
        receiver_id: uuid.UUID,
        outcome: Outcome,
    ) -> OutcomeRecord:
        self._enter("record_outcome")
        return self.inner.record_outcome(training_id, send_id, send_size, receiver_id, outcome)

    def claim_verdict(self, send_id: str) -> bool:
        self._enter("claim_verdict")
        return self.inner.claim_verdict(send_id)


def training(
    repo: InMemoryTrainingRepository | SQLiteTrainingRepository,
) -> tuple[flnotify.TrainingSnapshot, Receiver, Receiver]:
    """An ONGOING training of ``good`` (its actor, answers 202) and ``bad``."""
    good = Receiver(uuid.uuid4(), "http://good.test/fl")
    bad = Receiver(uuid.uuid4(), "http://bad.test/fl")
    snapshot = repo.create_training(actor=good, participants=[good, bad], model_id=uuid.uuid4())
    return repo.update_training(snapshot.id, state=TrainingState.ONGOING), good, bad


def answers(bad: int | None) -> MemoryTransport:
    """202 from good.test; ``bad`` from bad.test, or a refused connection if ``None``."""

    def handler(request: MemoryRequest) -> int:
        if request.url.startswith("http://bad.test"):
            if bad is None:
                raise ConnectError("connection refused", url=request.url)
            return bad
        return 202

    return MemoryTransport(handler)


def send_round(
    repo: Any, snapshot: flnotify.TrainingSnapshot, transport: MemoryTransport, time: FakeTime
) -> flnotify.DeliveryReport:
    with seams(sleep=time.sleep, clock=time.clock):
        notifier = flnotify.Notifier(
            transport=transport,
            repository=repo,
            retry=ONCE,
            failure_policy=flnotify.FailurePolicy(tell_removed=True),  # removals are told
        )
    with notifier:
        return notifier.send(flnotify.TrainingRoundStartNotification.from_training(snapshot))


def removal_notices(transport: MemoryTransport) -> list[str]:
    """The URLs CLIENT_REMOVED was POSTed to."""
    return [
        r.url
        for r in transport.requests
        if json.loads(r.body)["notification_type"] == "CLIENT_REMOVED"
    ]


# -- through a send, with the default training callbacks --------------------------------


def test_a_removal_busy_twice_is_applied_once_and_told_once() -> None:
    time = FakeTime()
    inner = InMemoryTrainingRepository()
    snapshot, good, bad = training(inner)
    repo = Flaky(inner, time, remove_participant=2)
    transport = answers(409)
    report = send_round(repo, snapshot, transport, time)
    assert [d.outcome for d in report] == [Outcome.DELIVERED, Outcome.REJECTED]
    assert report.callback_errors == ()
    assert repo.calls["remove_participant"] == 3
    assert repo.applied["remove_participant"] == 1
    assert [p.id for p in inner.get_training(snapshot.id).participants] == [good.id]
    assert removal_notices(transport) == [bad.message_endpoint, good.message_endpoint]
    assert time.sleeps == list(BUSY_RETRY_DELAYS[:2])


def test_a_verdict_busy_twice_still_puts_the_training_into_error_once() -> None:
    """set_state busy after the verdict was reached: the retry must not lose the verdict."""
    time = FakeTime()
    inner = InMemoryTrainingRepository()
    snapshot, _, _ = training(inner)
    repo = Flaky(inner, time, set_state=2)
    report = send_round(repo, snapshot, answers(None), time)
    assert [d.outcome for d in report] == [Outcome.DELIVERED, Outcome.FAILED]
    assert report.callback_errors == ()
    assert inner.get_training(snapshot.id).state is TrainingState.ERROR
    assert repo.applied["set_state"] == 1
    assert time.sleeps == list(BUSY_RETRY_DELAYS[:2])


def test_always_busy_is_reported_after_the_bound_without_real_sleeping() -> None:
    time = FakeTime()
    inner = InMemoryTrainingRepository()
    snapshot, _, bad = training(inner)
    repo = Flaky(inner, time, remove_participant=float("inf"))
    report = send_round(repo, snapshot, answers(409), time)
    (error,) = report.callback_errors
    assert isinstance(error, CallbackError)
    assert isinstance(error.__cause__, RepositoryBusyError)
    assert error.delivery.receiver.id == bad.id
    tries = len(BUSY_RETRY_DELAYS) + 1
    assert f"({tries} tries over" in str(error)
    assert repo.calls["remove_participant"] == tries
    assert repo.applied["remove_participant"] == 0
    assert time.sleeps == list(BUSY_RETRY_DELAYS)
    assert sum(time.sleeps) <= BUSY_RETRY_FOR
    assert bad.id in [p.id for p in inner.get_training(snapshot.id).participants]


def test_slow_busy_calls_count_toward_the_bound() -> None:
    """A repository that waits 2 s for its lock each time gets fewer tries, not more time."""
    time = FakeTime()
    inner = InMemoryTrainingRepository()
    snapshot, _, _ = training(inner)
    repo = Flaky(inner, time, call_takes=2.0, remove_participant=float("inf"))
    report = send_round(repo, snapshot, answers(409), time)
    assert len(report.callback_errors) == 1
    # after the first failure: 0.05 + 2, 0.1 + 2, 0.2 + 2, then 0.4 would pass 5 s
    assert time.sleeps == list(BUSY_RETRY_DELAYS[:3])
    assert repo.calls["remove_participant"] == 4


# -- the callback runner itself -----------------------------------------------------------


def delivery() -> flnotify.Delivery:
    receiver = Receiver(uuid.uuid4(), "http://a.test/")
    notification = flnotify.TrainingStartNotification(
        receivers=[receiver],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    return flnotify.Delivery(
        receiver=receiver,
        notification=notification,
        outcome=Outcome.DELIVERED,
        message_id="msg_1",
        attempts=1,
        elapsed=0.1,
        status_code=202,
    )


class Scripted:
    """A callback raising the next error class of ``script`` on each call; then it succeeds."""

    def __init__(self, *script: type[Exception]) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self, _: flnotify.Delivery) -> None:
        self.calls += 1
        if self.script:
            raise self.script.pop(0)("database is locked")


@pytest.mark.parametrize(
    ("script", "reported"),
    [
        ((RepositoryBusyError, RepositoryBusyError), None),  # busy twice, then through
        ((RepositoryBusyError, RepositoryError), RepositoryError),  # lasting: at once
        ((RepositoryError,), RepositoryError),  # not transient: never tried again
    ],
)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_run_callbacks_tries_again_only_while_busy(
    script: tuple[type[Exception], ...], reported: type[Exception] | None, kind: str
) -> None:
    time = FakeTime()
    callback = Scripted(*script)

    async def async_callback(d: flnotify.Delivery) -> None:
        callback(d)

    callbacks = FunctionCallbacks(success=callback if kind == "sync" else async_callback)
    error = asyncio.run(run_callbacks(callbacks, delivery(), sleep=time.sleep, clock=time.clock))
    tries = len(script) + 1 if reported is None else len(script)
    assert callback.calls == tries
    assert time.sleeps == list(BUSY_RETRY_DELAYS[: tries - 1])
    if reported is None:
        assert error is None
    else:
        assert error is not None
        assert type(error.__cause__) is reported


def test_without_a_sleeper_the_tests_seams_are_used() -> None:
    """The dispatchers call run_callbacks without one: the seams in effect apply."""
    time = FakeTime()
    callback = Scripted(RepositoryBusyError)
    with seams(sleep=time.sleep, clock=time.clock):
        error = asyncio.run(run_callbacks(FunctionCallbacks(success=callback), delivery()))
    assert (error, callback.calls, time.sleeps) == (None, 2, [BUSY_RETRY_DELAYS[0]])


# -- a real SQLite file locked by another connection --------------------------------------


def test_sqlite_says_a_locked_database_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "trainings.db"
    with SQLiteTrainingRepository(path, busy_timeout=0.01) as repo:
        snapshot, _, bad = training(repo)
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(RepositoryBusyError, match="database is locked") as caught:
                repo.remove_participant(snapshot.id, bad.id)
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert repo.remove_participant(snapshot.id, bad.id) is True
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("ALTER TABLE participants RENAME TO gone")
        other.close()
        with pytest.raises(RepositoryError, match="no such table") as lasting:
            repo.remove_participant(snapshot.id, bad.id)  # a lasting error: not busy
        assert not isinstance(lasting.value, RepositoryBusyError)


def test_a_callback_on_a_locked_sqlite_file_goes_through_once_the_lock_is_released(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trainings.db"
    with SQLiteTrainingRepository(path, busy_timeout=0.01) as repo:
        snapshot, good, bad = training(repo)
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        time = FakeTime()
        real_sleep = time.sleep

        async def sleep(seconds: float) -> None:
            await real_sleep(seconds)
            if len(time.sleeps) == 2:  # the other process commits while the callback waits
                other.execute("ROLLBACK")

        time.sleep = sleep  # type: ignore[method-assign]
        try:
            transport = answers(409)
            report = send_round(repo, snapshot, transport, time)
        finally:
            other.close()
        assert [d.outcome for d in report] == [Outcome.DELIVERED, Outcome.REJECTED]
        assert report.callback_errors == ()
        assert time.sleeps == list(BUSY_RETRY_DELAYS[:2])
        assert [p.id for p in repo.get_training(snapshot.id).participants] == [good.id]
        assert removal_notices(transport) == [bad.message_endpoint, good.message_endpoint]
