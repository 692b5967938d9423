"""The Notifier's contract (DESIGN §2), driven through in-memory and mocked transports."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

import flnotify
import flnotify.codec
import flnotify.errors
from flnotify import (
    FunctionCallbacks,
    InMemoryTrainingRepository,
    Outcome,
    Receiver,
    RetryPolicy,
    TrainingCallbacks,
    TrainingState,
)
from flnotify.callbacks import Reaction
from flnotify.repository import AsyncRepositoryAdapter
from flnotify.testing import MemoryRequest, MemoryTransport, seams
from flnotify.transports import HttpResponse, HttpxTransport
from helpers.fakes import FakeTime

MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")


def receivers(n: int, prefix: str = "http://client") -> list[Receiver]:
    return [Receiver(uuid.UUID(int=i + 1), f"{prefix}-{i}.test/msg") for i in range(n)]


def round_start(rs: list[Receiver], training: uuid.UUID | None = None) -> Any:
    return flnotify.TrainingRoundStartNotification(
        receivers=rs,
        body=flnotify.RoundBody(round=3, global_model_uuid=MODEL),
        training_uuid=training or uuid.UUID(int=99),
    )


def notifier(transport: Any, fake: FakeTime | None = None, **kwargs: Any) -> flnotify.Notifier:
    fake = fake or FakeTime()
    with seams(sleep=fake.sleep, clock=fake.clock, wall_clock=fake.clock, rng=lambda: 0.5):
        return flnotify.Notifier(transport=transport, **kwargs)


def by_url(table: dict[str, Callable[[MemoryRequest], Any]], default: int = 200) -> Any:
    def handler(request: MemoryRequest) -> Any:
        answer = table.get(request.url)
        return default if answer is None else answer(request)

    return handler


def test_ten_receivers_all_delivered_with_one_request_each() -> None:
    transport = MemoryTransport()
    rs = receivers(10)
    report = notifier(transport).send(round_start(rs))
    assert [d.outcome for d in report] == [Outcome.DELIVERED] * 10
    assert [d.receiver for d in report] == rs
    assert sorted(r.url for r in transport.requests) == sorted(r.message_endpoint for r in rs)
    assert all(d.attempts == 1 and d.status_code == 200 for d in report)
    assert report.ok
    assert report.raise_for_failures() is report


def test_payload_is_encoded_once_and_identical_for_every_receiver() -> None:
    calls = 0

    class CountingCodec(flnotify.codec.Codec):
        def encode(self, notification: flnotify.Notification[Any]) -> bytes:
            nonlocal calls
            calls += 1
            return super().encode(notification)

    transport = MemoryTransport()
    n = round_start(receivers(1000))
    notifier(transport, codec=CountingCodec()).send(n)
    assert calls == 1
    assert len(transport.requests) == 1000
    assert {r.body for r in transport.requests} == {flnotify.codec.encode(n)}
    first = transport.requests[0].body
    assert all(r.body is first for r in transport.requests)


def test_request_headers() -> None:
    transport = MemoryTransport()
    fake = FakeTime()
    notifier(transport, fake).send(round_start(receivers(2)))
    for request in transport.requests:
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"].startswith("msg_")
        assert request.headers["webhook-timestamp"] == str(int(fake.now))
    ids = {r.headers["webhook-id"] for r in transport.requests}
    assert len(ids) == 2


def test_invalid_url_fails_at_once_without_request_or_retry() -> None:
    transport = MemoryTransport()
    fake = FakeTime()
    bad = Receiver(uuid.uuid4(), "ooo://example.com/")
    report = notifier(transport, fake).send(round_start([bad]))
    (delivery,) = report
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.InvalidURLError)
    assert delivery.attempts == 0
    assert transport.requests == []
    assert fake.sleeps == []


@pytest.mark.parametrize(
    ("status", "outcome", "attempts"),
    [
        (200, Outcome.DELIVERED, 1),
        (202, Outcome.DELIVERED, 1),
        (204, Outcome.DELIVERED, 1),
        (301, Outcome.FAILED, 1),
        (307, Outcome.FAILED, 1),
        (400, Outcome.REJECTED, 1),
        (401, Outcome.FAILED, 1),
        (403, Outcome.FAILED, 1),
        (404, Outcome.FAILED, 1),
        (405, Outcome.FAILED, 1),
        (409, Outcome.REJECTED, 1),
        (410, Outcome.REJECTED, 1),
        (422, Outcome.REJECTED, 1),
        (500, Outcome.REJECTED, 1),
        (429, Outcome.FAILED, 4),
        (502, Outcome.FAILED, 4),
        (503, Outcome.FAILED, 4),
        (504, Outcome.FAILED, 4),
    ],
)
def test_status_mapping_through_httpx_mock_transport(
    status: int, outcome: Outcome, attempts: int
) -> None:
    router = respx.Router(assert_all_called=False)
    route = router.post("http://client.test/msg").mock(return_value=httpx.Response(status))
    client = httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))
    transport = HttpxTransport(async_client=client)
    fake = FakeTime()
    try:
        report = notifier(transport, fake).send(
            round_start([Receiver(uuid.uuid4(), "http://client.test/msg")])
        )
    finally:
        asyncio.run(client.aclose())
    (delivery,) = report
    assert delivery.outcome is outcome
    assert delivery.status_code == status
    assert delivery.attempts == attempts
    assert route.call_count == attempts
    assert len(fake.sleeps) == attempts - 1
    request = route.calls[0].request
    assert request.headers["content-length"] == str(len(request.content))
    assert "transfer-encoding" not in request.headers


def test_retry_then_delivered_with_growing_backoff() -> None:
    answers = iter([503, 502, 504, 200])
    fake = FakeTime()
    report = notifier(MemoryTransport(lambda _: next(answers)), fake).send(
        round_start(receivers(1))
    )
    (delivery,) = report
    assert delivery.outcome is Outcome.DELIVERED
    assert delivery.attempts == 4
    # initial 0.5 s doubling, half of it jittered away with rng() == 0.5 -> factor 0.75
    assert fake.sleeps == [0.75, 2.25, 6.75]
    assert delivery.elapsed == pytest.approx(sum(fake.sleeps))


def test_retry_after_seconds_is_honoured_and_capped() -> None:
    answers = iter(
        [
            HttpResponse(429, {"retry-after": "7"}),
            HttpResponse(503, {"retry-after": "100000"}),
            HttpResponse(202),
        ]
    )
    fake = FakeTime()
    policy = RetryPolicy(max_retry_after=20)
    report = notifier(MemoryTransport(lambda _: next(answers)), fake, retry=policy).send(
        round_start(receivers(1))
    )
    assert report.ok
    assert fake.sleeps == [7.0, 20.0]


def test_retry_after_http_date() -> None:
    fake = FakeTime()
    date = email.utils.formatdate(fake.now + 12, usegmt=True)
    answers = iter([HttpResponse(503, {"retry-after": date}), HttpResponse(200)])
    patient = RetryPolicy(max_retry_after=60)  # the default caps waits at 10 s
    report = notifier(MemoryTransport(lambda _: next(answers)), fake, retry=patient).send(
        round_start(receivers(1))
    )
    assert report.ok
    assert fake.sleeps == [pytest.approx(12.0, abs=1.0)]


def test_transport_error_retried_until_budget_then_failed() -> None:
    def refuse(request: MemoryRequest) -> int:
        raise flnotify.errors.ConnectError("refused", url=request.url)

    fake = FakeTime()
    transport = MemoryTransport(refuse)
    (delivery,) = notifier(transport, fake).send(round_start(receivers(1)))
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.ConnectError)
    assert delivery.attempts == 4
    assert len(transport.requests) == 4
    assert fake.sleeps == [0.75, 2.25, 6.75]


def test_message_id_is_stable_across_retries_and_timestamp_is_per_attempt() -> None:
    answers = iter([503, 503, 200])
    transport = MemoryTransport(lambda _: next(answers))
    notifier(transport).send(round_start(receivers(1)))
    ids = {r.headers["webhook-id"] for r in transport.requests}
    stamps = [int(r.headers["webhook-timestamp"]) for r in transport.requests]
    assert len(ids) == 1
    assert stamps == sorted(stamps)
    assert stamps[0] < stamps[-1]


def test_given_message_ids_are_used_and_checked() -> None:
    transport = MemoryTransport()
    rs = receivers(2)
    notifier(transport).send(round_start(rs), message_ids=["msg_a", "msg_b"])
    assert {r.url: r.headers["webhook-id"] for r in transport.requests} == {
        rs[0].message_endpoint: "msg_a",
        rs[1].message_endpoint: "msg_b",
    }
    with pytest.raises(flnotify.errors.ConfigurationError, match="2 receivers"):
        notifier(transport).send(round_start(rs), message_ids=["only-one"])


def test_callbacks_called_exactly_once_per_receiver_sync_and_async() -> None:
    rs = receivers(30)
    table = {r.message_endpoint: (lambda _: 409) for r in rs[:10]}
    table.update({r.message_endpoint: (lambda _: 503) for r in rs[10:15]})
    calls: list[tuple[str, uuid.UUID]] = []

    def success(d: flnotify.Delivery) -> None:
        calls.append(("success", d.receiver.id))

    async def error(d: flnotify.Delivery) -> None:
        await asyncio.sleep(0)
        calls.append((d.outcome.value, d.receiver.id))

    report = notifier(MemoryTransport(by_url(table))).send(
        round_start(rs), FunctionCallbacks(success, error)
    )
    assert sorted(calls) == sorted(
        [("rejected", r.id) for r in rs[:10]]
        + [("failed", r.id) for r in rs[10:15]]
        + [("success", r.id) for r in rs[15:]]
    )
    assert report.counts() == {Outcome.DELIVERED: 15, Outcome.REJECTED: 10, Outcome.FAILED: 5}


def test_a_raising_callback_is_logged_and_does_not_stop_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[uuid.UUID] = []

    def success(d: flnotify.Delivery) -> None:
        seen.append(d.receiver.id)
        if len(seen) == 1:
            raise RuntimeError("boom")

    rs = receivers(5)
    with caplog.at_level(logging.ERROR, logger="flnotify"):
        report = notifier(MemoryTransport()).send(round_start(rs), FunctionCallbacks(success))
    assert sorted(seen) == sorted(r.id for r in rs)
    assert report.ok
    assert any("boom" in (r.exc_text or "") for r in caplog.records)


def test_default_training_callbacks_remove_rejecting_and_error_on_failure() -> None:
    repo = InMemoryTrainingRepository()
    rs = receivers(4)
    actor = Receiver(uuid.uuid4(), "http://actor.test/")
    training = repo.create_training(
        actor=actor, participants=rs, model_id=MODEL, state=TrainingState.ONGOING
    )
    table: dict[str, Callable[[MemoryRequest], Any]] = {rs[0].message_endpoint: lambda _: 409}
    n = flnotify.TrainingRoundStartNotification.from_training(training)
    report = notifier(MemoryTransport(by_url(table)), repository=repo).send(n)
    assert report.counts()[Outcome.REJECTED] == 1
    after = repo.get_training(training.id)
    assert [p.id for p in after.participants] == [r.id for r in rs[1:]]
    assert after.state is TrainingState.ONGOING

    def refuse(request: MemoryRequest) -> int:
        raise flnotify.errors.ConnectError("refused", url=request.url)

    table = {rs[1].message_endpoint: refuse}
    n = flnotify.TrainingRoundStartNotification.from_training(after)
    notifier(MemoryTransport(by_url(table)), repository=repo).send(n)
    final = repo.get_training(training.id)
    assert final.state is TrainingState.ERROR
    assert [p.id for p in final.participants] == [r.id for r in rs[1:]]


def test_training_callbacks_with_async_repository_and_configured_reactions() -> None:
    repo = InMemoryTrainingRepository()
    rs = receivers(3)
    training = repo.create_training(actor=rs[0], participants=rs, model_id=MODEL)
    table: dict[str, Callable[[MemoryRequest], Any]] = {rs[2].message_endpoint: lambda _: 410}
    callbacks = TrainingCallbacks(
        AsyncRepositoryAdapter(repo), on_rejected=Reaction.SET_ERROR, on_failed=Reaction.LOG
    )
    n = flnotify.TrainingSWAGRoundStartNotification.from_training(training)
    notifier(MemoryTransport(by_url(table))).send(n, callbacks)
    after = repo.get_training(training.id)
    assert after.state is TrainingState.ERROR
    assert len(after.participants) == 3


def test_explicit_callbacks_override_defaults_and_start_has_none() -> None:
    repo = InMemoryTrainingRepository()
    rs = receivers(2)
    training = repo.create_training(actor=rs[0], participants=rs, model_id=MODEL)
    transport = MemoryTransport(lambda _: 409)
    seen: list[flnotify.Delivery] = []
    n = flnotify.TrainingModelTestNotification.from_training(training)
    notifier(transport, repository=repo).send(n, FunctionCallbacks(error=seen.append))
    assert len(seen) == 2
    assert len(repo.get_training(training.id).participants) == 2
    start = flnotify.TrainingStartNotification.from_training(training)
    notifier(transport, repository=repo).send(start)
    assert len(repo.get_training(training.id).participants) == 2


def test_deadline_fails_what_is_pending_and_still_calls_back_once() -> None:
    never = asyncio.Event()
    rs = receivers(6)
    slow = {r.message_endpoint for r in rs[:2]}

    async def handler(request: MemoryRequest) -> int:
        if request.url in slow:
            await never.wait()
        return 200

    seen: list[flnotify.Delivery] = []
    n = flnotify.Notifier(transport=MemoryTransport(handler), deadline=0.2)
    report = n.send(round_start(rs), FunctionCallbacks(seen.append, seen.append))
    assert len(seen) == 6
    assert {d.receiver.id for d in seen} == {r.id for r in rs}
    for d in report.deliveries[:2]:
        assert d.outcome is Outcome.FAILED
        assert isinstance(d.error, flnotify.errors.TransportError)
        assert d.error.kind is flnotify.errors.TransportErrorKind.DEADLINE
    assert all(d.ok for d in report.deliveries[2:])
    n.close()


def test_concurrency_is_bounded() -> None:
    in_flight = 0
    peak = 0

    async def handler(_: MemoryRequest) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _step in range(3):
            await asyncio.sleep(0)
        in_flight -= 1
        return 200

    report = notifier(MemoryTransport(handler), concurrency=5).send(round_start(receivers(50)))
    assert report.ok
    assert peak == 5


def test_a_receiver_in_backoff_does_not_hold_a_slot() -> None:
    rs = receivers(2)
    second_delivered = asyncio.Event()
    answers = iter([503, 200])

    def handler(request: MemoryRequest) -> int:
        if request.url == rs[0].message_endpoint:
            return next(answers)
        second_delivered.set()
        return 200

    async def sleep(_: float) -> None:
        await second_delivered.wait()  # only returns once the other receiver got through

    with seams(sleep=sleep):
        n = flnotify.Notifier(transport=MemoryTransport(handler), concurrency=1, deadline=5)
    report = n.send(round_start(rs))
    n.close()
    assert [d.outcome for d in report] == [Outcome.DELIVERED, Outcome.DELIVERED]
    assert report.deliveries[0].attempts == 2


def test_send_works_inside_a_running_event_loop() -> None:
    async def main() -> flnotify.DeliveryReport:
        with flnotify.Notifier(transport=MemoryTransport()) as n:
            return n.send(round_start(receivers(3)))

    assert asyncio.run(main()).ok


def test_asend_in_the_callers_loop() -> None:
    async def main() -> flnotify.DeliveryReport:
        async with flnotify.Notifier(transport=MemoryTransport()) as n:
            return await n.asend(round_start(receivers(3)))

    assert asyncio.run(main()).ok


def test_transport_breaking_its_contract_fails_without_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(_: MemoryRequest) -> int:
        raise KeyError("oops")

    fake = FakeTime()
    with caplog.at_level(logging.ERROR, logger="flnotify"):
        (d,) = notifier(MemoryTransport(broken), fake).send(round_start(receivers(1)))
    assert d.outcome is Outcome.FAILED
    assert isinstance(d.error, flnotify.errors.TransportError)
    assert d.error.kind is flnotify.errors.TransportErrorKind.INTERNAL
    assert isinstance(d.error.__cause__, KeyError)
    assert d.attempts == 1
    assert fake.sleeps == []


def test_sync_only_transport_is_run_in_threads() -> None:
    class SyncOnly:
        def __init__(self) -> None:
            self.urls: list[str] = []

        def post(self, url: str, body: bytes, headers: Any) -> HttpResponse:
            self.urls.append(url)
            return HttpResponse(202)

        def close(self) -> None:
            pass

    transport = SyncOnly()
    with notifier(transport) as n:
        report = n.send(round_start(receivers(20)))
    assert report.ok
    assert len(transport.urls) == 20


def test_empty_receivers_give_an_empty_report() -> None:
    report = notifier(MemoryTransport()).send(round_start([]))
    assert len(report) == 0
    assert report.ok


def test_raise_for_failures_names_the_first_failure() -> None:
    rs = receivers(3)
    report = notifier(MemoryTransport(lambda _: 409)).send(round_start(rs))
    with pytest.raises(flnotify.errors.DeliveryError, match="3 receiver") as info:
        report.raise_for_failures()
    assert len(info.value.deliveries) == 3
    assert "409" in str(info.value)
    assert report.rejected == report.deliveries
    assert report.delivered == ()
    assert report.failed == ()


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(flnotify.errors.ConfigurationError, match="concurrency"):
        flnotify.Notifier(concurrency=0)
    with pytest.raises(flnotify.errors.ConfigurationError, match="deadline"):
        flnotify.Notifier(deadline=0)
    with pytest.raises(flnotify.errors.ConfigurationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(flnotify.errors.ConfigurationError, match="neither"):
        flnotify.Notifier(transport=object())  # type: ignore[arg-type]


def test_logs_carry_ids_endpoint_and_type_but_never_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flnotify import Signer, generate_secret

    secret = generate_secret()
    repo = InMemoryTrainingRepository()
    rs = receivers(2)
    training = repo.create_training(actor=rs[0], participants=rs, model_id=MODEL)
    table: dict[str, Callable[[MemoryRequest], Any]] = {rs[1].message_endpoint: lambda _: 409}
    n = flnotify.TrainingRoundStartNotification.from_training(training)
    with caplog.at_level(logging.DEBUG, logger="flnotify"):
        notifier(MemoryTransport(by_url(table)), repository=repo, signer=Signer(secret)).send(n)
    rejected, removing = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "rejected" in rejected.getMessage()
    assert "Removing" in removing.getMessage()
    for warning in (rejected, removing):
        assert warning.training_id == str(training.id)  # type: ignore[attr-defined]
        assert warning.receiver_id == str(rs[1].id)  # type: ignore[attr-defined]
        assert warning.endpoint == rs[1].message_endpoint  # type: ignore[attr-defined]
        assert warning.notification_type == "UPDATE_ROUND_START"  # type: ignore[attr-defined]
    assert rs[1].message_endpoint in rejected.getMessage()
    key = secret.removeprefix("whsec_")
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert key not in text


def test_a_signer_failing_for_one_receiver_fails_only_that_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flnotify import Signer, generate_secret

    rs = receivers(3)
    secrets = {rs[0].id: generate_secret(), rs[2].id: generate_secret()}
    signer = Signer(lookup=lambda r: secrets.get(r.id, "not a secret"))
    with caplog.at_level(logging.ERROR, logger="flnotify"):
        report = notifier(MemoryTransport(), signer=signer).send(round_start(rs))
    assert [d.outcome for d in report] == [Outcome.DELIVERED, Outcome.FAILED, Outcome.DELIVERED]
    failed = report.deliveries[1]
    assert isinstance(failed.error, flnotify.errors.TransportError)
    assert failed.error.kind is flnotify.errors.TransportErrorKind.INTERNAL
    assert isinstance(failed.error.__cause__, flnotify.errors.ConfigurationError)
    assert failed.attempts == 0  # nothing was sent
