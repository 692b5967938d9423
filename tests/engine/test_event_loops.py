"""Which event loop flnotify runs on: uvloop's when installed (unless opted out), and
both transports deliver on it."""

from __future__ import annotations

import asyncio
import inspect
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

import flnotify
import flnotify.errors
from flnotify import Outcome, Receiver, RetryPolicy, Timeouts
from flnotify._loops import EVENT_LOOP_ENV, loop_factory, run
from flnotify._portal import Portal
from flnotify.transports import HttpxTransport, StreamTransport
from helpers.servers import FaultServer

TIMEOUTS = Timeouts(connect=2.0, read=2.0, write=2.0, pool=2.0, total=5.0)

TRANSPORTS: list[Any] = [
    pytest.param(lambda: StreamTransport(timeouts=TIMEOUTS), id="streams"),
    pytest.param(lambda: HttpxTransport(timeouts=TIMEOUTS), id="httpx"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def _notification(*urls: str) -> flnotify.TrainingStartNotification:
    return flnotify.TrainingStartNotification(
        receivers=[Receiver(uuid.uuid4(), url) for url in urls],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )


@pytest.mark.parametrize("make_transport", TRANSPORTS)
def test_a_fan_out_on_a_uvloop_loop_is_delivered(
    server: FaultServer, make_transport: Callable[[], Any]
) -> None:
    urls = [server.url(f"/status/202?n={i}") for i in range(20)]

    async def main() -> list[flnotify.Delivery]:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        transport = make_transport()
        async with flnotify.Notifier(
            transport=transport, retry=RetryPolicy(max_attempts=1)
        ) as notifier:
            report = await notifier.asend(_notification(*urls))
        await transport.aclose()
        return list(report)

    deliveries = uvloop.run(main())
    assert [d.outcome for d in deliveries] == [Outcome.DELIVERED] * 20, [
        d.error for d in deliveries
    ]


def test_flnotify_s_own_loops_are_uvloop_s_when_installed(
    monkeypatch: pytest.MonkeyPatch, server: FaultServer
) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    portal = Portal()
    try:
        assert isinstance(portal.run(_running_loop()), uvloop.Loop)
    finally:
        portal.close()
    assert isinstance(run(_running_loop()), uvloop.Loop)
    # the sync Notifier runs the engine on that loop, the stream transport with it
    transport = StreamTransport(timeouts=TIMEOUTS)
    with flnotify.Notifier(transport=transport, retry=RetryPolicy(max_attempts=1)) as notifier:
        (delivery,) = notifier.send(_notification(server.url("/status/202")))
    assert delivery.outcome is Outcome.DELIVERED, delivery.error


@pytest.mark.parametrize("value", ["asyncio", " AsyncIO "])
def test_the_environment_opts_out(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, value)
    portal = Portal()
    try:
        loop = portal.run(_running_loop())
    finally:
        portal.close()
    assert not isinstance(loop, uvloop.Loop)
    assert isinstance(loop, asyncio.BaseEventLoop)
    assert not isinstance(run(_running_loop()), uvloop.Loop)


def test_without_uvloop_asyncio_s_loop_unless_uvloop_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    monkeypatch.setenv(EVENT_LOOP_ENV, "auto")
    assert loop_factory() is asyncio.new_event_loop
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    with pytest.raises(flnotify.errors.ConfigurationError, match="uvloop is not installed"):
        loop_factory()


def test_a_wrong_choice_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    with pytest.raises(flnotify.errors.ConfigurationError, match="FLNOTIFY_EVENT_LOOP='trio'"):
        loop_factory()
    coroutine = _running_loop()
    with pytest.raises(flnotify.errors.ConfigurationError):
        run(coroutine)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # never left unawaited


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()
