"""The outbox's driver of the delivery engine: claim, send, record, call back, finish."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from .._attempt import Course, build_delivery
from .._engine import Plan
from .._exceptions import (
    ConfigurationError,
    FlnotifyError,
    InternalError,
    TransportError,
    TransportErrorKind,
)
from .._hooks import NullHook
from .._lease import keep_lease
from .._notification import Notification
from .._report import Delivery
from .._validators import at_least_one, positive
from ..callbacks import Callbacks, run_callbacks
from ._model import Claim, OutboxEntry, OutboxQueue

if TYPE_CHECKING:
    from .._notifier import Notifier

__all__ = ["OutboxDispatcher"]

logger = logging.getLogger("flnotify")


def _stored_delivery(entry: OutboxEntry, notification: Notification[Any], size: int) -> Delivery:
    """The delivery of an outcome recorded by an earlier claim, rebuilt from its row."""
    assert entry.outcome is not None  # noqa: S101 - only called for recorded entries
    error: TransportError | None = None
    if entry.error is not None:
        kind = entry.error_kind or TransportErrorKind.INTERNAL
        url = entry.receiver.message_endpoint
        error = (
            InternalError(entry.error, url=url)
            if kind is TransportErrorKind.INTERNAL
            else TransportError(entry.error, url=url, kind=kind)
        )
    course = Course(0, entry.receiver, entry.message_id, entry.attempts)
    return build_delivery(
        notification,
        course,
        entry.outcome,
        entry.elapsed or 0.0,
        entry.status_code,
        error,
        send_id=entry.batch_id,
        send_size=size,
    )


def _finished() -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


class _Recorder(NullHook):
    """A delivery hook that collects final deliveries until the writer takes them."""

    def __init__(self) -> None:
        self.pending: list[Delivery] = []
        self.wanted = 1
        self.ready = asyncio.Event()

    def on_outcome(self, delivery: Delivery, /) -> None:
        self.pending.append(delivery)
        if len(self.pending) >= self.wanted:
            self.ready.set()

    async def wait_for(self, n: int, timeout: float | None) -> None:
        """Until ``n`` deliveries are pending (or ``timeout`` seconds passed)."""
        if len(self.pending) >= n:
            return
        self.wanted = n
        self.ready.clear()
        if timeout is None:
            await self.ready.wait()
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout)

    def take(self) -> list[Delivery]:
        batch, self.pending = self.pending, []
        return batch


@attrs.define(eq=False)
class OutboxDispatcher:
    """Delivers what an outbox store holds with a [`Notifier`][flnotify.Notifier].

    Each round claims up to ``batch_size`` deliveries, sends them (one run of the engine
    per stored notification, with the stored message ids), records the outcomes in
    batches of up to ``record_batch`` (one statement, one transaction each, at least
    every ``flush_interval`` seconds) and then runs the callbacks for them. While a claim
    is being worked on its lease is renewed every third of ``lease_seconds``, so a slow
    send is never claimed twice; a dispatcher that dies stops renewing, and its
    unfinished deliveries become claimable when the lease ends.

    Args:
        outbox: Where the deliveries are stored: an [`Outbox`][flnotify.outbox.Outbox],
            a [`PostgresOutbox`][flnotify.outbox.PostgresOutbox], or any
            [`OutboxQueue`][flnotify.outbox.OutboxQueue].
        notifier: Sends them (its transport, retry policy, signer, endpoint policy,
            deadline); its ``repository`` builds the notification classes' default
            callbacks.
        callbacks: Called once per recorded outcome instead of the class's defaults.
        lease_seconds: How long a claim is held without renewal; a crashed dispatcher's
            deliveries resume this long after its last renewal.
        batch_size: Deliveries per claim.
        record_batch: Most outcomes recorded per transaction.
        flush_interval: Longest time an outcome waits for others to share its
            transaction (a crash in that window only means a resend with the same id).
        poll_interval: Longest wait of [`arun`][flnotify.outbox.OutboxDispatcher.arun]
            between looks at other dispatchers' leases.
        sleep: Awaited by `arun` while waiting for leases, and between the renewals of
            a claim's lease; inject a fake in tests.
    """

    outbox: OutboxQueue
    notifier: Notifier
    callbacks: Callbacks | None = None
    lease_seconds: float = attrs.field(default=60.0, validator=positive)
    batch_size: int = attrs.field(default=1000, validator=at_least_one)
    record_batch: int = attrs.field(default=500, validator=at_least_one)
    flush_interval: float = attrs.field(default=0.1, validator=positive)
    poll_interval: float = attrs.field(default=1.0, validator=positive)
    sleep: Callable[[float], Awaitable[object]] = attrs.field(default=asyncio.sleep, repr=False)

    def __attrs_post_init__(self) -> None:
        # a send reaches this dispatcher in parts: refuse callbacks that never judge it
        self.notifier.engine.refuse_split_sends_unjudged("OutboxDispatcher", self.callbacks)

    async def arun_once(self) -> int:
        """Claim one batch of deliveries and see each to its outcome and callbacks.

        Returns:
            How many deliveries were claimed (0: nothing was claimable).

        Raises:
            DecodeError: A stored notification's class is unknown to the outbox's codec;
                the claim is released (so are claims interrupted by any other error).
        """
        held = await self._claim()
        if held is None:
            return 0
        return await self._work(*held)

    async def arun(self) -> int:
        """Dispatch until every delivery in the outbox is done.

        The database never holds the sending up: the next claim is taken (and its lease
        kept) while the current one is being sent, and its sending starts as soon as the
        current claim's POSTs are done, while that claim's last outcomes are still being
        recorded. Deliveries claimed by another dispatcher are waited for: finished by
        it, or claimed here once its lease ends (it crashed).

        Returns:
            How many deliveries this dispatcher claimed.
        """
        total = 0
        ahead: asyncio.Task[tuple[Claim, asyncio.Task[None]] | None] | None = None
        tails: list[asyncio.Task[int]] = []  # claims sent, still recording
        try:
            while True:
                held = await (ahead if ahead is not None else self._claim())
                ahead = None
                if held is not None:
                    ahead = asyncio.create_task(self._claim())
                    while len(tails) >= 2:  # recording fell behind: wait for it
                        await tails.pop(0)
                    total += len(held[0].entries)
                    sent = asyncio.Event()
                    work = asyncio.create_task(self._work(*held, sent=sent))
                    tails.append(work)
                    until_sent = asyncio.create_task(sent.wait())
                    await asyncio.wait({work, until_sent}, return_when=asyncio.FIRST_COMPLETED)
                    until_sent.cancel()
                    for done in [t for t in tails if t.done()]:
                        tails.remove(done)
                        done.result()  # its error, if it failed
                    continue
                if tails:  # their rows are not done yet: finish them, then look again
                    while tails:
                        await tails.pop(0)
                    continue
                when = await asyncio.to_thread(self.outbox.next_claimable)
                if when is None:
                    return total
                now = await asyncio.to_thread(self.outbox.now)
                await self.sleep(min(self.poll_interval, max(0.0, when - now)))
        finally:
            for tail in tails:  # stopped by an error: each gives its claim back
                tail.cancel()
            for tail in tails:
                with contextlib.suppress(BaseException):
                    await tail
            if ahead is not None:  # and so does the claim taken ahead
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    held = await ahead
                    if held is not None:
                        await self._give_back(*held)

    async def _claim(self) -> tuple[Claim, asyncio.Task[None]] | None:
        """A claim and the heartbeat that keeps its lease, or ``None`` if nothing is open."""
        claim = await asyncio.to_thread(self.outbox.claim, self.batch_size, self.lease_seconds)
        if not claim.entries:
            return None
        return claim, asyncio.create_task(self._heartbeat(claim))

    async def _give_back(self, claim: Claim, heartbeat: asyncio.Task[None]) -> None:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        with contextlib.suppress(FlnotifyError):
            self.outbox.release(claim)

    async def _work(
        self, claim: Claim, heartbeat: asyncio.Task[None], *, sent: asyncio.Event | None = None
    ) -> int:
        """See every delivery of ``claim`` to its outcome and callbacks.

        ``sent`` is set once every POST of the claim is done (outcomes may still be
        being recorded).
        """
        resumed = sum(1 for e in claim.entries if e.claims > 1)
        if resumed:
            logger.info("outbox: resuming %d delivery(ies) of an earlier claim", resumed)
        writers: list[asyncio.Future[None]] = []
        try:
            groups: dict[str, list[OutboxEntry]] = {}
            for entry in claim.entries:
                groups.setdefault(entry.batch_id, []).append(entry)
            try:
                for batch_id, entries in groups.items():
                    notification = self.outbox.codec.decode(claim.payloads[batch_id])
                    writers.append(await self._deliver(claim, notification, entries))
            finally:
                if sent is not None:
                    sent.set()
            for writer in writers:
                await writer
        except BaseException:
            for writer in writers:
                writer.cancel()
            for writer in writers:
                with contextlib.suppress(BaseException):
                    await writer
            # Give back what is unfinished now rather than when the lease ends; whatever
            # was sent already goes again, with the same message ids (at least once).
            with contextlib.suppress(FlnotifyError):
                self.outbox.release(claim)
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        return len(claim.entries)

    def run_once(self) -> int:
        """Blocking [`arun_once`][flnotify.outbox.OutboxDispatcher.arun_once]."""
        return self.notifier.engine.run_sync(self.arun_once())

    def run(self) -> int:
        """Blocking [`arun`][flnotify.outbox.OutboxDispatcher.arun]."""
        return self.notifier.engine.run_sync(self.arun())

    # -- one claim ---------------------------------------------------------------------

    async def _heartbeat(self, claim: Claim) -> None:
        renew = functools.partial(self.outbox.renew, claim, self.lease_seconds)
        await keep_lease(renew, self.lease_seconds / 3, self.sleep, "outbox")

    async def _deliver(
        self, claim: Claim, notification: Notification[Any], entries: list[OutboxEntry]
    ) -> asyncio.Future[None]:
        """Send the claim's deliveries of one notification; the task recording them.

        Whatever was not recorded yet when the returned task is cancelled stays claimed.
        """
        callbacks = self.callbacks
        if callbacks is None:
            callbacks = self.notifier.engine.default_callbacks(notification)
        # one put is one send, for failure policies: its id and its receivers in all
        batch_id = entries[0].batch_id
        size = claim.sizes.get(batch_id)
        if size is None:  # a store that does not read sizes with its claims
            size = await asyncio.to_thread(self.outbox.batch_size, batch_id)
        send = (batch_id, size)
        recovered = [e for e in entries if e.outcome is not None]
        if recovered:  # recorded by a claim that ended before its callbacks ran
            stored = notification.with_receivers([e.receiver for e in recovered])
            rebuilt = [_stored_delivery(e, stored, send[1]) for e in recovered]
            await self._settle(claim, rebuilt, callbacks)
        todo = [e for e in entries if e.outcome is None]
        if not todo:
            return _finished()
        outgoing = notification.with_receivers([e.receiver for e in todo])
        engine = self.notifier.engine
        refused: FlnotifyError | None = None
        try:
            body = engine.settings.encode(outgoing)
        except ConfigurationError as exc:  # the payload is over the policy's limit
            body, refused = b"", exc  # nothing is sent: every receiver fails with it
        recorder = _Recorder()
        writer = asyncio.create_task(self._write(claim, recorder, len(todo), callbacks))
        try:
            await engine.run(
                Plan(
                    outgoing,
                    body,
                    [e.message_id for e in todo],
                    None,  # callbacks run here, after each outcome is recorded
                    send_id=send[0],
                    send_size=send[1],
                    hooks=(recorder,),
                    refused=refused,
                )
            )
        except BaseException:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            raise
        return writer

    async def _write(
        self, claim: Claim, recorder: _Recorder, expected: int, callbacks: Callbacks | None
    ) -> None:
        """Record deliveries as they arrive, up to ``record_batch`` per transaction."""
        while expected:
            await recorder.wait_for(1, None)
            await recorder.wait_for(min(expected, self.record_batch), self.flush_interval)
            batch = recorder.take()
            expected -= len(batch)
            await self._settle(claim, batch, callbacks, new=True)

    async def _settle(
        self,
        claim: Claim,
        deliveries: list[Delivery],
        callbacks: Callbacks | None,
        *,
        new: bool = False,
    ) -> None:
        """Record (if ``new``) then run callbacks, then mark done: in this order, for a crash."""
        outbox = self.outbox
        if new:
            deliveries = await asyncio.to_thread(
                outbox.record, claim, deliveries, done=callbacks is None
            )
        if callbacks is None:
            if not new:
                await asyncio.to_thread(outbox.finish, claim, [d.message_id for d in deliveries])
            return
        seams = self.notifier.engine.seams
        for delivery in deliveries:
            # a failure is logged at ERROR there (after tries on a busy repository)
            await run_callbacks(callbacks, delivery, sleep=seams.sleep, clock=seams.clock)
        await asyncio.to_thread(outbox.finish, claim, [d.message_id for d in deliveries])
