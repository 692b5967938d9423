"""A send with the defaults never holds its caller longer than the figure docs/delivery.md gives.

Time is injected (``flnotify.testing.seams``): each worst-behaved peer moves a fake clock by
as long as the default timeouts let its attempt last, each backoff moves it by its delay,
and the send's ``elapsed`` (read from that clock) is checked against the figure.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flnotify
import flnotify.errors
from flnotify import Outcome, Receiver, Timeouts
from flnotify.testing import MemoryRequest, MemoryTransport, seams
from flnotify.transports import HttpResponse

DOCS = Path(__file__).resolve().parents[2] / "docs" / "delivery.md"


class FakeTime:
    """A monotonic clock that moves only when an attempt or a backoff says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def silent(fake: FakeTime) -> Callable[[MemoryRequest], int]:
    """Accepts the connection and never answers: each attempt ends at the read timeout."""

    def answer(request: MemoryRequest) -> int:
        fake.now += Timeouts().read
        raise flnotify.errors.TransportTimeoutError("read timed out", url=request.url)

    return answer


def dripping(fake: FakeTime) -> Callable[[MemoryRequest], int]:
    """Sends a byte now and then: each attempt ends at the total limit."""

    def answer(request: MemoryRequest) -> int:
        fake.now += Timeouts().total
        raise flnotify.errors.TransportTimeoutError(
            "the whole attempt took too long", url=request.url
        )

    return answer


def slow_and_busy(fake: FakeTime) -> Callable[[MemoryRequest], HttpResponse]:
    """Answers 503 at the last moment of the total limit, asking to wait an hour."""

    def answer(_: MemoryRequest) -> HttpResponse:
        fake.now += Timeouts().total
        return HttpResponse(503, headers={"retry-after": "3600"})

    return answer


def documented_figure() -> float:
    """The worst case docs/delivery.md states, in seconds."""
    match = re.search(r"holds its caller at most \*\*(\d+) s\*\*", DOCS.read_text())
    assert match, "docs/delivery.md states the worst case of one send"
    return float(match.group(1))


@pytest.mark.parametrize("peer", [silent, dripping, slow_and_busy])
def test_the_worst_peer_is_settled_within_the_documented_figure(
    peer: Callable[[FakeTime], Any],
) -> None:
    fake = FakeTime()
    notification = flnotify.TrainingRoundStartNotification(
        receivers=[Receiver(uuid.uuid4(), "http://peer.test/fl")],
        body=flnotify.RoundBody(round=1, global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    with (
        seams(clock=fake.clock, sleep=fake.sleep, rng=lambda: 0.0),
        flnotify.Notifier(transport=MemoryTransport(peer(fake))) as notifier,  # the defaults
    ):
        (delivery,) = report = notifier.send(notification)
    settings = flnotify.Settings()
    assert delivery.outcome is Outcome.FAILED
    assert delivery.attempts == settings.retry.max_attempts
    # every receiver's outcome is in by the deadline, and the retries alone keep within it
    assert settings.deadline is not None
    assert report.elapsed <= settings.deadline
    # then the callbacks: telling removed clients is cut at tell_timeout
    tell = flnotify.TrainingCallbacks(flnotify.InMemoryTrainingRepository()).tell_timeout
    figure = documented_figure()
    assert settings.deadline + tell <= figure < 120


def test_the_retries_of_one_receiver_keep_within_the_deadline_by_construction() -> None:
    retry, timeouts = flnotify.RetryPolicy(), Timeouts()
    waits = [
        max(min(retry.max_backoff, retry.initial_backoff * retry.multiplier**n), 0.0)
        for n in range(retry.max_attempts - 1)
    ]
    longest_wait = [max(w, retry.max_retry_after) for w in waits]
    worst = retry.max_attempts * timeouts.total + sum(longest_wait)
    assert flnotify.Settings().deadline == worst == 90
