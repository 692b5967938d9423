"""Failures the way FL runs them: a policy per send, removed clients told, endpoint health.

Through the real HTTP path (loopback servers): the strict default, a tolerant policy over
100 receivers with 3 dead, removal after K failed rounds (in-process and on a real Celery
worker), CLIENT_REMOVED to each removed client, and a circuit breaker that skips a dead
endpoint at no cost and probes it after the cool-down, shared by two processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import flnotify
import flnotify.errors
from flnotify import (
    CircuitBreaker,
    FailurePolicy,
    Outcome,
    Receiver,
    RetryPolicy,
    Timeouts,
    TrainingState,
)
from flnotify.callbacks import Verdict
from flnotify.health import InMemoryHealthStore, SQLiteHealthStore
from flnotify.repository import SendTally
from flnotify.testing import seams
from flnotify.transports import StreamTransport
from helpers.servers import FaultServer

ONCE = RetryPolicy.no_retries()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def clients(server: FaultServer, good: int, dead: int) -> tuple[list[Receiver], list[Receiver]]:
    live = [Receiver(uuid.uuid4(), server.url(f"/status/202?c={i}")) for i in range(good)]
    down = [Receiver(uuid.uuid4(), server.url(f"/down-for-rounds?c={i}")) for i in range(dead)]
    return live, down


def ongoing(
    repo: flnotify.SQLiteTrainingRepository, live: list[Receiver], down: list[Receiver]
) -> flnotify.TrainingSnapshot:
    """A training of these clients (the first is its actor), already ONGOING."""
    training = repo.create_training(actor=live[0], participants=live + down, model_id=uuid.uuid4())
    return repo.update_training(training.id, state=TrainingState.ONGOING)


def target(receiver: Receiver) -> str:
    """The request target a receiver's POSTs carry (path and query)."""
    parts = urlsplit(receiver.message_endpoint)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def start_round(repo: flnotify.SQLiteTrainingRepository, training: uuid.UUID, n: int) -> Any:
    snapshot = repo.update_training(training, round=n)
    return flnotify.TrainingRoundStartNotification.from_training(snapshot)


# -- the policy itself ----------------------------------------------------------------------

AT_LEAST_5 = FailurePolicy(max_failures=None, min_delivered=5)
NINETY = FailurePolicy.tolerant(min_delivered_fraction=0.9)


@pytest.mark.parametrize(
    ("policy", "tally", "verdict"),
    [
        (FailurePolicy(), SendTally(3, delivered=1), Verdict.OPEN),
        (FailurePolicy(), SendTally(3, delivered=1, failed=1), Verdict.ERROR),
        (FailurePolicy(), SendTally(3, delivered=2, rejected=1), Verdict.FINE),
        (FailurePolicy(max_failures=2), SendTally(10, failed=2), Verdict.OPEN),
        (FailurePolicy(max_failures=2), SendTally(10, delivered=8, failed=2), Verdict.FINE),
        (FailurePolicy(max_failures=2), SendTally(10, failed=3), Verdict.ERROR),
        (FailurePolicy(max_failures=None, min_delivered=5), SendTally(6, failed=2), Verdict.ERROR),
        (
            FailurePolicy(max_failures=None, min_delivered=5),
            SendTally(6, delivered=5),
            Verdict.FINE,
        ),
        (
            FailurePolicy.tolerant(min_delivered_fraction=0.9),
            SendTally(100, failed=10),
            Verdict.OPEN,
        ),
        (
            FailurePolicy.tolerant(min_delivered_fraction=0.9),
            SendTally(100, failed=11),
            Verdict.ERROR,
        ),
        (
            FailurePolicy.tolerant(min_delivered_fraction=0.9),
            SendTally(100, delivered=97, failed=3),
            Verdict.FINE,
        ),
    ],
)
def test_verdicts(policy: FailurePolicy, tally: SendTally, verdict: Verdict) -> None:
    assert policy.verdict(tally) is verdict
    assert str(tally.total) in policy.explain(tally)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_failures": -1},
        {"min_delivered": 1.5},
        {"min_delivered_fraction": 1.5},
        {"remove_after": 0},
        {"max_failures": True},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(flnotify.errors.ConfigurationError, match="FailurePolicy"):
        FailurePolicy(**kwargs)


def test_remove_after_needs_a_repository_that_keeps_outcomes() -> None:
    class Minimal:  # today's TrainingRepository protocol, nothing more
        def get_training(self, training_id: uuid.UUID) -> Any: ...
        def remove_participant(self, training_id: uuid.UUID, receiver_id: uuid.UUID) -> None: ...
        def set_state(self, training_id: uuid.UUID, state: TrainingState) -> None: ...

    flnotify.TrainingCallbacks(Minimal())  # the strict default works with any repository
    with pytest.raises(flnotify.errors.ConfigurationError, match="OutcomeTracking"):
        flnotify.TrainingCallbacks(Minimal(), policy=FailurePolicy(remove_after=2))


