"""The delivery invariant on the mailbox driver, against hostile clients and a failing store.

One send mixes pushed receivers (a hostile transport) and polling ones. Each polling client
follows a script per offer: acknowledge with any status, fetch and never acknowledge, or
stay away; the store fails some of its first calls. Whatever happens: one Delivery and one
callback per receiver, typed errors, one message id per receiver on every offer, a
delivered poller acknowledged 2xx, and the send ends.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.errors
from flnotify import Outcome, Receiver
from flnotify.errors import MailboxError
from flnotify.mailbox import MAILBOX_ENDPOINT, Mailbox
from helpers.hostile import (
    PROPERTY,
    CountingCallbacks,
    HostileTransport,
    World,
    check_attempts_paired,
    check_component_named,
    hostile_notifier,
    notification,
    quiet,
    receivers,
    worlds,
)
from helpers.mailbox_env import Clock

ACTIONS = st.one_of(
    st.tuples(st.just("ack"), st.integers(100, 599)),
    st.tuples(st.just("ack"), st.sampled_from([200, 204, 410, 503])),
    st.tuples(st.sampled_from(["drop", "away"]), st.just(0)),
)
FAULTY = ("post", "answers", "requeue", "settle", "renew")


class FailingStore:
    """A Mailbox whose methods fail their first calls as told; tells of each answers()."""

    def __init__(self, store: Mailbox, faults: dict[str, tuple[int, bool]]) -> None:
        self.store = store
        self.faults = {name: n for name, (n, _) in faults.items()}
        self.typed = {name: typed for name, (_, typed) in faults.items()}
        self.loop = asyncio.get_running_loop()
        self.looked = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        if name not in FAULTY:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.faults.get(name, 0) > 0:
                self.faults[name] -= 1
                raise (MailboxError if self.typed[name] else RuntimeError)(f"{name} broke")
            try:
                return method(*args, **kwargs)
            finally:
                if name == "answers":
                    self.loop.call_soon_threadsafe(self.looked.set)

        return call


@settings(PROPERTY, max_examples=60)
@given(
    world=worlds(max_receivers=5),
    polling=st.sets(st.integers(0, 4), min_size=1),
    scripts=st.lists(st.lists(ACTIONS, min_size=1, max_size=4), min_size=5, max_size=5),
    faults=st.dictionaries(st.sampled_from(FAULTY), st.tuples(st.integers(0, 2), st.booleans())),
)
def test_one_delivery_and_one_callback_per_receiver_pushed_or_polling(
    world: World,
    polling: set[int],
    scripts: list[list[tuple[str, int]]],
    faults: dict[str, tuple[int, bool]],
    tmp_path: Path,
) -> None:
    rs = receivers(world)
    polls = sorted(i for i in polling if i < world.n)
    for i in polls:
        rs[i] = Receiver(rs[i].id, MAILBOX_ENDPOINT)
    transport = HostileTransport(world, [r.message_endpoint for r in rs])
    callbacks = CountingCallbacks(world)
    clock = Clock()
    store = Mailbox(
        tmp_path / f"mail-{uuid.uuid4().hex}.db", clock=clock, ack_deadline=60, visibility=10
    )
    failing: FailingStore
    offered: dict[int, list[str]] = {i: [] for i in polls}
    acked: dict[int, list[int]] = {i: [] for i in polls}

    async def client(send: asyncio.Task[flnotify.DeliveryReport]) -> None:
        """The polling clients, one round per look of the judge, until the send ends."""
        steps = dict.fromkeys(polls, 0)
        while not send.done():
            failing.looked.clear()
            for i in polls:
                script = scripts[i]
                action, status = script[min(steps[i], len(script) - 1)]
                if action == "away":
                    steps[i] += 1
                    continue
                for letter in store.fetch(rs[i].id, 10):
                    offered[i].append(letter.message_id)
                    steps[i] += 1
                    if action == "ack" and store.ack(rs[i].id, [(letter.message_id, status)]):
                        acked[i].append(status)
            clock.advance(11)  # the visibility passes; the deadline after a few rounds
            store.signals.answered()
            look = asyncio.create_task(failing.looked.wait())
            await asyncio.wait({send, look}, return_when=asyncio.FIRST_COMPLETED)
            look.cancel()

    notifiers: list[flnotify.Notifier] = []

    async def main() -> flnotify.DeliveryReport:
        nonlocal failing
        failing = FailingStore(store, faults)
        notifier = hostile_notifier(world, transport)
        notifiers.append(notifier)
        notifier.mailbox = failing
        async with notifier:
            send = asyncio.create_task(notifier.asend(notification(rs), callbacks))
            await asyncio.wait_for(asyncio.gather(send, client(send)), 60)
            return send.result()

    with quiet():
        report = asyncio.run(main())
    store.close()
    check_attempts_paired(notifiers[0])
    assert [d.receiver for d in report] == rs
    assert set(callbacks.calls) == {r.id for r in rs}
    assert all(len(calls) == 1 for calls in callbacks.calls.values())
    for i, d in enumerate(report):
        assert callbacks.calls[d.receiver.id][0] is d
        d.describe()
        if d.error is not None:
            assert isinstance(d.error, flnotify.errors.FlnotifyError)
            check_component_named(d.error)
        if i not in polls:
            assert d.attempts == len(transport.seen.get(i, []))
            continue
        assert set(offered[i]) <= {d.message_id}  # one id, however often offered
        assert d.attempts == len(offered[i])  # each offer is one attempt
        if d.outcome is Outcome.DELIVERED:
            assert d.status_code in acked[i]
            assert d.status_code is not None
            assert 200 <= d.status_code < 300
        elif d.outcome is Outcome.REJECTED or d.error is None:
            # rejected, or failed on a retryable acknowledgement when the budget ran out
            assert d.status_code in acked[i]
