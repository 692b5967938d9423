"""The mailbox's driver of the delivery core: post letters, wait for answers, judge them.

A polling receiver (``message_endpoint`` ``"mailbox:"``) is not POSTed to: its notification
is posted to a [`MailboxStore`][flnotify.mailbox.MailboxStore], the mailbox app offers it to
the client (the headers made by the core's
[`attempt_headers`][flnotify._attempt.attempt_headers] at each fetch), and the client's
acknowledgement comes back as an answer. [`MailLeg`][flnotify.mailbox._route.MailLeg] waits for the
answers and has the core judge each one like the answer of a POST
([`Core.answered`][flnotify._attempt.Core.answered]): delivered, rejected, offered again
after a retry delay, or failed at the acknowledgement deadline. The judging process holds a
renewable lease; if it stops, a [`MailboxDispatcher`][flnotify.mailbox.MailboxDispatcher]
adopts the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import cast
from uuid import UUID

from .._attempt import Core, Course, internal_error
from .._engine import Route, Send
from .._exceptions import ConfigurationError, InvalidURLError, TransportError, TransportErrorKind
from .._lease import keep_lease
from .._report import Delivery
from .._types import HttpResponse, ReceiverLike
from ._store import Answer, MailboxStore
from ._wire import MAILBOX_ENDPOINT, is_mailbox

__all__ = [
    "ANSWER_POLL_SECONDS",
    "DEFAULT_MAILBOX_LEASE",
    "MailLeg",
    "MailboxRoute",
    "UnservedMailboxRoute",
    "mailbox_route",
    "new_owner",
    "post_letters",
]

logger = logging.getLogger("flnotify")

DEFAULT_MAILBOX_LEASE = 60.0
"""Seconds a sender's hold on the messages it posted lasts without renewal, by default."""

ANSWER_POLL_SECONDS = 0.5
"""How often a judge asks its store for answers that another process took (and deadlines)."""


def new_owner() -> str:
    """A fresh judge id: the owner of a lease on posted messages."""
    return "jdg_" + secrets.token_hex(12)


async def post_letters(
    store: MailboxStore,
    core: Core,
    courses: Iterable[Course],
    owner: str,
    lease_seconds: float,
) -> tuple[list[Course], list[Delivery]]:
    """Post the core's body for each course; the posted courses and the refused deliveries.

    A receiver whose id is not a UUID fails alone (the mailbox is keyed by it); if the
    store refuses the post, every course fails with the store's error.
    """
    posted: list[Course] = []
    refused: list[Delivery] = []
    for course in courses:
        course.url = MAILBOX_ENDPOINT
        if isinstance(course.receiver.id, UUID):
            posted.append(course)
        else:
            error = internal_error(
                "the mailbox",
                ConfigurationError(f"receiver id {course.receiver.id!r} is not a UUID"),
                MAILBOX_ENDPOINT,
            )
            refused.append(core.fail(course, error))
    if not posted:
        return posted, refused
    letters = [(course.receiver.id, course.message_id) for course in posted]
    try:
        await asyncio.to_thread(
            store.post,
            core.send_id,
            core.send_size,
            core.body,
            letters,
            owner=owner,
            lease_seconds=lease_seconds,
        )
    except Exception as exc:
        error = internal_error("the mailbox", exc, MAILBOX_ENDPOINT)
        refused.extend(core.fail(course, error) for course in posted)
        return [], refused
    return posted, refused


def acknowledged(
    core: Core, course: Course, status: int | None, fetches: int, deadline: float
) -> float | Delivery:
    """Judge a polling receiver's acknowledgement exactly like the answer of a POST.

    Args:
        core: The send's core.
        course: The receiver.
        status: The status its handler answered, or ``None`` if the mailbox's
            acknowledgement deadline passed first (then the receiver fails).
        fetches: How often the client fetched the message (its attempts).
        deadline: The mailbox's acknowledgement deadline (seconds), for the message.

    Returns:
        Seconds after which the message is offered again, or the final delivery.
    """
    course.attempts = max(course.attempts, fetches)
    if status is None:
        what = (
            "never fetched" if fetches == 0 else f"fetched {fetches} time(s) but not acknowledged"
        )
        error = TransportError(
            f"{what} within the mailbox's deadline of {deadline:g} s",
            url=course.url,
            kind=TransportErrorKind.DEADLINE,
        )
        return core.fail(course, error)
    core.observed(course)
    return core.judge(course, HttpResponse(status))