def test_the_default_callbacks_options_are_one_value_of_the_settings() -> None:
    from flnotify.callbacks import Reaction, TrainingOptions, default_callback_registry
    from flnotify.testing import MemoryTransport

    repo = flnotify.InMemoryTrainingRepository()
    keep, rejecting = (
        Receiver(uuid.uuid4(), "http://a.test/"),
        Receiver(uuid.uuid4(), "http://b.test/"),
    )
    training = repo.create_training(
        actor=keep, participants=[keep, rejecting], model_id=uuid.uuid4()
    )
    transport = MemoryTransport(lambda request: 409 if request.url == "http://b.test/" else 202)
    quiet = default_callback_registry(tell_removed=False)
    with flnotify.Notifier(transport, repository=repo, retry=ONCE, default_callbacks=quiet) as n:
        n.send(flnotify.TrainingRoundStartNotification.from_training(training))
    assert repo.get_training(training.id).participant_ids() == {keep.id}  # removed ...
    kinds = [json.loads(r.body)["notification_type"] for r in transport.requests]
    assert kinds == ["UPDATE_ROUND_START"] * 2  # ... and, as configured, not told

    logging_only = default_callback_registry(on_rejected=Reaction.LOG)
    other = repo.create_training(actor=keep, participants=[keep, rejecting], model_id=uuid.uuid4())
    with flnotify.Notifier(
        transport, repository=repo, retry=ONCE, default_callbacks=logging_only
    ) as n:
        (_, refused) = n.send(flnotify.TrainingRoundStartNotification.from_training(other))
    assert refused.outcome is Outcome.REJECTED
    assert repo.get_training(other.id).participant_ids() == {keep.id, rejecting.id}  # kept
    with pytest.raises(flnotify.errors.ConfigurationError, match="Reaction"):
        default_callback_registry(on_rejected="log")  # type: ignore[arg-type]
    with pytest.raises(flnotify.errors.ConfigurationError, match="tell_removed"):
        TrainingOptions(tell_removed="no")  # type: ignore[arg-type]


# -- in-process, through real HTTP ----------------------------------------------------------


def test_strict_default_one_failure_puts_the_training_into_error(
    server: FaultServer, tmp_path: Path
) -> None:
    live, down = clients(server, 4, 1)
    with flnotify.SQLiteTrainingRepository(tmp_path / "fl.db") as repo:
        training = repo.create_training(
            actor=live[0], participants=live + down, model_id=uuid.uuid4()
        )
        repo.update_training(training.id, state=TrainingState.ONGOING)
        with flnotify.Notifier(transport=StreamTransport(), retry=ONCE, repository=repo) as n:
            report = n.send(start_round(repo, training.id, 1))
        after = repo.get_training(training.id)
    assert report.counts()[Outcome.FAILED] == 1
    assert after.state is TrainingState.ERROR
    assert len(after.participants) == 5  # the strict rule removes nobody for failing


def test_tolerant_policy_keeps_training_on_and_removes_the_dead_after_k_rounds(
    server: FaultServer, tmp_path: Path
) -> None:
    live, down = clients(server, 97, 3)
    policy = FailurePolicy.tolerant(min_delivered_fraction=0.9, remove_after=3)
    with flnotify.SQLiteTrainingRepository(tmp_path / "fl.db") as repo:
        training = repo.create_training(
            actor=live[0], participants=live + down, model_id=uuid.uuid4()
        )
        repo.update_training(training.id, state=TrainingState.ONGOING)
        notifier = flnotify.Notifier(
            transport=StreamTransport(), retry=ONCE, repository=repo, failure_policy=policy
        )
        with notifier:
            for n in (1, 2):
                report = notifier.send(start_round(repo, training.id, n))
                assert report.counts()[Outcome.FAILED] == 3
                snapshot = repo.get_training(training.id)
                assert snapshot.state is TrainingState.ONGOING
                assert len(snapshot.participants) == 100  # not yet: 2 failures of 3
            notifier.send(start_round(repo, training.id, 3))
        after = repo.get_training(training.id)
    assert after.state is TrainingState.ONGOING
    assert {p.id for p in after.participants} == {r.id for r in live}
    for dead in down:
        (told,) = [
            r for r in server.requests if r.target == target(dead) and b'"CLIENT_REMOVED"' in r.body
        ]
        assert b"unreachable for 3 notifications in a row" in told.body
    # the actor was told about each of the three too
    to_actor = [
        r for r in server.requests if r.target == target(live[0]) and b"CLIENT_REMOVED" in r.body
    ]
    assert len(to_actor) == 3


