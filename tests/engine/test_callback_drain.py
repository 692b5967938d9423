"""The callbacks' drain: batches, sync callbacks called in the pass, the settle order kept.

A route records outcomes and then-steps in bursts (as the fast lane and the dispatchers
do). Whatever the bursts and the callbacks (sync, async, raising, busy once), each receiver
gets one callback call, a raising one is reported as one ``CallbackError``, at most
``CALLBACKS_AT_ONCE`` async callbacks run at once, a then-step runs only once every
callback recorded before it has ended, and the sync callbacks of one burst run in one pass
(the loop does not turn between them).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.testing
from flnotify import Receiver
from flnotify._engine import CALLBACKS_AT_ONCE, Engine, Plan, Send
from flnotify._types import ReceiverLike
from flnotify.errors import RepositoryBusyError, TransportError, TransportErrorKind
from flnotify.testing import MemoryTransport
from helpers.hostile import notification

KINDS = st.sampled_from(["sync", "async", "raises", "async-raises", "busy-once"])
BURSTS = st.lists(
    st.tuples(st.lists(KINDS, min_size=1, max_size=40), st.booleans()), min_size=1, max_size=6
)


class Bursts:
    """Records every receiver in the given bursts; a burst may end with a then-step."""

    def __init__(self, bursts: Sequence[tuple[int, bool]], log: list[Any]) -> None:
        self.bursts = bursts
        self.log = log
        self.burst_of: dict[int, int] = {}

    def take(self, receivers: Sequence[ReceiverLike]) -> list[int]:
        return list(range(len(receivers)))

    async def deliver(self, send: Send, indices: Sequence[int]) -> None:
        index = 0
        for number, (size, then) in enumerate(self.bursts):
            for _ in range(size):
                error = TransportError("down", kind=TransportErrorKind.CONNECT)
                self.burst_of[index] = number
                send.record(index, send.core.fail(send.course(index), error))
                index += 1
            if then:
                n = index

                async def step(n: int = n) -> None:
                    self.log.append(("then", n))

                send.then(step)
            await asyncio.sleep(0)  # the next burst in a later turn of the loop


class Callbacks:
    def __init__(self, kinds: Sequence[str], log: list[Any], ticks: list[int]) -> None:
        self.kinds = kinds
        self.log = log
        self.ticks = ticks  # turns of the loop so far
        self.sync_ticks: dict[int, int] = {}  # receiver -> the turn its sync callback ran in
        self.running = 0
        self.most = 0
        self.busy: set[int] = set()

    def on_success(self, delivery: flnotify.Delivery, /) -> None:
        raise AssertionError("nothing is delivered here")

    def on_error(self, delivery: flnotify.Delivery, /) -> Any:
        index = int(delivery.receiver.id)
        kind = self.kinds[index]
        if kind == "sync":
            self.sync_ticks[index] = self.ticks[0]
            self.log.append(("called", index))
            return None
        if kind == "raises":
            self.log.append(("called", index))
            raise ValueError(index)
        if kind == "busy-once" and index not in self.busy:
            self.busy.add(index)
            raise RepositoryBusyError("busy")
        return self.slow(index, kind)

    async def slow(self, index: int, kind: str) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            self.running -= 1
        self.log.append(("called", index))
        if kind == "async-raises":
            raise ValueError(index)


async def _no_wait(_: float) -> None:
    return None


def _ticker(ticks: list[int]) -> None:
    """Count the turns of the loop (rescheduled at each; dropped when the loop closes)."""
    ticks[0] += 1
    asyncio.get_running_loop().call_soon(_ticker, ticks)


async def _run(engine: Engine, plan: Plan, ticks: list[int]) -> flnotify._engine.Run:
    asyncio.get_running_loop().call_soon(_ticker, ticks)
    return await engine.run(plan)


@settings(max_examples=60, deadline=None)
@given(bursts=BURSTS)
def test_each_burst_settles_in_order_one_callback_per_receiver(
    bursts: list[tuple[list[str], bool]],
) -> None:
    kinds = [kind for burst, _ in bursts for kind in burst]
    log: list[Any] = []
    ticks = [0]
    callbacks = Callbacks(kinds, log, ticks)
    route = Bursts([(len(burst), then) for burst, then in bursts], log)
    with flnotify.testing.seams(sleep=_no_wait):  # busy repositories: tried at once
        engine = Engine(flnotify.Settings(transport=MemoryTransport()), routes=(route,))
    receivers = [Receiver(uuid.UUID(int=i), "https://example.org/hook") for i in range(len(kinds))]
    ids = [f"msg_{i}" for i in range(len(kinds))]
    run = asyncio.run(_run(engine, Plan(notification(receivers), b"{}", ids, callbacks), ticks))
    called = [entry[1] for entry in log if entry[0] == "called"]
    assert sorted(called) == list(range(len(kinds)))  # one call each
    raising = {i for i, kind in enumerate(kinds) if kind in ("raises", "async-raises")}
    assert sorted(int(e.delivery.receiver.id) for e in run.report.callback_errors) == sorted(
        raising
    )
    assert callbacks.most <= CALLBACKS_AT_ONCE
    done: set[int] = set()
    for entry in log:
        if entry[0] == "called":
            done.add(entry[1])
        elif entry[0] == "then":  # every callback recorded before it has ended
            assert set(range(entry[1])) <= done
    assert [e for e in log if e[0] == "then"] == [
        ("then", n) for n in _then_points([(len(b), t) for b, t in bursts])
    ]
    if callbacks.most < CALLBACKS_AT_ONCE:  # the drain never waited for a free slot
        # the sync callbacks of one burst were called in one pass: in one turn of the loop
        turns: dict[int, set[int]] = {}
        for index, tick in callbacks.sync_ticks.items():
            turns.setdefault(route.burst_of[index], set()).add(tick)
        assert all(len(seen) == 1 for seen in turns.values()), turns


def _then_points(bursts: list[tuple[int, bool]]) -> list[int]:
    points, index = [], 0
    for size, then in bursts:
        index += size
        if then:
            points.append(index)
    return points
