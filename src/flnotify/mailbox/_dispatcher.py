"""Judges mailbox messages whose sender stopped (a restart): adopt, wait, call back, settle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs

from .._attempt import Course
from .._report import Delivery
from .._types import Receiver
from .._validators import at_least_one, positive
from ..callbacks import Callbacks, run_callbacks
from ._route import MailLeg, new_owner
from ._store import Adopted, MailboxStore
from ._wire import MAILBOX_ENDPOINT

if TYPE_CHECKING:
    from .._notifier import Notifier

__all__ = ["MailboxDispatcher"]

logger = logging.getLogger("flnotify")


@attrs.define(eq=False)
class MailboxDispatcher:
    """Sees the messages of stopped senders to their outcomes and callbacks.

    A [`Notifier`][flnotify.Notifier] that posts to a mailbox judges the answers itself
    while its send runs, under a lease it renews. When it stops (the server restarts, the
    send is cancelled), its messages stay queued and their clients can still fetch and
    acknowledge them; a dispatcher adopts them once the lease ended, judges each answer
    with the same core (the notifier's retry policy), fails what passes its
    acknowledgement deadline, runs the callbacks (the notification classes' defaults,
    built with the notifier's repository, unless ``callbacks`` is given) and then records
    the outcome. Callbacks run at least once: a dispatcher that stops between them and the
    record leaves the message to the next one.

    Args:
        mailbox: The store.
        notifier: Supplies the retry policy, hooks, repository and failure policy.
        callbacks: Called once per outcome instead of the classes' defaults.
        lease_seconds: How long an adoption holds without renewal.
        batch_size: Most messages adopted per look.
        poll_interval: Seconds between looks for messages to adopt.
        sleep: Awaited between looks and between lease renewals; inject a fake in tests.
    """

    mailbox: MailboxStore
    notifier: Notifier
    callbacks: Callbacks | None = None
    lease_seconds: float = attrs.field(default=60.0, validator=positive)
    batch_size: int = attrs.field(default=1000, validator=at_least_one)
    poll_interval: float = attrs.field(default=1.0, validator=positive)
    sleep: Callable[[float], Awaitable[object]] = attrs.field(default=asyncio.sleep, repr=False)
    _owner: str = attrs.field(init=False, factory=new_owner, repr=False)

    def __attrs_post_init__(self) -> None:
        # a send reaches this dispatcher in parts: refuse callbacks that never judge it
        self.notifier.engine.refuse_split_sends_unjudged("MailboxDispatcher", self.callbacks)

    async def arun_once(self) -> int:
        """Adopt what is orphaned now and see it to its outcomes; how many were adopted."""
        adopted, legs = await self._adopt()
        await asyncio.gather(*(leg.run() for leg in legs))
        return adopted

    async def arun(self) -> None:
        """Adopt and judge until cancelled; each look starts the judging of what it took."""
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    _, legs = await self._adopt()
                except Exception:  # the store is down: look again later
                    logger.warning("mailbox: could not adopt messages", exc_info=True)
                    legs = []
                for leg in legs:
                    task = asyncio.get_running_loop().create_task(leg.run())
                    running.add(task)
                    task.add_done_callback(running.discard)
                await self.sleep(self.poll_interval)
        finally:
            for task in running:
                task.cancel()
            for task in list(running):
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.mailbox.release, self._owner)

    def run_once(self) -> int:
        """Blocking [`arun_once`][flnotify.mailbox.MailboxDispatcher.arun_once]."""
        return self.notifier.engine.run_sync(self.arun_once())

    # -- one look ------------------------------------------------------------------------

    async def _adopt(self) -> tuple[int, list[MailLeg]]:
        adopted = await asyncio.to_thread(
            self.mailbox.adopt, self._owner, self.lease_seconds, self.batch_size
        )
        if adopted:
            logger.info("mailbox: adopted %d message(s) of a stopped sender", len(adopted))
        groups: dict[str, list[Adopted]] = {}
        for message in adopted:
            groups.setdefault(message.send_id, []).append(message)
        legs = []
        for messages in groups.values():
            leg = self._leg(messages)
            if leg is not None:
                legs.append(leg)
        return len(adopted), legs

    def _leg(self, messages: list[Adopted]) -> MailLeg | None:
        """The judging of one send's adopted messages (``None``: it cannot be decoded)."""
        first = messages[0]
        try:
            decoded = self.mailbox.codec.decode(first.payload)
        except Exception:
            logger.exception(
                "mailbox: cannot decode send %s; its %d message(s) wait for a codec that can",
                first.send_id,
                len(messages),
            )
            return None
        notification = decoded.with_receivers(
            [Receiver(m.client_id, MAILBOX_ENDPOINT) for m in messages]
        )
        engine = self.notifier.engine
        core = engine.core(notification, first.payload, first.send_id, first.send_size)
        started = engine.seams.clock()
        courses = []
        for index, message in enumerate(messages):
            course = Course(index, notification.receivers[index], message.message_id)
            course.url, course.started = MAILBOX_ENDPOINT, started
            courses.append(course)
        callbacks = self.callbacks
        if callbacks is None:
            callbacks = engine.default_callbacks(notification)
        return MailLeg(
            self.mailbox,
            core,
            courses,
            self._owner,
            self.lease_seconds,
            lambda deliveries: self._settle(deliveries, callbacks),
            sleep=self.sleep,
        )

    async def _settle(self, deliveries: list[Delivery], callbacks: Callbacks | None) -> None:
        """Callbacks first, then the record: a stop in between runs them again, never not."""
        if callbacks is not None:
            seams = self.notifier.engine.seams
            for delivery in deliveries:
                # a failure is logged at ERROR there (after tries on a busy repository)
                await run_callbacks(callbacks, delivery, sleep=seams.sleep, clock=seams.clock)
        try:
            await asyncio.to_thread(self.mailbox.settle, self._owner, deliveries)
        except Exception:  # left answered: adopted again once this lease ends
            logger.exception("mailbox: could not record %d outcome(s)", len(deliveries))