def test_a_tolerant_send_that_falls_short_errors_once(server: FaultServer, tmp_path: Path) -> None:
    live, down = clients(server, 2, 3)
    policy = FailurePolicy(max_failures=None, min_delivered_fraction=0.5)
    with flnotify.SQLiteTrainingRepository(tmp_path / "fl.db") as repo:
        training = repo.create_training(
            actor=live[0], participants=live + down, model_id=uuid.uuid4()
        )
        repo.update_training(training.id, state=TrainingState.ONGOING)
        with flnotify.Notifier(
            transport=StreamTransport(), retry=ONCE, repository=repo, failure_policy=policy
        ) as notifier:
            notifier.send(start_round(repo, training.id, 1))
        assert repo.get_training(training.id).state is TrainingState.ERROR


# -- the circuit breaker --------------------------------------------------------------------


def test_an_open_breaker_costs_no_attempt_and_the_endpoint_is_probed_after_the_cool_down(
    server: FaultServer,
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, cool_down=60.0)
    hanging = Receiver(uuid.uuid4(), server.url("/hang"))
    fine = Receiver(uuid.uuid4(), server.url("/status/202"))
    note = flnotify.TrainingStartNotification(
        receivers=[hanging, fine],
        body=flnotify.GlobalModelBody(uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    transport = StreamTransport(timeouts=Timeouts(connect=2.0, read=0.2, write=2.0, total=5.0))
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.0)
    with seams(wall_clock=clock):
        n = flnotify.Notifier(transport=transport, retry=retry, breaker=breaker)
    with n:
        first = n.send(note)  # two timeouts: the circuit opens
        assert isinstance(first.deliveries[0].error, flnotify.errors.TransportTimeoutError)
        assert first.deliveries[0].attempts == 2
        hung = len(server.requests_for("/hang"))
        clock.now += 30  # within the cool-down
        second = n.send(note)
        skipped = second.deliveries[0]
        assert (skipped.outcome, skipped.attempts) == (Outcome.FAILED, 0)
        assert isinstance(skipped.error, flnotify.errors.CircuitOpenError)
        assert "open for 30 s more" in str(skipped.error)
        assert second.deliveries[1].ok  # the healthy endpoint is untouched
        assert len(server.requests_for("/hang")) == hung  # no request, no timeout
        clock.now += 31  # the cool-down is over: one probe
        third = n.send(note)
        assert third.deliveries[0].attempts == 1  # the probe failed: open again at once
        assert len(server.requests_for("/hang")) == hung + 1
        fourth = n.send(note)
        assert fourth.deliveries[0].attempts == 0


def test_a_probe_that_succeeds_closes_the_circuit() -> None:
    clock = Clock()
    store = InMemoryHealthStore()
    breaker = CircuitBreaker(failure_threshold=1, cool_down=10.0, store=store)
    breaker.record("http://a.test/", False, clock.now)
    assert breaker.admit("http://a.test/", clock.now) == clock.now + 10
    clock.now += 10
    assert breaker.admit("http://a.test/", clock.now) is None  # the probe
    assert breaker.admit("http://a.test/", clock.now) is not None  # only one at a time
    breaker.record("http://a.test/", True, clock.now)
    assert breaker.admit("http://a.test/", clock.now) is None
    assert store.get("http://a.test/").failures == 0


_CHILD = """
import sys
from flnotify.health import SQLiteHealthStore
store = SQLiteHealthStore(sys.argv[1])
for _ in range(3):
    store.record("http://dead.test/", False, 1000.0, 3, 60.0)
print(store.admit("http://dead.test/", 1001.0, 60.0))
store.close()
"""


def test_health_is_shared_by_two_processes_through_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "health.db"
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "1060.0"  # the child opened it
    with SQLiteHealthStore(path) as store:
        breaker = CircuitBreaker(failure_threshold=3, cool_down=60.0, store=store)
        assert breaker.admit("http://dead.test/", 1030.0) == 1060.0  # this process sees it
        assert breaker.admit("http://dead.test/", 1061.0) is None  # and takes the probe
        again = subprocess.run(  # noqa: S603
            [sys.executable, "-c", _PROBE, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert again.stdout.strip() == "1121.0"  # the other process may not probe too


_PROBE = """
import sys
from flnotify.health import SQLiteHealthStore
with SQLiteHealthStore(sys.argv[1]) as store:
    print(store.admit("http://dead.test/", 1062.0, 60.0))
"""
