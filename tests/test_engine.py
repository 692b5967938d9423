"""The engine's seams: settings, the settle order, hooks paired, callbacks applied once."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

import flnotify
import flnotify.errors
from flnotify import Outcome, Receiver, RetryPolicy, TrainingCallbacks, TrainingState
from flnotify.callbacks import Verdict
from flnotify.repository import SendTally
from flnotify.testing import MemoryRequest, MemoryTransport, RecordingHook, seams


async def _no_wait(_: float) -> None:
    await asyncio.sleep(0)


def _training(
    repo: flnotify.InMemoryTrainingRepository, n: int, tag: str
) -> tuple[flnotify.TrainingRoundStartNotification, list[Receiver]]:
    clients = [Receiver(uuid.uuid4(), f"http://{tag}{i}.example/hook") for i in range(n)]
    training = repo.create_training(actor=clients[0], participants=clients, model_id=uuid.uuid4())
    repo.update_training(training.id, state=TrainingState.ONGOING, round=1)
    snapshot = repo.get_training(training.id)
    return flnotify.TrainingRoundStartNotification.from_training(snapshot), clients


def _type(request: MemoryRequest) -> str:
    return str(json.loads(request.body)["notification_type"])


# -- settings ---------------------------------------------------------------------------------


def test_one_settings_value_serves_notifier_and_names_unknown_options() -> None:
    settings = flnotify.Settings(retry=RetryPolicy.no_retries(), concurrency=7)
    with flnotify.Notifier(MemoryTransport(), settings=settings, deadline=3.0) as notifier:
        assert notifier.settings.concurrency == 7
        assert notifier.settings.deadline == 3.0
        assert notifier.settings.retry == RetryPolicy.no_retries()
    with pytest.raises(TypeError, match=r"'sleep'.*flnotify\.testing\.seams"):
        flnotify.Notifier(sleep=_no_wait)  # type: ignore[call-arg]


# -- the failure policy counts in integers ----------------------------------------------------


def test_a_fraction_is_compared_exactly_not_in_floats() -> None:
    policy = flnotify.FailurePolicy.tolerant(min_delivered_fraction=0.56)
    assert policy.verdict(SendTally(total=25, delivered=14, failed=11)) is Verdict.FINE
    assert policy.verdict(SendTally(total=25, delivered=13, failed=12)) is Verdict.ERROR
    third = flnotify.FailurePolicy(max_failures=None, min_delivered_fraction=1 / 3)
    assert third.verdict(SendTally(total=3, delivered=1, failed=2)) is Verdict.FINE


# -- hooks: every attempt started ends, retry_in only when a retry follows --------------------


def test_an_attempt_cut_by_the_deadline_ends_for_the_hooks() -> None:
    async def hang(_: MemoryRequest) -> int:
        await asyncio.Event().wait()
        return 200

    hook = RecordingHook()
    note = flnotify.TrainingStartNotification(
        receivers=[Receiver(uuid.uuid4(), "http://quiet.example/")],
        body=flnotify.GlobalModelBody(uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    with flnotify.Notifier(MemoryTransport(hang), hooks=[hook]) as notifier:
        report = notifier.send(note, deadline=0.05)  # this send's own deadline
    error = report.deliveries[0].error
    assert isinstance(error, flnotify.errors.TransportError)
    assert error.kind is flnotify.errors.TransportErrorKind.DEADLINE
    assert len(hook.started) == len(hook.ended) == 1
    assert hook.ended[0].retry_in is None
    assert hook.ended[0].error is report.deliveries[0].error


def test_the_attempt_that_opens_a_circuit_promises_no_retry() -> None:
    hook = RecordingHook()
    breaker = flnotify.CircuitBreaker(failure_threshold=2)
    note = flnotify.TrainingStartNotification(
        receivers=[Receiver(uuid.uuid4(), "http://down.example/")],
        body=flnotify.GlobalModelBody(uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    with seams(sleep=_no_wait):
        notifier = flnotify.Notifier(
            MemoryTransport(lambda _: 503),
            hooks=[hook],
            breaker=breaker,
            retry=RetryPolicy(max_attempts=5, jitter=0.0),
        )
    with notifier:
        report = notifier.send(note)
    assert isinstance(report.deliveries[0].error, flnotify.errors.CircuitOpenError)
    assert [e.retry_in is not None for e in hook.ended] == [True, False]


# -- callbacks: removal and telling once per (training, client), telling concurrent ----------


def test_removed_clients_are_told_at_once_and_hooks_see_each_telling_end() -> None:
    repo = flnotify.InMemoryTrainingRepository()
    notification, clients = _training(repo, 4, "no")
    told = 0
    all_told = asyncio.Event()

    async def handler(request: MemoryRequest) -> int:
        nonlocal told
        if _type(request) != "CLIENT_REMOVED":
            return 409  # every client says no to the round
        if request.url == clients[0].message_endpoint:
            return 200  # the actor is told too
        told += 1
        if told == 3:
            all_told.set()
        await all_told.wait()  # answers only once the three tellings are in flight together
        return 200

    hook = RecordingHook()
    with flnotify.Notifier(MemoryTransport(handler), repository=repo, hooks=[hook]) as notifier:
        callbacks = TrainingCallbacks(repo, sender=notifier.engine, tell_timeout=5)
        report = notifier.send(notification, callbacks)
    assert [d.outcome for d in report] == [Outcome.REJECTED] * 4
    tellings = [
        r for r in hook.reports if r.notification.notification_type.value == "CLIENT_REMOVED"
    ]
    assert len(tellings) == 4
    assert len(hook.sends) == len(hook.reports) == 5
    assert all(d.outcome is Outcome.DELIVERED for r in tellings for d in r)
    assert repo.get_training(notification.training_uuid).participants == ()


def test_a_client_removed_twice_is_told_once() -> None:
    repo = flnotify.InMemoryTrainingRepository()
    notification, _ = _training(repo, 2, "twice")
    transport = MemoryTransport(lambda r: 200 if _type(r) == "CLIENT_REMOVED" else 409)
    with flnotify.Notifier(transport, repository=repo) as notifier:
        notifier.send(notification)
        notifier.send(notification)  # the same round again: callbacks run again, say
    removed = [r for r in transport.requests if _type(r) == "CLIENT_REMOVED"]
    # the first send: client 0 (also the actor) is told once, client 1 and the actor once
    # more; the second send removes nobody new and tells nobody
    assert len(removed) == 3
