"""Faults of the delivery core, each shown against real loopback servers where it matters.

Malformed ``Retry-After``; a peer that drips bytes (bounded by the whole-attempt limit);
300 receivers behind one slow origin (queueing for a connection is not a failure); a
repository that fails inside a callback (visible, never silent); redirects; hooks.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flnotify
import flnotify.errors
from flnotify import Outcome, Receiver, RetryPolicy, Timeouts, TrainingState
from flnotify._http import parse_retry_after
from flnotify.testing import MemoryRequest, MemoryTransport, RecordingCallbacks, RecordingHook
from flnotify.transports import HttpResponse, HttpxTransport, StreamTransport
from helpers.servers import FaultServer

MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
NO_WAIT = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_retry_after=0.0)


def round_start(rs: list[Receiver], training: uuid.UUID | None = None) -> Any:
    return flnotify.TrainingRoundStartNotification(
        receivers=rs,
        body=flnotify.RoundBody(round=2, global_model_uuid=MODEL),
        training_uuid=training or uuid.UUID(int=5),
    )


def transport_of(kind: str, **kwargs: Any) -> Any:
    return HttpxTransport(**kwargs) if kind == "httpx" else StreamTransport(**kwargs)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


# -- Retry-After --------------------------------------------------------------------------

MALFORMED = [
    "\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() says yes, float() says no
    "\u00b2",  # SUPERSCRIPT TWO: isdigit() true, float() raises
    "1.5",
    "-1",
    "+3",
    "1e3",
    " ",
    "soon",
    "9" * 40,
    "Wed, 21 Oct 2015 07:28:00",  # an HTTP-date without its zone
    "Fri, 31 Dec 99999 23:59:59 GMT",
    "\x00",
]


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_retry_after_counts_as_absent(value: str) -> None:
    assert parse_retry_after({"retry-after": value}, lambda: 0.0) is None


def test_valid_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": " 0 "}) == 0.0
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after({"retry-after": date}, lambda: 1445412480.0 - 10) == 10.0


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_retry_after_through_the_notifier_still_ends(value: str) -> None:
    answer = HttpResponse(503, {"retry-after": value})
    transport = MemoryTransport(lambda _: answer)
    rs = [Receiver(uuid.uuid4(), "http://client.test/fl")]
    callbacks = RecordingCallbacks()
    with flnotify.Notifier(transport=transport, retry=NO_WAIT) as notifier:
        report = notifier.send(round_start(rs), callbacks)
    (delivery,) = report
    assert (delivery.outcome, delivery.status_code, delivery.attempts) == (Outcome.FAILED, 503, 3)
    assert callbacks.calls == [delivery]


@pytest.mark.parametrize("kind", ["httpx", "streams"])
@pytest.mark.parametrize("value", ["%D9%A3", "1.5", "-1", "soon"])
def test_malformed_retry_after_from_a_real_peer(server: FaultServer, kind: str, value: str) -> None:
    rs = [Receiver(uuid.uuid4(), server.url(f"/retry-after/503/{value}"))]
    with flnotify.Notifier(transport=transport_of(kind), retry=NO_WAIT) as notifier:
        (delivery,) = notifier.send(round_start(rs))
    assert (delivery.outcome, delivery.status_code, delivery.attempts) == (Outcome.FAILED, 503, 3)


# -- the whole-attempt limit ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["httpx", "streams"])
def test_a_dripping_peer_ends_at_the_total_limit(server: FaultServer, kind: str) -> None:
    # one byte every 50 ms: the read timeout (2 s) never fires, the total limit does
    timeouts = Timeouts(connect=2.0, read=2.0, write=2.0, total=0.5)
    rs = [Receiver(uuid.uuid4(), server.url("/drip/0.05"))]
    retry = RetryPolicy.no_retries()
    with flnotify.Notifier(transport=transport_of(kind, timeouts=timeouts), retry=retry) as n:
        (delivery,) = n.send(round_start(rs))
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.TransportTimeoutError)
    assert "whole attempt" in str(delivery.error)
    assert delivery.error.retryable


def test_a_transport_that_does_not_bound_itself_is_bounded_by_the_notifier() -> None:
    never = asyncio.Event()

    async def stuck(_: MemoryRequest) -> int:
        await never.wait()
        return 200

    rs = [Receiver(uuid.uuid4(), "http://client.test/fl")]
    notifier = flnotify.Notifier(
        transport=MemoryTransport(stuck), retry=RetryPolicy.no_retries(), attempt_timeout=0.05
    )
    with notifier:
        (delivery,) = notifier.send(round_start(rs))
    assert isinstance(delivery.error, flnotify.errors.TransportTimeoutError)
    assert "0.05 s" in str(delivery.error)


def test_a_blocking_transport_is_bounded_by_the_notifier() -> None:
    import threading

    release = threading.Event()

    class Blocking:
        def post(self, url: str, body: bytes, headers: object) -> HttpResponse:
            release.wait(10)
            return HttpResponse(200)

        def close(self) -> None:
            release.set()

    rs = [Receiver(uuid.uuid4(), "http://client.test/fl")]
    notifier = flnotify.Notifier(
        transport=Blocking(), retry=RetryPolicy.no_retries(), attempt_timeout=0.05
    )
    try:
        (delivery,) = notifier.send(round_start(rs))
    finally:
        release.set()
        notifier.close()
    assert isinstance(delivery.error, flnotify.errors.TransportTimeoutError)


# -- queueing for a connection is not a failure ---------------------------------------------


def test_300_receivers_behind_one_slow_origin_all_delivered(server: FaultServer) -> None:
    """Each answer takes 2 s and 30 connections serve the origin, so the last receivers
    queue about 18 s for a connection (past the 10 s pool timeout of old): none fails."""
    rs = [Receiver(uuid.uuid4(), server.url(f"/delay/2/202?i={i}")) for i in range(300)]

    async def send(transport: Any) -> flnotify.DeliveryReport:
        async with flnotify.Notifier(transport=transport, retry=RetryPolicy.no_retries()) as n:
            return await n.asend(round_start(rs))

    async def both() -> tuple[flnotify.DeliveryReport, flnotify.DeliveryReport]:
        return await asyncio.gather(
            send(HttpxTransport(max_connections_per_origin=30)),
            send(StreamTransport(max_connections_per_origin=30)),
        )

    for report in asyncio.run(both()):
        assert report.counts() == {Outcome.DELIVERED: 300, Outcome.REJECTED: 0, Outcome.FAILED: 0}
    assert server.request_count == 600


# -- callbacks that fail are never silent ---------------------------------------------------


def test_a_locked_repository_inside_a_callback_is_on_the_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "fl.db"
    dead = Receiver(uuid.uuid4(), "http://dead.test/fl")
    with flnotify.SQLiteTrainingRepository(path, busy_timeout=0.05) as repo:
        training = repo.create_training(actor=dead, participants=[dead], model_id=MODEL)
        repo.update_training(training.id, state=TrainingState.ONGOING)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        transport = MemoryTransport(lambda _: HttpResponse(503))
        try:
            with (
                caplog.at_level(logging.ERROR, logger="flnotify"),
                flnotify.Notifier(transport=transport, retry=NO_WAIT, repository=repo) as n,
            ):
                report = n.send(flnotify.TrainingRoundStartNotification.from_training(training))
        finally:
            blocker.rollback()
            blocker.close()
        (delivery,) = report
        assert delivery.outcome is Outcome.FAILED
        (error,) = report.callback_errors
        assert error.delivery is delivery
        assert isinstance(error.__cause__, flnotify.errors.RepositoryError)
        assert isinstance(error.__cause__.__cause__, sqlite3.OperationalError)
        assert "1 callback(s) failed" in report.summary()
        with pytest.raises(flnotify.errors.DeliveryError) as raised:
            report.raise_for_failures()
        assert raised.value.callback_errors == (error,)
        # the failure was logged at ERROR with the receiver and the training
        record = next(r for r in caplog.records if "callback" in r.getMessage())
        assert record.levelno == logging.ERROR
        assert record.receiver_id == str(dead.id)  # type: ignore[attr-defined]
        assert record.training_id == str(training.id)  # type: ignore[attr-defined]
        # the training did not reach ERROR, and the report says so: nothing is silent
        assert repo.get_training(training.id).state is TrainingState.ONGOING


def test_sqlite_errors_are_typed_and_integers_beyond_sqlite_refused(tmp_path: Path) -> None:
    actor = Receiver(uuid.uuid4(), "http://a.test/fl")
    with flnotify.SQLiteTrainingRepository(tmp_path / "fl.db") as repo:
        training = repo.create_training(actor=actor, participants=[actor], model_id=MODEL)
        with pytest.raises(
            flnotify.errors.ConfigurationError, match="outside SQLite's integer range"
        ):
            repo.update_training(training.id, round=2**63)
        assert repo.get_training(training.id).round == 0


# -- redirects and hooks --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["httpx", "streams"])
def test_a_redirect_is_not_followed_and_says_where_it_pointed(
    server: FaultServer, kind: str
) -> None:
    rs = [Receiver(uuid.uuid4(), server.url("/redirect/308"))]
    with flnotify.Notifier(transport=transport_of(kind), retry=NO_WAIT) as notifier:
        (delivery,) = notifier.send(round_start(rs))
    assert (delivery.outcome, delivery.status_code) == (Outcome.FAILED, 308)
    assert isinstance(delivery.error, flnotify.errors.AnswerError)
    assert delivery.error.kind is flnotify.errors.AnswerErrorKind.REDIRECT
    assert delivery.error.location == server.url("/status/200")
    assert delivery.redirect == server.url("/status/200")
    assert f"redirect to {server.url('/status/200')} not followed" in delivery.describe()
    assert server.request_count == 1


def test_hooks_see_every_attempt_and_one_outcome_per_receiver() -> None:
    answers = iter([503, 202, 409])
    transport = MemoryTransport(lambda _: next(answers))
    rs = [Receiver(uuid.UUID(int=1), "http://a.test/fl"), Receiver(uuid.UUID(int=2), "ftp://x")]
    hook = RecordingHook()
    with flnotify.Notifier(transport=transport, retry=NO_WAIT, hooks=[hook], concurrency=1) as n:
        report = n.send(round_start(rs))
    assert [(s.receiver.id.int, s.attempt) for s in hook.started] == [(1, 1), (1, 2)]
    assert [(e.status_code, e.retry_in) for e in hook.ended] == [(503, 0.0), (202, None)]
    assert hook.ended[0].started == hook.started[0]
    assert sorted(d.receiver.id.int for d in hook.outcomes) == [1, 2]
    assert set(hook.outcomes) == set(report)
    assert [s.notification for s in hook.sends] == [report.notification]
    assert [s.send_id for s in hook.sends] == [report.send_id]
    assert report.send_id
    assert {d.send_id for d in report} == {report.send_id}
    assert {s.send_id for s in hook.started} | {e.send_id for e in hook.ended} == {report.send_id}
    assert hook.reports == [report]


def test_readable_values() -> None:
    assert str(Outcome.DELIVERED) == "delivered"
    transport = MemoryTransport(lambda r: 202 if "a." in r.url else 409)
    rs = [Receiver(uuid.uuid4(), "http://a.test/fl"), Receiver(uuid.uuid4(), "http://b.test/fl")]
    with flnotify.Notifier(transport=transport, retry=NO_WAIT) as n:
        report = n.send(round_start(rs))
    assert str(report.counts()) == "1 delivered, 1 rejected, 0 failed"
    assert report.summary().startswith(
        "UPDATE_ROUND_START to 2 receiver(s): 1 delivered, 1 rejected, 0 failed in "
    )
