"""The delivery invariant, proven against hostile components on every in-process driver.

Whatever the transport raises or returns (any status, any header value, junk), and whatever
the signer, the resolver, the hooks, the jitter source or the callbacks do: every receiver
ends with exactly one Delivery and one callback call, errors are typed, the message id is
stable, and the send ends. (The Celery driver runs the same property in test_celery.py.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flnotify
import flnotify._engine
import flnotify.errors
import flnotify.transports
from flnotify import Timeouts
from flnotify.outbox import Outbox, OutboxDispatcher, OutboxState
from flnotify.transports import HttpxTransport, StreamTransport
from helpers.hostile import (
    PROPERTY,
    CountingCallbacks,
    World,
    check_attempts_paired,
    check_invariants,
    hostile_notifier,
    hostile_transport,
    no_wait,
    notification,
    quiet,
    receivers,
    worlds,
)
from helpers.servers import FaultServer

LANES = pytest.mark.parametrize("lane", [True, False], ids=["fast-lane", "general"])
"""Both paths of the push route: the fast lane (a transport that drives) and the general flow."""


@LANES
@PROPERTY
@given(world=worlds())
def test_notifier_one_delivery_and_one_callback_per_receiver(world: World, lane: bool) -> None:
    rs = receivers(world)
    transport = hostile_transport(world, [r.message_endpoint for r in rs], lane)
    callbacks = CountingCallbacks(world)

    notifier = hostile_notifier(world, transport)

    async def main() -> flnotify.DeliveryReport:
        async with notifier:
            # a hang fails the example instead of the whole suite
            return await asyncio.wait_for(notifier.asend(notification(rs), callbacks), 30)

    with quiet():
        report = asyncio.run(main())
    check_attempts_paired(notifier)
    assert [d.receiver for d in report] == rs
    check_invariants(world, rs, list(report), callbacks, transport.seen)
    raising = {r.id for r in rs} & callbacks.bad
    assert {e.delivery.receiver.id for e in report.callback_errors} == raising
    assert all(isinstance(e, flnotify.errors.CallbackError) for e in report.callback_errors)


@LANES
@PROPERTY
@given(world=worlds())
def test_notifier_sync_send_ends_the_same_way(world: World, lane: bool) -> None:
    rs = receivers(world)
    transport = hostile_transport(world, [r.message_endpoint for r in rs], lane)
    callbacks = CountingCallbacks(world)
    with quiet(), hostile_notifier(world, transport) as notifier:
        report = notifier.send(notification(rs), callbacks)
    check_attempts_paired(notifier)
    check_invariants(world, rs, list(report), callbacks, transport.seen)


@LANES
@settings(PROPERTY, max_examples=40)
@given(world=worlds())
def test_outbox_dispatcher_one_recorded_outcome_and_callback_per_receiver(
    world: World, tmp_path: Path, lane: bool
) -> None:
    rs = receivers(world)
    transport = hostile_transport(world, [r.message_endpoint for r in rs], lane)
    callbacks = CountingCallbacks(world)
    path = tmp_path / f"outbox-{uuid.uuid4().hex}.db"
    with quiet(), Outbox(path) as outbox, hostile_notifier(world, transport) as notifier:
        batch = outbox.put(notification(rs))
        dispatcher = OutboxDispatcher(outbox, notifier, callbacks=callbacks, sleep=no_wait)
        assert dispatcher.run() == len(rs)
        entries = outbox.entries(batch)
    check_attempts_paired(notifier)
    assert [e.state for e in entries] == [OutboxState.DONE] * len(rs)
    deliveries = [calls[0] for calls in callbacks.calls.values()]
    check_invariants(world, rs, deliveries, callbacks, transport.seen)
    for entry in entries:
        delivery = callbacks.calls[entry.receiver.id][0]
        assert (entry.outcome, entry.attempts, entry.status_code) == (
            delivery.outcome,
            delivery.attempts,
            delivery.status_code,
        )
        assert entry.message_id == delivery.message_id


def test_cancellation_is_not_swallowed() -> None:
    gate = asyncio.Event()

    class Stuck:
        async def apost(
            self, url: str, body: bytes, headers: object
        ) -> flnotify.transports.HttpResponse:
            gate.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def aclose(self) -> None:
            return None

    async def main() -> None:
        notifier = flnotify.Notifier(transport=Stuck())
        rs = [flnotify.Receiver(r.id, r.message_endpoint) for r in receivers(World(((),)))]
        task = asyncio.ensure_future(notifier.asend(notification(rs)))
        await gate.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


# -- a hostile peer on a real socket, through both real transports --------------------------

_HEADER_VALUE = st.binary(max_size=24).map(
    lambda b: bytes(c for c in b if c not in b"\r\n")  # a header line cannot hold CR/LF
)


@st.composite
def raw_answers(draw: st.DrawFn) -> bytes | str:
    """What a peer may write back: any status, any header bytes, wrong framing, junk."""
    kind = draw(st.sampled_from(["http", "http", "http", "junk", "close", "reset"]))
    if kind in ("close", "reset"):
        return kind
    if kind == "junk":
        return draw(st.binary(min_size=1, max_size=64))
    status = draw(st.one_of(st.sampled_from([200, 202, 301, 404, 429, 503]), st.integers(100, 999)))
    headers = draw(
        st.lists(
            st.tuples(
                st.sampled_from([b"Retry-After", b"Location", b"X-Any", b"Content-Type"]),
                st.one_of(_HEADER_VALUE, st.sampled_from([b"1", b"-1", b"\xd9\xa3", b"1e9"])),
            ),
            max_size=3,
        )
    )
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "short-length", "none"]))
    head = [f"HTTP/1.1 {status} Whatever".encode()]
    head += [name + b": " + value for name, value in headers]
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
    elif framing == "short-length":
        head.append(b"Content-Length: %d" % (len(body) + 10))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def peer() -> Iterator[FaultServer]:
    with FaultServer(record=True) as server:
        yield server


@pytest.mark.parametrize("kind", ["httpx", "streams", "streams-general"])
@settings(PROPERTY, max_examples=40)
@given(scripts=st.lists(st.lists(raw_answers(), min_size=1, max_size=3), min_size=1, max_size=4))
def test_real_transports_one_delivery_per_receiver_whatever_the_peer_writes(
    peer: FaultServer, kind: str, scripts: list[list[bytes | str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # "streams" takes the fast lane (StreamTransport drives the first attempts); the
    # general flow with it switched off
    monkeypatch.setattr(flnotify._engine.Engine, "fast_lane", kind != "streams-general")
    example = uuid.uuid4().hex
    rs = []
    for i, script in enumerate(scripts):
        key = f"{example}-{i}"
        peer.scripts[key] = list(script)
        rs.append(flnotify.Receiver(uuid.UUID(int=i + 1), peer.url(f"/script/{key}")))
    timeouts = Timeouts(connect=2.0, read=2.0, write=2.0, total=5.0)
    transport: flnotify.transports.AsyncTransport = (
        HttpxTransport(timeouts=timeouts) if kind == "httpx" else StreamTransport(timeouts=timeouts)
    )
    world = World(scripts=tuple(() for _ in scripts), max_attempts=2)
    callbacks = CountingCallbacks(world)
    retry = flnotify.RetryPolicy(max_attempts=2, initial_backoff=0.0, max_retry_after=0.0)

    async def main() -> flnotify.DeliveryReport:
        async with flnotify.Notifier(transport=transport, retry=retry) as notifier:
            return await asyncio.wait_for(notifier.asend(notification(rs), callbacks), 30)

    with quiet():
        report = asyncio.run(main())
    seen: dict[int, list[Mapping[str, str]]] = {}
    for request in peer.requests:
        if example in request.path:
            index = int(request.path.rsplit("-", 1)[1])
            seen.setdefault(index, []).append(request.headers)
    check_invariants(world, rs, list(report), callbacks, seen, over_sockets=True)
