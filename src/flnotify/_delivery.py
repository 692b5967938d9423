"""The Notifier: encode once, fan out concurrently, retry without blocking, report everything.

The Notifier is the asyncio driver of the delivery core (``_attempt``): it decides where
attempts run and how they wait; the core decides everything else. Per receiver there is
exactly one [`Delivery`][flnotify.Delivery] and one callback call, whatever a peer sends or a
component raises. ``Notifier.send`` runs the engine on a private event loop thread, so it
works from plain sync code and from inside a running event loop alike. The Celery task and
the outbox dispatcher drive the same engine (``Notifier._deliver``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs

from ._attempt import Core, Course, internal_error, message_ids_for, new_send_id
from ._closing import AsyncClosing, Closing
from ._codec import Codec
from ._exceptions import (
    CallbackError,
    ConfigurationError,
    FlnotifyError,
    TransportError,
    TransportTimeoutError,
)
from ._exceptions import TransportErrorKind as Kind
from ._hooks import DeliveryHook, HookSet
from ._mailwire import MAILBOX_ENDPOINT, is_mailbox
from ._notification import Notification
from ._pull import MailLeg, new_owner, post_letters
from ._report import Delivery, DeliveryReport
from ._retry import RetryPolicy
from ._types import HttpResponse
from ._validators import at_least_one, positive
from ._version import __version__
from .callbacks import Callbacks, FailurePolicy, default_callbacks_for, run_callbacks
from .endpoints import EndpointPolicy
from .health import CircuitBreaker
from .transports._base import AsyncTransport, Transport

if TYPE_CHECKING:
    from ._mailbox import MailboxStore
    from .repository import AsyncTrainingRepository, TrainingRepository
    from .signing import Signer

__all__ = ["Notifier"]

logger = logging.getLogger("flnotify")
T = TypeVar("T")
Post = Callable[[str, bytes, dict[str, str]], Awaitable[HttpResponse]]


def _default_transport() -> AsyncTransport:
    """The lean asyncio transport: httptools parses if installed, h11 (httpx's) otherwise.

    Measured with 1,000 receivers on 100 loopback origins, it is several times a plain
    ``httpx.Client`` loop even without httptools (docs/benchmarks.md); ``HttpxTransport``
    is there for proxies, custom httpx clients and respx-style tests.
    """
    from .transports._streams import StreamTransport

    return StreamTransport()


def _pins(transport: object) -> bool:
    """Whether ``transport.apost`` takes ``connect_to=`` (the checked address to connect to)."""
    return getattr(transport, "pins_connections", False) is True and hasattr(transport, "apost")


def _polls(receiver: Any) -> bool:
    """Whether a receiver polls a mailbox (a broken receiver is the core's to fail)."""
    try:
        return is_mailbox(receiver.message_endpoint)
    except Exception:
        return False


def _hooks(value: Sequence[DeliveryHook]) -> tuple[DeliveryHook, ...]:
    return tuple(value)


@attrs.frozen
class _Resume:
    """Where each receiver of a resumed send stands (Celery retries): attempts and start."""

    attempts: int
    started: float


@attrs.frozen
class _Run:
    """What one run of the engine produced: final deliveries, and the retries it deferred."""

    report: DeliveryReport
    deferred: tuple[tuple[int, float], ...] = ()
    """(receiver index, seconds until its next attempt), when retries are deferred."""


@attrs.define
class Notifier(Closing, AsyncClosing):
    """Sends notifications to their receivers; reusable, and closed when done.

    Args:
        transport: How POSTs are made; anything with ``apost`` (preferred) or ``post``.
            Defaults to a [`StreamTransport`][flnotify.transports.StreamTransport] (TLS
            verified, no proxy); pass an
            [`HttpxTransport`][flnotify.transports.HttpxTransport] for proxies or respx.
        retry: When to try again.
        concurrency: At most this many POSTs in flight at once; receivers waiting for a
            retry do not hold a slot.
        deadline: Seconds a whole send may take; what is still pending then is reported
            as failed (kind ``DEADLINE``) and its callbacks are called.
        signer: Signs each attempt (Standard Webhooks); unsigned without one.
        policy: Which endpoints may be POSTed to, checked before any I/O.
        repository: Lets notification classes with default callbacks (the round-type
            ones) build them, e.g. [`TrainingCallbacks`][flnotify.TrainingCallbacks].
        codec: Encodes the notification (once per send).
        hooks: Observers of attempts and outcomes (progress, metrics, tracing).
        breaker: Skips endpoints that keep failing (a circuit breaker per endpoint); none
            by default.
        failure_policy: When a send puts its training into ``ERROR`` (the default
            callbacks' policy); strict by default: any failure does.
        attempt_timeout: Upper bound of one attempt for transports that do not bound
            attempts themselves (flnotify's own enforce their ``Timeouts.total``).
        sleep: Awaited for each backoff; inject a fake in tests.
        clock: Monotonic seconds, for ``elapsed``.
        wall_clock: Epoch seconds, for ``webhook-timestamp`` and ``Retry-After`` dates.
        rng: Jitter source returning floats in [0, 1).
        user_agent: The ``User-Agent`` header.
        mailbox: Where notifications for polling receivers (``message_endpoint``
            ``"mailbox:"``) wait for their clients, e.g. a
            [`Mailbox`][flnotify.mailbox.Mailbox]; a send waits for their
            acknowledgements like for the answers of its POSTs.
        mailbox_lease: Seconds this Notifier's hold on the messages it posted lasts without
            renewal (renewed every third); if it stops, a
            [`MailboxDispatcher`][flnotify.mailbox.MailboxDispatcher] adopts them after that.
    """

    transport: AsyncTransport | Transport = attrs.field(factory=_default_transport)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    concurrency: int = attrs.field(default=100, validator=at_least_one)
    deadline: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive)
    )
    signer: Signer | None = None
    policy: EndpointPolicy = attrs.field(factory=EndpointPolicy)
    repository: TrainingRepository | AsyncTrainingRepository | None = None
    codec: Codec = attrs.field(factory=Codec)
    hooks: tuple[DeliveryHook, ...] = attrs.field(default=(), converter=_hooks)
    breaker: CircuitBreaker | None = None
    failure_policy: FailurePolicy = attrs.field(factory=FailurePolicy)
    attempt_timeout: float = attrs.field(default=30.0, validator=positive)
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    rng: Callable[[], float] = random.random
    user_agent: str = f"flnotify/{__version__}"
    mailbox: MailboxStore | None = None
    mailbox_lease: float = attrs.field(default=60.0, validator=positive)
    _portal: _Portal | None = attrs.field(init=False, default=None, repr=False)
    _executor: concurrent.futures.ThreadPoolExecutor | None = attrs.field(
        init=False, default=None, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if not hasattr(self.transport, "apost") and not hasattr(self.transport, "post"):
            msg = f"{type(self.transport).__name__} has neither apost() nor post()"
            raise ConfigurationError(msg)

    # -- sending -------------------------------------------------------------------------

    async def asend(
        self,
        notification: Notification[Any],
        callbacks: Callbacks | None = None,
        *,
        message_ids: Sequence[str] | None = None,
    ) -> DeliveryReport:
        """Deliver ``notification`` to all its receivers and report each outcome.

        Args:
            notification: What to send, and to whom.
            callbacks: Called once per receiver; defaults to the notification class's
                default callbacks (built with ``repository``), if any.
            message_ids: One ``webhook-id`` per receiver (e.g. kept in an outbox so a
                resend carries the same ids); new random ids by default.

        Raises:
            ConfigurationError: ``message_ids`` does not match the receivers.
            PayloadTooLargeError: The encoded body exceeds the endpoint policy's limit.
        """
        body = self.codec.encode(notification)  # once, whatever the number of receivers
        self.policy.check_body_size(body)
        ids = message_ids_for(notification, message_ids)
        if callbacks is None:
            callbacks = self._default_callbacks(notification)
        run = await self._deliver(notification, body, ids, callbacks)
        return run.report

    def _default_callbacks(self, notification: Notification[Any]) -> Callbacks | None:
        """The notification's default callbacks, with this Notifier's policy and as sender."""
        return default_callbacks_for(
            notification, self.repository, policy=self.failure_policy, sender=self
        )

    def send(
        self,
        notification: Notification[Any],
        callbacks: Callbacks | None = None,
        *,
        message_ids: Sequence[str] | None = None,
    ) -> DeliveryReport:
        """Blocking [`asend`][flnotify.Notifier.asend]; safe inside a running event loop too."""
        return self._run_sync(self.asend(notification, callbacks, message_ids=message_ids))

    async def _deliver(
        self,
        notification: Notification[Any],
        body: bytes,
        message_ids: Sequence[str],
        callbacks: Callbacks | None,
        *,
        resume: _Resume | None = None,
        defer_retries: bool = False,
        deadline: float | None = None,
        hooks: Sequence[DeliveryHook] = (),
        refused: FlnotifyError | None = None,
        send: tuple[str, int] | None = None,
    ) -> _Run:
        """The engine every driver runs: each receiver to one outcome (or a deferred retry).

        Args:
            notification: What to send; its receivers are the ones delivered to.
            body: Its encoding.
            message_ids: One per receiver.
            callbacks: Called once per final delivery, or ``None``.
            resume: Attempts made and start time of every receiver (a Celery retry).
            defer_retries: Make one attempt per receiver and hand retries back to the
                caller (Celery's countdown) instead of waiting for them here.
            deadline: Seconds for this run; the Notifier's ``deadline`` if ``None``.
            hooks: Observers of this run only, after the Notifier's own.
            refused: Fail every receiver at once with this error (nothing is sent).
            send: The send's id and its receivers in all, when this run is part of a larger
                send (a Celery chunk, an outbox claim); a new id and these receivers if not.
        """
        if send is None:
            send = (new_send_id(), len(notification.receivers))
        watchers = HookSet((*self.hooks, *hooks))
        core = self._core(notification, body, watchers, send)
        run = _Send(
            self,
            core,
            message_ids,
            callbacks,
            resume=resume,
            defer_retries=defer_retries,
            deadline=self.deadline if deadline is None else deadline,
        )
        if watchers.hooks:
            watchers.send_started(notification)
        result = await run.run(refused)
        if watchers.hooks:
            watchers.send_ended(result.report)
        return result

    def _core(
        self, notification: Notification[Any], body: bytes, hooks: HookSet, send: tuple[str, int]
    ) -> Core:
        """The delivery core of one send, configured by this Notifier."""
        return Core(
            notification,
            body,
            retry=self.retry,
            signer=self.signer,
            policy=self.policy,
            user_agent=self.user_agent,
            clock=self.clock,
            wall_clock=self.wall_clock,
            rng=self.rng,
            hooks=hooks,
            breaker=self.breaker,
            send_id=send[0],
            send_size=send[1],
            pins=_pins(self.transport),
        )

    # -- one POST ------------------------------------------------------------------------

    def _poster(self) -> tuple[Post, bool]:
        """The transport's ``apost`` (its blocking ``post`` in a thread pool).

        Returns:
            The POST, and whether the transport bounds each attempt itself (flnotify's own
            do, by ``Timeouts.total``); if not, the send's watchdog bounds it by
            ``attempt_timeout``.
        """
        transport = self.transport
        apost: Post | None = getattr(transport, "apost", None)
        if apost is not None:
            return apost, getattr(transport, "bounds_attempts", False) is True
        post = cast(Transport, transport).post
        pool = self._thread_pool()

        async def in_thread(url: str, body: bytes, headers: dict[str, str]) -> HttpResponse:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, post, url, body, headers)

        return in_thread, False

    def _thread_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(self.concurrency, 64), thread_name_prefix="flnotify-post"
            )
        return self._executor

    # -- life cycle ----------------------------------------------------------------------

    def _run_sync(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._portal is None:
            self._portal = portal = _Portal()
            # a Notifier dropped without close() must not leak its loop thread
            weakref.finalize(self, portal.close)
        return self._portal.run(coroutine)

    async def aclose(self) -> None:
        """Release the transport's connections for the running loop, and worker threads."""
        closer = getattr(self.transport, "aclose", None)
        if closer is not None:
            await closer()
        elif isinstance(self.transport, Transport):
            self.transport.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def close(self) -> None:
        """Release connections, the private event loop thread and worker threads."""
        if self._portal is not None:
            self._portal.run(self.aclose())
            self._portal.close()
            self._portal = None
        if isinstance(self.transport, Transport):
            self.transport.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class _Send:
    """The scheduling of one fan-out: workers, retries, a deadline, results and callbacks.

    ``concurrency`` worker coroutines are the only ones that POST, so at most that many
    requests are in flight. They take receivers due for a retry first, then fresh ones from
    a shared iterator (no task per receiver: memory stays flat at 100,000 receivers). A
    receiver waiting for its retry is a small sleeping task that holds no worker; when it
    wakes it queues itself for the next free worker. Every decision is the core's.
    """

    def __init__(
        self,
        notifier: Notifier,
        core: Core,
        message_ids: Sequence[str],
        callbacks: Callbacks | None,
        *,
        resume: _Resume | None,
        defer_retries: bool,
        deadline: float | None,
    ) -> None:
        self.notifier = notifier
        self.core = core
        self.receivers = core.notification.receivers
        self.message_ids = message_ids
        self.callbacks = callbacks
        self.resume = resume
        self.defer_retries = defer_retries
        self.deadline = deadline
        n = len(self.receivers)
        self.results: list[Delivery | None] = [None] * n
        self.remaining = n
        self.ready: collections.deque[Course] = collections.deque()
        self.waiting: dict[int, Course] = {}  # receivers sleeping until their retry
        self.current: list[Course | None] = [None] * min(notifier.concurrency, n)
        """The course each worker is on (for the deadline: attempts made so far)."""
        self.deferred: list[tuple[int, float]] = []
        self.wakeup = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.post, bounded = notifier._poster()
        self.pinned: Callable[..., Awaitable[HttpResponse]] | None = (
            getattr(notifier.transport, "apost", None) if _pins(notifier.transport) else None
        )  # the transport's apost taking connect_to=, if it has one
        workers = min(notifier.concurrency, n)
        self.workers: list[asyncio.Task[None]] = []
        # The watchdog of transports that do not bound their attempts: when each worker's
        # POST began (0.0: none in flight), and the workers it cancelled for overrunning.
        self.began: list[float] | None = None if bounded else [0.0] * workers
        self.overdue = [False] * workers
        self.queue: asyncio.Queue[Delivery | None] | None = (
            asyncio.Queue() if callbacks is not None else None
        )  # final deliveries for the callbacks, then None once every receiver is settled
        self.callback_errors: list[CallbackError] = []
        self.polling: dict[int, Course] = {}  # receivers whose letters are in the mailbox

    def course(self, index: int) -> Course:
        resume = self.resume
        receiver = self.receivers[index]
        if resume is None:
            return Course(index, receiver, self.message_ids[index])
        return Course(index, receiver, self.message_ids[index], resume.attempts, resume.started)

    async def run(self, refused: FlnotifyError | None) -> _Run:
        notifier = self.notifier
        begin = notifier.clock()
        n = len(self.receivers)
        if refused is not None:
            for index in range(n):
                self.record(index, self.core.fail(self.course(index), refused))
        loop = asyncio.get_running_loop()
        timer = (
            loop.call_later(self.deadline, self.expire)
            if self.deadline is not None and self.remaining
            else None
        )
        fresh: Iterator[int] = iter(range(n) if refused is None else ())
        mailbox = notifier.mailbox
        pushed = self.remaining
        if mailbox is not None and refused is None:
            mail = [i for i, r in enumerate(self.receivers) if _polls(r)]
            if mail:
                polling = set(mail)
                fresh = (i for i in range(n) if i not in polling)
                pushed -= len(mail)
                self.spawn(self.mail(mailbox, mail))
        for worker in range(min(notifier.concurrency, pushed)):
            self.workers.append(self.spawn(self.work(worker, fresh)))
        if self.began is not None and self.workers:
            self.spawn(self.watchdog(notifier.attempt_timeout))
        try:
            if self.remaining == 0:
                self.settled()
            queue, callbacks = self.queue, self.callbacks
            if queue is not None and callbacks is not None:
                errors = self.callback_errors
                while (delivery := await queue.get()) is not None:
                    error = await run_callbacks(callbacks, delivery)
                    if error is not None:
                        errors.append(error)
            await self.done.wait()
        finally:
            if timer is not None:
                timer.cancel()
            self.cancel_all()
        deliveries = tuple(d for d in self.results if d is not None)
        report = DeliveryReport(
            self.core.notification,
            deliveries,
            notifier.clock() - begin,
            tuple(self.callback_errors),
        )
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Sent %s.",
                report.summary(),
                extra={"notification_type": report.notification.notification_type.value},
            )
        return _Run(report, tuple(self.deferred))

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def watchdog(self, limit: float) -> None:
        """Cancel the POST of any worker in flight for longer than ``limit`` seconds.

        One sleeping task per send instead of a timer per attempt: an attempt ends between
        ``limit`` and ``1.25 * limit`` seconds after it began.
        """
        loop = asyncio.get_running_loop()
        began, overdue = self.began, self.overdue
        assert began is not None  # noqa: S101 - only started for unbounded transports
        while True:
            await asyncio.sleep(limit / 4)
            too_old = loop.time() - limit
            for worker, since in enumerate(began):
                if since and since <= too_old and not overdue[worker]:
                    overdue[worker] = True
                    self.workers[worker].cancel()

    def overran(self, worker: int) -> bool:
        """Whether the CancelledError a worker got is the watchdog's (else: propagate)."""
        if not self.overdue[worker]:
            return False
        self.overdue[worker] = False
        task = asyncio.current_task()
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        return uncancel is None or uncancel() == 0

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def work(self, worker: int, fresh: Iterator[int]) -> None:
        """POST for receivers until none is left to try, now or after a backoff.

        One flat loop on purpose: every coroutine layer costs on the path of 100,000
        receivers. Whatever goes wrong for one receiver ends that receiver, never the loop.
        """
        core = self.core
        policy = self.notifier.policy
        ready = self.ready
        current = self.current
        post = self.post
        pin = cast(Callable[..., Awaitable[HttpResponse]], self.pinned)
        body = core.body
        began = self.began
        now = asyncio.get_running_loop().time
        while True:
            if ready:
                course = ready.popleft()
            else:
                index = next(fresh, None)
                if index is None:
                    if not self.waiting:
                        current[worker] = None
                        self.wakeup.set()  # nothing is left: let idle workers see it and end
                        return
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                course = self.course(index)
            current[worker] = course
            try:
                if not course.url:  # a fresh (or resumed) receiver: check its endpoint
                    checked = core.check(course)
                    if checked is not None:
                        if type(checked) is tuple:
                            try:
                                addresses = await policy.acheck_host(*checked, url=course.url)
                            except Exception as exc:
                                checked = core.host_checked(course, exc)
                            else:
                                checked = core.host_checked(course, None, addresses)
                        if checked is not None:
                            self.record(course.index, cast(Delivery, checked))
                            continue
                headers = core.request(course)
                if type(headers) is not dict:
                    self.record(course.index, cast(Delivery, headers))
                    continue
                address = course.address  # set when the guard checked a name: connect there
                if began is None:
                    try:
                        response = await (
                            post(course.url, body, headers)
                            if address is None
                            else pin(course.url, body, headers, connect_to=address)
                        )
                    except Exception as exc:
                        step = core.judge(course, exc=exc)
                    else:
                        step = core.judge(course, response)
                else:
                    began[worker] = now()
                    try:
                        response = await (
                            post(course.url, body, headers)
                            if address is None
                            else pin(course.url, body, headers, connect_to=address)
                        )
                    except asyncio.CancelledError:
                        began[worker] = 0.0
                        if not self.overran(worker):
                            raise
                        step = core.judge(course, exc=self.timed_out(course.url))
                    except Exception as exc:
                        began[worker] = 0.0
                        step = core.judge(course, exc=exc)
                    else:
                        began[worker] = 0.0
                        step = core.judge(course, response)
                if type(step) is float:
                    self.again(course, step)
                else:
                    self.record(course.index, cast(Delivery, step))
            except Exception as exc:  # the engine itself broke: still one outcome
                logger.exception("The Notifier failed while delivering to %s.", course.receiver.id)
                error = internal_error("the Notifier", exc, course.url)
                self.record(course.index, core.fail(course, error))

    async def mail(self, store: MailboxStore, indices: list[int]) -> None:
        """The polling receivers: post their letters, then judge their answers."""
        core, notifier = self.core, self.notifier
        started = notifier.clock()
        courses = []
        for index in indices:
            course = self.polling[index] = self.course(index)
            if course.started is None:
                course.started = started
            courses.append(course)
        by_id = {course.message_id: course.index for course in courses}
        owner = new_owner()

        async def settle(deliveries: list[Delivery]) -> None:
            try:
                kept = await asyncio.to_thread(store.settle, owner, deliveries)
            except Exception:
                logger.exception("mailbox: could not record %d outcome(s)", len(deliveries))
            else:
                if len(kept) < len(deliveries):
                    logger.warning(
                        "mailbox: %d outcome(s) were judged elsewhere too (the lease of this"
                        " send ended while it waited)",
                        len(deliveries) - len(kept),
                    )
            for delivery in deliveries:
                self.record(by_id[delivery.message_id], delivery)

        try:
            posted, refused = await post_letters(
                store, core, courses, owner, notifier.mailbox_lease
            )
            for delivery in refused:
                self.record(by_id[delivery.message_id], delivery)
            await MailLeg(store, core, posted, owner, notifier.mailbox_lease, settle).run()
        except asyncio.CancelledError:
            # The send's deadline failed the rest (expire() recorded them first), or the
            # send was cancelled: record what was decided here, and let a dispatcher adopt
            # the others at once.
            ended = [d for c in courses if (d := self.results[c.index]) is not None]
            try:
                if ended:
                    store.settle(owner, ended)
                store.release(owner)
            except Exception:
                logger.exception("mailbox: could not give up the messages of a stopped send")
            raise
        except Exception as exc:  # the driver itself broke: still one outcome each
            logger.exception("The Notifier failed while waiting for its mailbox.")
            error = internal_error("the Notifier's mailbox driver", exc, MAILBOX_ENDPOINT)
            for course in courses:
                if self.results[course.index] is None:
                    self.record(course.index, core.fail(course, error))

    def timed_out(self, url: str) -> TransportTimeoutError:
        limit = self.notifier.attempt_timeout
        return TransportTimeoutError(
            f"timed out after {limit:g} s: the whole attempt took too long", url=url
        )

    def again(self, course: Course, delay: float) -> None:
        """Another attempt after ``delay``: deferred to the caller, or a sleeping task."""
        if self.defer_retries:
            self.deferred.append((course.index, delay))
            self.settle()
            return
        self.waiting[course.index] = course
        self.spawn(self.wait_then_queue(course, delay))

    async def wait_then_queue(self, course: Course, delay: float) -> None:
        """Sleep (holding no worker), then queue the next attempt for a free worker."""
        try:
            await self.notifier.sleep(delay)
        except Exception as exc:
            self.waiting.pop(course.index, None)
            self.record(
                course.index, self.core.fail(course, internal_error("sleep", exc, course.url))
            )
            return
        self.waiting.pop(course.index, None)
        self.ready.append(course)
        self.wakeup.set()

    def record(self, index: int, delivery: Delivery) -> None:
        if self.results[index] is not None:  # cannot happen: expire() cancels first
            return
        self.results[index] = delivery
        if self.queue is not None:
            self.queue.put_nowait(delivery)
        self.settle()

    def settle(self) -> None:
        """One receiver is settled (final, or its retry deferred to the caller)."""
        self.remaining -= 1
        if self.remaining == 0:
            self.settled()

    def settled(self) -> None:
        self.done.set()
        if self.queue is not None:
            self.queue.put_nowait(None)

    def expire(self) -> None:
        """The deadline passed: everything still pending fails now, callbacks included."""
        self.cancel_all()  # first, so that nothing records after this
        working = [c for c in self.current if c is not None]
        known = {
            c.index: c
            for c in (*working, *self.waiting.values(), *self.ready, *self.polling.values())
        }
        deferred = {index for index, _ in self.deferred}
        error_text = f"deadline of {self.deadline:g} s passed before an outcome"
        for index in range(len(self.receivers)):
            if self.results[index] is not None or index in deferred:
                continue
            course = known.get(index) or self.course(index)
            url = course.url or self.receivers[index].message_endpoint
            error = TransportError(error_text, url=url, kind=Kind.DEADLINE)
            self.record(index, self.core.fail(course, error))


class _Portal:
    """A private event loop in a daemon thread that runs coroutines for sync callers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="flnotify-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        loop = self._start()
        if threading.current_thread() is self._thread:
            coroutine.close()
            msg = "Notifier.send called from its own callback; await asend instead"
            raise ConfigurationError(msg)
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