class MailLeg:
    """Waits for the answers of posted messages and has the core judge them.

    Args:
        store: Where the messages are.
        core: Judges each answer (the send's retry policy, hooks, send id).
        courses: One per message still to judge, by message id.
        owner: The lease the messages are held under.
        lease_seconds: How long the lease lasts without renewal (renewed every third).
        settle: Called with each batch of final deliveries, in order; it records them.
        poll_interval: Seconds between looks at the store when no in-process signal came.
    """

    def __init__(
        self,
        store: MailboxStore,
        core: Core,
        courses: Iterable[Course],
        owner: str,
        lease_seconds: float,
        settle: Callable[[list[Delivery]], Awaitable[None]],
        poll_interval: float = ANSWER_POLL_SECONDS,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.core = core
        self.pending = {course.message_id: course for course in courses}
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.settle = settle
        self.poll_interval = poll_interval
        self.sleep = sleep

    async def run(self) -> None:
        """Until every message is judged final; the lease is kept meanwhile."""
        if not self.pending:
            return
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(woken.set)

        unsubscribe = self.store.signals.on_answer(wake)
        heartbeat = loop.create_task(self._heartbeat())
        # If the store cannot tell (it is down), the deadline is still kept, by this clock.
        give_up = loop.time() + self.store.ack_deadline + 4 * self.poll_interval
        try:
            while self.pending:
                if loop.time() > give_up:
                    await self._give_up()
                    return
                woken.clear()
                try:
                    answers = await asyncio.to_thread(self.store.answers, self.owner)
                except Exception:  # a store that is down: its deadline is kept above
                    logger.warning("mailbox: could not read answers", exc_info=True)
                    answers = []
                # Answers judged before stay answered until their outcome is recorded
                # (after the send's callbacks): only answers not judged yet are news.
                if await self._judge(answers):
                    continue
                await self._wait(woken)
        finally:
            unsubscribe()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _wait(self, woken: asyncio.Event) -> None:
        """Until an in-process signal of answers, or ``poll_interval`` passed."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(woken.wait(), self.poll_interval)

    async def _judge(self, answers: list[Answer]) -> bool:
        """Judge the answers of messages still pending; whether there was one."""
        core = self.core
        deadline = self.store.ack_deadline
        final: list[Delivery] = []
        retries: list[tuple[str, float]] = []
        for answer in answers:
            course = self.pending.get(answer.message_id)
            if course is None:  # not this leg's (another send under the same owner)
                continue
            try:
                step = acknowledged(core, course, answer.status, answer.fetches, deadline)
            except Exception as exc:  # the core catches everything; this is its own bug
                step = core.fail(course, internal_error("the mailbox driver", exc, course.url))
            if type(step) is float:
                retries.append((answer.message_id, step))
            else:
                assert isinstance(step, Delivery)  # noqa: S101 - the core returns one of two
                final.append(step)
        if retries:
            try:
                await asyncio.to_thread(self.store.requeue, self.owner, retries)
            except Exception as exc:
                error = internal_error("the mailbox", exc, MAILBOX_ENDPOINT)
                final.extend(core.fail(self.pending[mid], error) for mid, _ in retries)
        for delivery in final:
            self.pending.pop(delivery.message_id, None)
        if final:
            await self.settle(final)
        return bool(final or retries)

    async def _give_up(self) -> None:
        """Fail what is still pending: the deadline passed and the store did not say so."""
        deadline = self.store.ack_deadline
        final = [
            cast(Delivery, acknowledged(self.core, course, None, course.attempts, deadline))
            for course in self.pending.values()
        ]  # with no status, always a (failed) delivery
        self.pending.clear()
        await self.settle(final)

    async def _heartbeat(self) -> None:
        renew = functools.partial(self.store.renew, self.owner, self.lease_seconds)
        await keep_lease(renew, self.lease_seconds / 3, self.sleep, "mailbox")


def _polling(receivers: Sequence[ReceiverLike]) -> list[int]:
    """The indices of the receivers that poll a mailbox (endpoint ``"mailbox:"``).

    One comprehension for the common case; a receiver whose endpoint cannot be read is
    left to the push route, whose core fails it with the error.
    """
    try:
        return [i for i, r in enumerate(receivers) if is_mailbox(r.message_endpoint)]
    except Exception:
        return [i for i, r in enumerate(receivers) if _polls(r)]


def _polls(receiver: ReceiverLike) -> bool:
    try:
        return is_mailbox(receiver.message_endpoint)
    except Exception:
        return False


class UnservedMailboxRoute:
    """Polling receivers of an engine without a mailbox: each fails, saying why."""

    def take(self, receivers: Sequence[ReceiverLike]) -> list[int]:
        """Receivers whose endpoint is ``"mailbox:"``."""
        return _polling(receivers)

    async def deliver(self, send: Send, indices: Sequence[int]) -> None:
        """Fail each receiver: there is no mailbox to put its notification in."""
        for index in indices:
            course = send.course(index)
            course.url = MAILBOX_ENDPOINT
            error = InvalidURLError(
                f"{MAILBOX_ENDPOINT!r} marks a receiver that polls a mailbox, but this"
                " Notifier has none (Notifier(mailbox=...))",
                url=MAILBOX_ENDPOINT,
            )
            send.record(index, send.core.fail(course, error))


class MailboxRoute:
    """Polling receivers: their letters go to a mailbox; their acknowledgements are answers.

    The settle order of a route that keeps a record: an outcome is recorded on the send
    (its callbacks run), and only after those callbacks the store marks the message done,
    so a process that dies in between leaves it for a
    [`MailboxDispatcher`][flnotify.mailbox.MailboxDispatcher] to judge again.

    Args:
        store: The mailbox.
        lease_seconds: How long the hold on posted messages lasts without renewal.
    """

    def __init__(self, store: MailboxStore, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds

    def take(self, receivers: Sequence[ReceiverLike]) -> list[int]:
        """Receivers whose endpoint is ``"mailbox:"``."""
        return _polling(receivers)

    async def deliver(self, send: Send, indices: Sequence[int]) -> None:
        """Post the letters, then judge the answers until each receiver has an outcome."""
        store, core = self.store, send.core
        started = send.engine.seams.clock()
        courses = []
        for index in indices:
            course = send.course(index)
            if course.started is None:
                course.started = started
            courses.append(course)
        by_id = {course.message_id: course.index for course in courses}
        owner = new_owner()

        async def mark_done(deliveries: list[Delivery]) -> None:
            try:
                kept = await asyncio.to_thread(store.settle, owner, deliveries)
            except Exception:
                logger.exception("mailbox: could not record %d outcome(s)", len(deliveries))
                return
            if len(kept) < len(deliveries):
                logger.warning(
                    "mailbox: %d outcome(s) were judged elsewhere too (the lease of this"
                    " send ended while it waited)",
                    len(deliveries) - len(kept),
                )

        async def settle(deliveries: list[Delivery]) -> None:
            for delivery in deliveries:
                send.record(by_id[delivery.message_id], delivery)
            send.then(lambda: mark_done(deliveries))

        try:
            posted, refused = await post_letters(store, core, courses, owner, self.lease_seconds)
            for delivery in refused:
                send.record(by_id[delivery.message_id], delivery)
            sleep = send.engine.seams.sleep
            await MailLeg(store, core, posted, owner, self.lease_seconds, settle, sleep=sleep).run()
        except asyncio.CancelledError:
            # The send's deadline failed the rest (expire() recorded them first): once the
            # callbacks of what was decided here ran, mark it done and let a dispatcher
            # adopt the others at once. The send was cancelled: its callbacks will not run,
            # so nothing is marked done; a dispatcher adopts and judges it all again.
            if not send.expired:
                try:
                    store.release(owner)
                except Exception:
                    logger.exception("mailbox: could not give up the messages of a stopped send")
                raise
            ended = [d for c in courses if (d := send.result(c.index)) is not None]

            async def give_up() -> None:
                try:
                    if ended:
                        await asyncio.to_thread(store.settle, owner, ended)
                    await asyncio.to_thread(store.release, owner)
                except Exception:
                    logger.exception("mailbox: could not give up the messages of a stopped send")

            send.then(give_up)
            raise
        except Exception as exc:  # the route itself broke: still one outcome each
            logger.exception("The engine failed while waiting for its mailbox.")
            error = internal_error("the engine's mailbox route", exc, MAILBOX_ENDPOINT)
            for course in courses:
                if send.result(course.index) is None:
                    send.record(course.index, core.fail(course, error))


def mailbox_route(store: MailboxStore | None, lease_seconds: float) -> Route:
    """The route of polling receivers: through ``store``, or failing each if there is none.

    Raises:
        ConfigurationError: ``lease_seconds`` is not a number of seconds > 0.
    """
    if isinstance(lease_seconds, bool) or not (
        isinstance(lease_seconds, (int, float)) and lease_seconds > 0
    ):
        msg = f"mailbox_lease must be a number of seconds > 0, got {lease_seconds!r}"
        raise ConfigurationError(msg)
    if store is None:
        return UnservedMailboxRoute()
    return MailboxRoute(store, lease_seconds)
