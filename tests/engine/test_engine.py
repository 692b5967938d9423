"""The engine's seams: settings, the settle order, hooks paired, callbacks applied once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import attrs
import pytest

import flnotify
import flnotify.errors
from flnotify import Outcome, Receiver, RetryPolicy, TrainingCallbacks, TrainingState
from flnotify.callbacks import Verdict
from flnotify.repository import SendTally
from flnotify.testing import MemoryRequest, MemoryTransport, RecordingHook, seams
from flnotify.transports import HttpResponse
from flnotify.transports._base import Done, Job, drive_each


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
        callbacks = TrainingCallbacks(
            repo, sender=notifier.engine, tell_removed=True, tell_timeout=5
        )
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
    telling = flnotify.FailurePolicy(tell_removed=True)  # the strict policy, telling
    with flnotify.Notifier(transport, repository=repo, failure_policy=telling) as notifier:
        notifier.send(notification)
        notifier.send(notification)  # the same round again: callbacks run again, say
    removed = [r for r in transport.requests if _type(r) == "CLIENT_REMOVED"]
    # the first send: client 0 (also the actor) is told once, client 1 and the actor once
    # more; the second send removes nobody new and tells nobody
    assert len(removed) == 3


class _Died(BaseException):
    """The process died (nothing after it runs in that process)."""


def test_a_crash_while_telling_a_removal_tells_again_under_the_same_ids_and_removes_once() -> None:
    # The callbacks of a rejection run again after the process died while telling (as the
    # outbox, the mailbox and Celery's late acks run them): the client is still told, under
    # the same webhook-ids (each receiver acts on it once), and removed once.
    repo = flnotify.InMemoryTrainingRepository()
    notification, clients = _training(repo, 2, "crash")
    transport = MemoryTransport(lambda r: 200 if _type(r) == "CLIENT_REMOVED" else 409)

    class DiesAfterTelling:
        def __init__(self, notifier: flnotify.Notifier) -> None:
            self.notifier = notifier

        async def asend(self, notice: Any, callbacks: Any, *, message_ids: Any = None) -> Any:
            await self.notifier.asend(notice, callbacks, message_ids=message_ids)
            raise _Died  # told; the process dies before it removes

    with flnotify.Notifier(transport) as notifier:
        rejected = notifier.send(
            flnotify.TrainingRoundStartNotification(
                receivers=[clients[1]],
                body=notification.body,
                training_uuid=notification.training_uuid,
            )
        ).deliveries[0]
        dying = TrainingCallbacks(repo, sender=DiesAfterTelling(notifier), tell_removed=True)
        with pytest.raises(_Died):
            notifier.engine.run_sync(cast(Any, dying.on_error(rejected)))
        assert clients[1].id in repo.get_training(notification.training_uuid).participant_ids()
        again = TrainingCallbacks(repo, sender=notifier, tell_removed=True)  # the new process
        notifier.engine.run_sync(cast(Any, again.on_error(rejected)))
        # and once more: gone, nobody told again
        notifier.engine.run_sync(cast(Any, again.on_error(rejected)))
    assert clients[1].id not in repo.get_training(notification.training_uuid).participant_ids()
    notices = [r for r in transport.requests if _type(r) == "CLIENT_REMOVED"]
    by_url: dict[str, set[str]] = {}
    for r in notices:
        by_url.setdefault(r.url, set()).add(r.headers["webhook-id"])
    assert by_url == {
        clients[1].message_endpoint: by_url[clients[1].message_endpoint],
        clients[0].message_endpoint: by_url[clients[0].message_endpoint],  # the actor
    }
    assert all(len(ids) == 1 for ids in by_url.values())  # one notice each, sent twice
    assert len(notices) == 4


# -- a send judged once, whatever splits it ---------------------------------------------------


class _PlainRepository:
    """A repository without OutcomeTracking: counts cannot be shared between runs."""

    def __init__(self) -> None:
        self.inner = flnotify.InMemoryTrainingRepository()

    def get_training(self, training_id: uuid.UUID) -> flnotify.TrainingSnapshot:
        return self.inner.get_training(training_id)

    def remove_participant(self, training_id: uuid.UUID, receiver_id: uuid.UUID) -> bool | None:
        return self.inner.remove_participant(training_id, receiver_id)

    def set_state(self, training_id: uuid.UUID, state: TrainingState) -> None:
        self.inner.set_state(training_id, state)


TOLERANT = flnotify.FailurePolicy(max_failures=None, min_delivered_fraction=0.5)


def test_a_part_of_a_send_is_refused_when_its_callbacks_could_not_judge_the_whole() -> None:
    """A Celery chunk or outbox batch tallied alone would never reach a verdict."""
    plain = _PlainRepository()
    notification, _ = _training(plain.inner, 4, "part")
    transport = MemoryTransport(lambda _: 202)
    with flnotify.Notifier(
        transport=transport, repository=plain, failure_policy=TOLERANT
    ) as notifier:
        engine = notifier.engine
        whole = engine.plan(notification)
        part = attrs.evolve(whole, send_size=len(notification.receivers) + 6)
        with pytest.raises(flnotify.errors.ConfigurationError, match="OutcomeTracking"):
            engine.run_sync(engine.run(part))
        assert transport.requests == []  # refused before anything was sent
        # the whole send, in one run, is judged by its own tally
        assert engine.run_sync(engine.run(whole)).report.delivered


@pytest.mark.parametrize("policy", [TOLERANT, flnotify.FailurePolicy(max_failures=2)])
def test_splitting_drivers_refuse_at_construction_what_could_not_judge_a_send(
    policy: flnotify.FailurePolicy, tmp_path: Path
) -> None:
    from flnotify.mailbox import Mailbox, MailboxDispatcher
    from flnotify.outbox import Outbox, OutboxDispatcher

    plain = _PlainRepository()
    with (
        flnotify.Notifier(repository=plain, failure_policy=policy) as notifier,
        Outbox(tmp_path / "outbox.db") as outbox,
        Mailbox(tmp_path / "mailbox.db") as mailbox,
    ):
        with pytest.raises(
            flnotify.errors.ConfigurationError, match=r"OutboxDispatcher.*OutcomeTracking"
        ):
            OutboxDispatcher(outbox, notifier)
        with pytest.raises(flnotify.errors.ConfigurationError, match="MailboxDispatcher"):
            MailboxDispatcher(mailbox, notifier)
        own = TrainingCallbacks(plain, policy=policy)
        with pytest.raises(flnotify.errors.ConfigurationError, match="OutboxDispatcher"):
            OutboxDispatcher(outbox, flnotify.Notifier(repository=plain), callbacks=own)


def test_splitting_drivers_accept_a_policy_that_judges_each_outcome_alone(tmp_path: Path) -> None:
    from flnotify.outbox import Outbox, OutboxDispatcher

    plain = _PlainRepository()
    with (
        flnotify.Notifier(repository=plain) as strict,  # the default: one failure decides
        flnotify.Notifier(
            repository=flnotify.InMemoryTrainingRepository(), failure_policy=TOLERANT
        ) as tracking,
        Outbox(tmp_path / "outbox.db") as outbox,
    ):
        OutboxDispatcher(outbox, strict)
        OutboxDispatcher(outbox, tracking)  # the repository keeps the counts across runs


def test_celery_refuses_a_policy_its_chunks_could_not_judge() -> None:
    from celery import Celery  # type: ignore[import-untyped]

    from flnotify.contrib.celery import CeleryDelivery

    app = Celery("refusal", broker="memory://")
    app.conf.task_always_eager = True  # the task runs here, as in a worker
    app.conf.task_eager_propagates = True
    plain = _PlainRepository()
    notification, _ = _training(plain.inner, 3, "chunk")
    delivery = CeleryDelivery(app, repository_factory=lambda: plain, failure_policy=TOLERANT)
    try:
        with pytest.raises(
            flnotify.errors.ConfigurationError, match=r"CeleryDelivery.*OutcomeTracking"
        ):
            delivery.enqueue(notification)
    finally:
        delivery.close()


# -- the fast lane ------------------------------------------------------------------------------


class _Driving:
    """A transport offered to the fast lane: ``answer`` gives each POST's response."""

    bounds_attempts = True

    def __init__(self, answer: Callable[[str, Mapping[str, str]], Awaitable[HttpResponse]]):
        self.answer = answer

    async def apost(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        return await self.answer(url, headers)

    async def drive(
        self,
        body: bytes,
        headers: Mapping[str, str],
        jobs: Iterator[Job],
        done: Done,
        concurrency: int,
    ) -> None:
        await drive_each(self.apost, body, headers, jobs, done, concurrency)

    async def aclose(self) -> None:
        return None


def test_a_retry_due_while_the_fast_lane_runs_does_not_wait_for_the_lane_to_end() -> None:
    """Receiver 0 answers 503 then 200; the others hold the lane until its retry was made."""
    retried = asyncio.Event()
    posts: list[str] = []

    async def answer(url: str, headers: Mapping[str, str]) -> HttpResponse:
        posts.append(url)
        if url.endswith("/0"):
            if posts.count(url) == 1:
                return HttpResponse(503)
            retried.set()
            return HttpResponse(200)
        await retried.wait()  # the lane stays busy until receiver 0 was retried
        return HttpResponse(202)

    repo = flnotify.InMemoryTrainingRepository()
    clients = [Receiver(uuid.uuid4(), f"http://lane.example/{i}") for i in range(6)]
    training = repo.create_training(actor=clients[0], participants=clients, model_id=uuid.uuid4())
    notification = flnotify.TrainingStartNotification.from_training(training)

    async def main() -> flnotify.DeliveryReport:
        with seams(sleep=_no_wait):
            notifier = flnotify.Notifier(
                transport=_Driving(answer), retry=RetryPolicy(max_attempts=2, jitter=0.0)
            )
        async with notifier:
            # without a worker for retries during the lane this never ends: fail, not hang
            return await asyncio.wait_for(notifier.asend(notification), 10)

    report = asyncio.run(main())
    assert [d.outcome for d in report] == [Outcome.DELIVERED] * 6
    assert report.deliveries[0].attempts == 2


def test_a_signer_with_headers_of_its_own_signs_fast_lane_attempts_too() -> None:
    seen: list[Mapping[str, str]] = []

    async def answer(url: str, headers: Mapping[str, str]) -> HttpResponse:
        seen.append(headers)
        return HttpResponse(202)

    class Custom(flnotify.Signer):
        def headers(
            self, msg_id: str, timestamp: int, body: bytes, receiver: object = None
        ) -> dict[str, str]:
            return {**super().headers(msg_id, timestamp, body), "webhook-signature": "v1,own"}

    repo = flnotify.InMemoryTrainingRepository()
    clients = [Receiver(uuid.uuid4(), f"http://lane.example/{i}") for i in range(3)]
    training = repo.create_training(actor=clients[0], participants=clients, model_id=uuid.uuid4())
    signer = Custom(secrets=flnotify.generate_secret())
    with flnotify.Notifier(transport=_Driving(answer), signer=signer) as notifier:
        report = notifier.send(flnotify.TrainingStartNotification.from_training(training))
    assert [d.outcome for d in report] == [Outcome.DELIVERED] * 3
    assert [h["webhook-signature"] for h in seen] == ["v1,own"] * 3


# -- receivers' own secrets, looked up once per send off the loop ----------------------------


def _signed_send(
    lookup: Any, answers: Callable[[MemoryRequest], int], n: int = 3, **options: Any
) -> tuple[flnotify.DeliveryReport, list[MemoryRequest], list[Receiver]]:
    clients = [Receiver(uuid.uuid4(), f"http://own{i}.example/hook") for i in range(n)]
    notification = flnotify.TrainingStartNotification(
        receivers=clients,
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    transport = MemoryTransport(answers)
    with seams(sleep=_no_wait):
        notifier = flnotify.Notifier(
            transport=transport, signer=flnotify.Signer(lookup=lookup), **options
        )
    with notifier:
        report = notifier.send(notification)
    return report, transport.requests, clients


def test_a_plain_lookup_runs_once_per_receiver_and_send_off_the_event_loop() -> None:
    import threading

    secrets: dict[uuid.UUID, str] = {}
    calls: list[tuple[uuid.UUID, bool]] = []

    def lookup(receiver: flnotify.ReceiverLike) -> str:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        calls.append((receiver.id, on_loop))
        assert threading.current_thread().name != "flnotify-loop"
        return secrets.setdefault(receiver.id, flnotify.generate_secret())

    seen: dict[str, int] = {}

    def answer(request: MemoryRequest) -> int:
        seen[request.url] = seen.get(request.url, 0) + 1
        return 503 if seen[request.url] == 1 else 202  # each receiver retried once

    report, requests, clients = _signed_send(lookup, answer, retry=RetryPolicy(max_attempts=2))
    assert [d.outcome for d in report] == [Outcome.DELIVERED] * 3
    assert sorted(c for c, _ in calls) == sorted(r.id for r in clients)  # once each
    assert not any(on_loop for _, on_loop in calls)
    by_url = {r.message_endpoint: r.id for r in clients}
    for request in requests:  # both attempts signed with the receiver's own secret
        secret = secrets[by_url[request.url]]
        flnotify.signing.Verifier(secret).verify(request.headers, request.body)


def test_an_async_lookup_is_awaited_for_all_receivers_once() -> None:
    calls: list[uuid.UUID] = []
    secret = flnotify.generate_secret()

    async def lookup(receiver: flnotify.ReceiverLike) -> str:
        calls.append(receiver.id)
        await asyncio.sleep(0)
        return secret

    report, requests, clients = _signed_send(lookup, lambda _: 202)
    assert [d.outcome for d in report] == [Outcome.DELIVERED] * 3
    assert sorted(calls) == sorted(r.id for r in clients)
    for request in requests:
        flnotify.signing.Verifier(secret).verify(request.headers, request.body)


def test_a_lookup_that_raises_for_one_receiver_fails_that_receiver_only() -> None:
    secret = flnotify.generate_secret()
    broken: list[uuid.UUID] = []

    def lookup(receiver: flnotify.ReceiverLike) -> str:
        if not broken:
            broken.append(receiver.id)
            raise LookupError("no such client row")
        return secret

    report, requests, _ = _signed_send(lookup, lambda _: 202)
    outcomes = {d.receiver.id: d for d in report}
    failed = outcomes.pop(broken[0])
    assert failed.outcome is Outcome.FAILED
    assert "building the headers raised LookupError: no such client row" in str(failed.error)
    assert [d.outcome for d in outcomes.values()] == [Outcome.DELIVERED] * 2
    assert len(requests) == 2  # nothing sent unsigned for the broken one


def test_an_async_lookup_cannot_sign_a_single_request_by_itself() -> None:
    async def lookup(receiver: flnotify.ReceiverLike) -> str:
        return flnotify.generate_secret()

    signer = flnotify.Signer(lookup=lookup)
    receiver = Receiver(uuid.uuid4(), "http://x.example/")
    with pytest.raises(flnotify.errors.ConfigurationError, match="resolved once per send"):
        signer.headers("msg_1", 1, b"{}", receiver)


class _PathRecorder:
    """A driving transport that says which path each POST took: the lane's or apost."""

    bounds_attempts = True

    def __init__(self) -> None:
        self.driven: list[tuple[str, str]] = []  # (url, own lines) of each lane job
        self.posted: list[tuple[str, dict[str, str]]] = []

    async def apost(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        for name, value in headers.items():
            if any(c in value for c in "\r\n"):
                raise flnotify.errors.InvalidURLError(
                    f"header {name!r}: control character", url=url
                )
        self.posted.append((url, dict(headers)))
        return HttpResponse(202)

    async def drive(
        self,
        body: bytes,
        headers: Mapping[str, str],
        jobs: Iterator[Job],
        done: Done,
        concurrency: int,
    ) -> None:
        for url, own, token in jobs:
            self.driven.append((url, own))
            done(token, HttpResponse(202), None)

    async def aclose(self) -> None:
        return None


def _lane_send(
    transport: _PathRecorder, message_ids: list[str], signer: flnotify.Signer | None = None
) -> flnotify.DeliveryReport:
    clients = [Receiver(uuid.uuid4(), f"http://lane.example/{i}") for i in range(len(message_ids))]
    notification = flnotify.TrainingStartNotification(
        receivers=clients, body=flnotify.GlobalModelBody(uuid.uuid4()), training_uuid=uuid.uuid4()
    )
    with flnotify.Notifier(transport=transport, signer=signer) as notifier:
        return notifier.send(notification, message_ids=message_ids)


def test_the_lane_writes_checked_header_lines_and_leaves_a_bad_message_id_to_the_general_path() -> (
    None
):
    transport = _PathRecorder()
    report = _lane_send(transport, ["msg_ok", "msg_bad\r\nx-injected: 1"])
    assert [url for url, _ in transport.driven] == ["http://lane.example/0"]
    own = transport.driven[0][1]
    assert own.startswith("webhook-id: msg_ok\r\nwebhook-timestamp: ")
    assert own.endswith("\r\n")
    assert own.count("\r\n") == 2  # unsigned: the id and the timestamp
    # the general path fails it with the transport's typed error; nothing was injected
    bad = report.deliveries[1]
    assert bad.outcome is Outcome.FAILED
    assert isinstance(bad.error, flnotify.errors.InvalidURLError)
    assert transport.posted == []


def test_a_signer_header_the_transport_owns_sends_that_receiver_the_general_way() -> None:
    class Hosting(flnotify.Signer):
        def headers(
            self, msg_id: str, timestamp: int, body: bytes, receiver: object = None
        ) -> dict[str, str]:
            return {**super().headers(msg_id, timestamp, body), "Host": "elsewhere"}

    transport = _PathRecorder()
    report = _lane_send(transport, ["msg_a", "msg_b"], Hosting(flnotify.generate_secret()))
    assert [d.outcome for d in report] == [Outcome.DELIVERED] * 2
    assert transport.driven == []  # never written as a lane line: apost drops owned names
    assert [headers["webhook-id"] for _, headers in transport.posted] == ["msg_a", "msg_b"]
