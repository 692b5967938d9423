"""The engine: one module runs a send, whatever drives it.

Every driver (the in-process [`Notifier`][flnotify.Notifier], the Celery task, the outbox
and mailbox dispatchers) hands the [`Engine`][flnotify._engine.Engine] a
[`Plan`][flnotify._engine.Plan] and gets a [`Run`][flnotify._engine.Run] back; none of them
reaches into another module's private names. The engine owns:

- one frozen [`Settings`][flnotify.Settings] value (transport, retry, signer, endpoint
  policy, timeouts, breaker, failure policy, hooks, codec, user agent, callbacks registry),
  so every default exists once;
- the routes a receiver can take: push (a POST, [`PushRoute`][flnotify._engine.PushRoute])
  and whatever else a driver plugs in behind the [`Route`][flnotify._engine.Route] Protocol
  (the mailbox of polling clients). The delivery core (``_attempt``) knows no route;
- the one settle order: a route that keeps a record of an outcome hands the engine a
  ``then`` step with the outcome; the engine runs the callbacks and only then that step
  (mark done), so a crash in between runs the callbacks again, never not;
- the deadline of the send, and the report.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import weakref
from array import array
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Union, cast

import attrs
from typing_extensions import TypedDict

from ._attempt import (
    Core,
    Course,
    Flow,
    Post,
    Resolve,
    Wait,
    internal_error,
    message_ids_for,
    new_send_id,
)
from ._codec import Codec
from ._exceptions import (
    CallbackError,
    ConfigurationError,
    FlnotifyError,
    TransportError,
    TransportTimeoutError,
)
from ._exceptions import TransportErrorKind as Kind
from ._hooks import DeliveryHook, HookSet, SendStarted
from ._notification import Notification
from ._portal import Portal
from ._report import Delivery, DeliveryReport
from ._retry import RetryPolicy
from ._seams import Seams, current_seams
from ._types import HttpResponse, ReceiverLike
from ._validators import at_least_one, positive
from ._version import __version__
from .callbacks import (
    CallbackRegistry,
    Callbacks,
    FailurePolicy,
    call_callbacks,
    default_callback_registry,
    refuse_parts_unjudged,
    refuse_split_sends_unjudged,
)
from .endpoints import EndpointPolicy
from .health import CircuitBreaker
from .signing import Signer
from .transports._base import (
    AsyncTransport,
    DrivingTransport,
    Job,
    PinningTransport,
    Transport,
    capabilities,
)

if TYPE_CHECKING:
    from .repository import AsyncTrainingRepository, TrainingRepository

__all__ = [
    "Engine",
    "Plan",
    "PushRoute",
    "Resume",
    "Route",
    "Run",
    "Send",
    "Settings",
    "SettingsOptions",
    "deadline_passed",
    "with_options",
]

logger = logging.getLogger("flnotify")
T = TypeVar("T")
Poster = Callable[[str, bytes, dict[str, str]], Awaitable[HttpResponse]]
Then = Callable[[], Coroutine[Any, Any, None]]


DEFAULT_DEADLINE: float | None = 90.0
"""Seconds a send may take by default: with the other defaults, no receiver needs longer."""


def _hooks(value: Sequence[DeliveryHook]) -> tuple[DeliveryHook, ...]:
    return tuple(value)


@attrs.frozen
class Settings:
    """How sends are made: one value shared by the Notifier, Celery and the dispatchers.

    Every default of flnotify's delivery exists here once. Pass it whole
    (``Notifier(settings=...)``, ``CeleryDelivery(app, settings=...)``) or name single
    fields as keyword arguments of the [`Notifier`][flnotify.Notifier].

    Args:
        transport: How POSTs are made; anything with ``apost`` (preferred) or ``post``.
            ``None`` (the default): a
            [`StreamTransport`][flnotify.transports.StreamTransport] (TLS verified, no
            proxy) made by each engine; an
            [`HttpxTransport`][flnotify.transports.HttpxTransport] serves proxies and respx.
        retry: When to try again.
        concurrency: At most this many POSTs in flight at once; receivers waiting for a
            retry do not hold a slot.
        deadline: Seconds a whole send may take (90 by default; ``None``: no limit); what
            is still pending then is reported as failed (kind ``DEADLINE``) and its
            callbacks are called. It bounds polling receivers too (a client that does not
            fetch and acknowledge in time); with the other defaults one send holds its
            caller at most 100 s (docs/delivery.md).
        signer: Signs each attempt (Standard Webhooks); unsigned without one.
        policy: Which endpoints may be POSTed to, checked before any I/O.
        codec: Encodes the notification (once per send).
        hooks: Observers of attempts and outcomes (progress, metrics, tracing).
        breaker: Skips endpoints that keep failing (a circuit breaker per endpoint); none
            by default.
        failure_policy: When a send puts its training into ``ERROR`` (the default
            callbacks' policy); strict by default: any failure does.
        attempt_timeout: Upper bound of one attempt for transports that do not bound
            attempts themselves (flnotify's own enforce their ``Timeouts.total``).
        user_agent: The ``User-Agent`` header.
        default_callbacks: Which callbacks a notification class gets when a send names
            none (the round-type notifications: the training callbacks).
    """

    transport: AsyncTransport | Transport | None = None
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    concurrency: int = attrs.field(default=100, validator=at_least_one)
    deadline: float | None = attrs.field(
        default=DEFAULT_DEADLINE, validator=attrs.validators.optional(positive)
    )
    signer: Signer | None = None
    policy: EndpointPolicy = attrs.field(factory=EndpointPolicy)
    codec: Codec = attrs.field(factory=Codec)
    hooks: tuple[DeliveryHook, ...] = attrs.field(default=(), converter=_hooks)
    breaker: CircuitBreaker | None = None
    failure_policy: FailurePolicy = attrs.field(factory=FailurePolicy)
    attempt_timeout: float = attrs.field(default=15.0, validator=positive)
    user_agent: str = f"flnotify/{__version__}"
    default_callbacks: CallbackRegistry = attrs.field(factory=default_callback_registry)

    def __attrs_post_init__(self) -> None:
        transport = self.transport
        if (
            transport is not None
            and not hasattr(transport, "apost")
            and not hasattr(transport, "post")
        ):
            msg = f"{type(transport).__name__} has neither apost() nor post()"
            raise ConfigurationError(msg)

    def encode(self, notification: Notification[Any]) -> bytes:
        """The body of a send: encoded once, whatever the number of receivers.

        Raises:
            PayloadTooLargeError: It exceeds the endpoint policy's limit.
        """
        body = self.codec.encode(notification)
        self.policy.check_body_size(body)
        return body


class SettingsOptions(TypedDict, total=False):
    """The fields of [`Settings`][flnotify.Settings], as keyword arguments."""

    retry: RetryPolicy
    concurrency: int
    deadline: float | None
    signer: Signer | None
    policy: EndpointPolicy
    codec: Codec
    hooks: Sequence[DeliveryHook]
    breaker: CircuitBreaker | None
    failure_policy: FailurePolicy
    attempt_timeout: float
    user_agent: str
    default_callbacks: CallbackRegistry


def with_options(settings: Settings | None, options: Mapping[str, Any], where: str) -> Settings:
    """``settings`` (the defaults if ``None``) with single fields replaced by ``options``.

    Raises:
        TypeError: An option is not a field of [`Settings`][flnotify.Settings].
    """
    settings = Settings() if settings is None else settings
    if not options:
        return settings
    known = {field.alias or field.name for field in attrs.fields(Settings)} - {"transport"}
    unknown = sorted(set(options) - known)
    if unknown:
        msg = (
            f"{where} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; it"
            f" takes the fields of Settings: {', '.join(sorted(known))} (clocks, sleepers"
            " and random sources are set in tests with flnotify.testing.seams)"
        )
        raise TypeError(msg)
    return attrs.evolve(settings, **options)


def default_transport() -> AsyncTransport:
    """The lean asyncio transport: httptools parses if installed, h11 (httpx's) otherwise.

    Measured with 1,000 receivers on 100 loopback origins, it is several times a plain
    ``httpx.Client`` loop even without httptools (docs/benchmarks.md); ``HttpxTransport``
    is there for proxies, custom httpx clients and respx-style tests.
    """
    from .transports._streams import StreamTransport

    return StreamTransport()


def deadline_passed(deadline: float, url: str = "") -> TransportError:
    """The error of a receiver still without an outcome when its send's deadline passed."""
    return TransportError(
        f"deadline of {deadline:g} s passed before an outcome", url=url, kind=Kind.DEADLINE
    )


@attrs.frozen
class Resume:
    """Where each receiver of a resumed send stands (Celery retries): attempts and start."""

    attempts: int
    started: float


@attrs.frozen
class Plan:
    """One send as the engine takes it: what, to whom, and how this driver runs it.

    Args:
        notification: What to send; its receivers are the ones delivered to.
        body: Its encoding (made once per notification).
        message_ids: One ``webhook-id`` per receiver.
        callbacks: Called once per final delivery, or ``None``.
        send_id: The send's id, on every delivery (a send cut into parts keeps one id).
        send_size: The send's receivers in all (a part of a send has fewer).
        resume: Attempts made and start time of every receiver (a Celery retry).
        defer_retries: Make one attempt per receiver and hand retries back in
            ``Run.deferred`` (Celery's countdown) instead of waiting for them here.
        deadline: Seconds for this run; the settings' ``deadline`` if ``None``.
        hooks: Observers of this run only, after the settings' own.
        refused: Fail every receiver at once with this error (nothing is sent).
    """

    notification: Notification[Any]
    body: bytes
    message_ids: Sequence[str]
    callbacks: Callbacks | None
    send_id: str = attrs.field(factory=new_send_id)
    send_size: int = -1
    resume: Resume | None = None
    defer_retries: bool = False
    deadline: float | None = None
    hooks: tuple[DeliveryHook, ...] = attrs.field(default=(), converter=_hooks)
    refused: FlnotifyError | None = None

    @property
    def size(self) -> int:
        """The send's receivers in all."""
        return len(self.notification.receivers) if self.send_size < 0 else self.send_size

    @property
    def is_part(self) -> bool:
        """Whether this run delivers only part of a send (others run separately)."""
        return (
            self.defer_retries
            or self.resume is not None
            or self.size != len(self.notification.receivers)
        )


@attrs.frozen
class Run:
    """What one run of the engine produced: final deliveries, and the retries it deferred."""

    report: DeliveryReport
    deferred: tuple[tuple[int, float], ...] = ()
    """(receiver index, seconds until its next attempt), when retries are deferred."""


class Route(Protocol):
    """A way to a receiver: push (a POST) or a driver's own (the mailbox of polling clients).

    A route ``take`` s its receivers of a send and sees each to one outcome with the
    send's core, recording it through [`Send.record`][flnotify._engine.Send.record]. A route that
    keeps a durable record of outcomes passes a ``then`` step: the engine awaits it after
    the callbacks of those outcomes ran (record, callbacks, mark done).
    """

    def take(self, receivers: Sequence[ReceiverLike]) -> list[int]:
        """The indices of the receivers this route delivers to (asked once per send).

        Whole-list, so a route not used by a send costs one pass, not a call per receiver.
        A receiver that breaks the route's test is left to the push route's core to fail.
        """
        ...

    async def deliver(self, send: Send, indices: Sequence[int]) -> None:
        """See the receivers at ``indices`` to their outcomes (cancelled at the deadline)."""
        ...


class Send:
    """One running send: its results, its callbacks, its deadline; what routes record into."""

    def __init__(self, engine: Engine, core: Core, plan: Plan, deadline: float | None) -> None:
        self.engine = engine
        self.core = core
        self.plan = plan
        self.receivers = plan.notification.receivers
        self.message_ids = plan.message_ids
        self.deadline = deadline
        n = len(self.receivers)
        self.results: list[Delivery | None] = [None] * n
        self.remaining = n
        # the ways of receivers begun and not yet settled (the deadline's to fail)
        self.courses: list[Course | None] = [None] * n
        self.deferred: list[tuple[int, float]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        # final deliveries and then-steps for the callbacks, in order, drained in batches
        self.settling: collections.deque[Delivery | Then] | None = (
            collections.deque() if plan.callbacks is not None else None
        )
        self.all_settled = False  # nothing more comes into ``settling``
        self.wake: asyncio.Future[None] | None = None  # the drain's, while it waits
        self.callback_errors: list[CallbackError] = []
        self.expired = False  # the deadline passed
        self.steps: list[asyncio.Task[None]] = []  # then-steps of a send without callbacks
        self.begin = 0.0  # the engine's clock when the send began
        # the fast lane's compact state: when each receiver's first attempt began (NaN: not)
        self.lane_began: array[float] | None = None

    def course(self, index: int) -> Course:
        """The way of receiver ``index`` through this send (made once, then kept)."""
        course = self.courses[index]
        if course is None:
            resume = self.plan.resume
            began = self.lane_began
            if began is not None and began[index] == began[index]:  # not NaN: it began
                # its first attempt went through the fast lane
                course = Course(
                    index, self.receivers[index], self.message_ids[index], 1, began[index]
                )
                course.begun = began[index]
            elif resume is None:
                course = Course(index, self.receivers[index], self.message_ids[index])
            else:
                course = Course(
                    index,
                    self.receivers[index],
                    self.message_ids[index],
                    resume.attempts,
                    resume.started,
                )
            self.courses[index] = course
        return course

    def result(self, index: int) -> Delivery | None:
        """Receiver ``index``'s final delivery, if it has one."""
        return self.results[index]

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of this send, cancelled when the send ends or its deadline passes."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def record(self, index: int, delivery: Delivery) -> None:
        """Receiver ``index``'s one final delivery (a second one is a route's bug: dropped)."""
        if self.results[index] is not None:
            return
        self.results[index] = delivery
        self.courses[index] = None  # settled: nothing keeps its way alive (GC, memory)
        settling = self.settling
        if settling is not None:
            settling.append(delivery)
            if self.wake is not None:
                self.woken()
        self.settle_one()

    def then(self, step: Then) -> None:
        """Run ``step`` once the callbacks of everything recorded so far have run.

        A route that keeps a record marks its outcomes done here, so a crash between the
        callbacks and the mark runs the callbacks again on restart, never not.
        """
        if self.settling is None:  # no callbacks to wait for: now (awaited before the end)
            self.steps.append(asyncio.get_running_loop().create_task(step()))
        else:
            self.settling.append(step)
            if self.wake is not None:
                self.woken()

    def woken(self) -> None:
        """Wake the callbacks' drain: one wake-up for everything recorded until it runs."""
        wake, self.wake = self.wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def defer(self, index: int, delay: float) -> None:
        """Hand receiver ``index``'s next attempt back to the driver (Celery's countdown)."""
        self.deferred.append((index, delay))
        self.courses[index] = None
        self.settle_one()

    def settle_one(self) -> None:
        """One receiver is settled (final, or its retry handed back); the last ends the send."""
        self.remaining -= 1
        if self.remaining == 0:
            self.settled()

    def settled(self) -> None:
        self.done.set()
        if self.settling is not None:
            self.all_settled = True
            self.woken()

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def expire(self) -> None:
        """The deadline passed: everything still pending fails now, callbacks included."""
        self.expired = True
        self.cancel_all()  # first, so that nothing records after this
        deferred = {index for index, _ in self.deferred}
        assert self.deadline is not None  # noqa: S101 - only called at the deadline
        for index in range(len(self.receivers)):
            if self.results[index] is not None or index in deferred:
                continue
            course = self.course(index)
            url = course.url or self.receivers[index].message_endpoint
            self.record(index, self.core.fail(course, deadline_passed(self.deadline, url)))

    def abandon(self) -> None:
        """The send was cancelled: attempts the hooks saw start end for them now."""
        error = TransportError("the send was cancelled", kind=Kind.INTERNAL)
        for course in self.courses:
            if course is not None:
                self.core.cut(course, error)

    def partial_report(self) -> DeliveryReport:
        """What a cancelled send reached: the deliveries recorded so far."""
        deliveries = tuple(d for d in self.results if d is not None)
        elapsed = self.engine.seams.clock() - self.begin
        return DeliveryReport(
            self.core.notification,
            deliveries,
            elapsed,
            tuple(self.callback_errors),
            send_id=self.core.send_id,
        )

    async def run(self, routes: Sequence[Route]) -> Run:
        engine = self.engine
        begin = self.begin = engine.seams.clock()
        n = len(self.receivers)
        refused = self.plan.refused
        if refused is not None:
            for index in range(n):
                self.record(index, self.core.fail(self.course(index), refused))
        loop = asyncio.get_running_loop()
        timer = (
            loop.call_later(self.deadline, self.expire)
            if self.deadline is not None and self.remaining
            else None
        )
        if refused is None and n:
            for route, indices in _partition(self.receivers, routes):
                self.spawn(route.deliver(self, indices))
        try:
            if n == 0:
                self.settled()
            settling, callbacks = self.settling, self.plan.callbacks
            if settling is not None and callbacks is not None:
                await self.run_callbacks(settling, callbacks)
            await self.done.wait()
        finally:
            if timer is not None:
                timer.cancel()
            self.cancel_all()
        await asyncio.gather(*list(self.tasks), return_exceptions=True)  # routes clean up
        await asyncio.gather(*self.steps, return_exceptions=True)
        while settling:  # their then-steps, after callbacks
            item = settling.popleft()
            if not isinstance(item, Delivery):
                await item()
        deliveries = tuple(d for d in self.results if d is not None)
        report = DeliveryReport(
            self.core.notification,
            deliveries,
            engine.seams.clock() - begin,
            tuple(self.callback_errors),
            send_id=self.core.send_id,
        )
        if deliveries and logger.isEnabledFor(logging.INFO):
            logger.info(
                "Sent %s.",
                report.summary(),
                extra={"notification_type": report.notification.notification_type.value},
            )
        return Run(report, tuple(self.deferred))

    async def run_callbacks(
        self, settling: collections.deque[Delivery | Then], callbacks: Callbacks
    ) -> None:
        """Each final delivery's callbacks, in order of arrival; then-steps after theirs.

        Drained in batches: everything recorded since the last wake-up is taken in one
        pass, with no queue hand-over or task switch per delivery. Sync callbacks are called
        right there; async ones overlap, up to ``CALLBACKS_AT_ONCE``, so slow ones (telling
        removed clients) add the time of one, not the sum. A then-step waits for every
        callback recorded before it.
        """
        running: set[asyncio.Task[CallbackError | None]] = set()
        errors = self.callback_errors

        def collect(done: set[asyncio.Task[CallbackError | None]]) -> None:
            for task in done:
                running.discard(task)
                error = task.result()
                if error is not None:
                    errors.append(error)

        loop = asyncio.get_running_loop()
        seams = self.engine.seams
        sleep, clock = seams.sleep, seams.clock
        take = settling.popleft
        try:
            while True:
                if not settling:
                    if self.all_settled:
                        break
                    wake = self.wake = loop.create_future()
                    await wake
                    continue
                item = take()
                if not isinstance(item, Delivery):
                    if running:
                        collect((await asyncio.wait(running))[0])
                    await item()
                    continue
                called = call_callbacks(callbacks, item, sleep=sleep, clock=clock)
                if called is None:
                    continue
                if isinstance(called, CallbackError):
                    errors.append(called)
                    continue
                running.add(loop.create_task(called))
                if len(running) >= CALLBACKS_AT_ONCE:
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    collect(done)
            if running:
                collect((await asyncio.wait(running))[0])
        finally:
            self.wake = None
            for task in running:
                task.cancel()


CALLBACKS_AT_ONCE = 64
"""Async callbacks of one send that may run at the same time."""


def _partition(
    receivers: Sequence[ReceiverLike], routes: Sequence[Route]
) -> list[tuple[Route, Sequence[int]]]:
    """Which route takes which receivers; the last route (push) takes the rest."""
    *special, last = routes
    taken: set[int] = set()
    parts: list[tuple[Route, Sequence[int]]] = []
    for route in special:
        indices = [i for i in route.take(receivers) if i not in taken]
        if indices:
            taken.update(indices)
            parts.append((route, indices))
    rest = (
        range(len(receivers)) if not taken else [i for i in range(len(receivers)) if i not in taken]
    )
    if rest:
        parts.append((last, rest))
    return parts


class PushRoute:
    """Receivers that are POSTed to: ``concurrency`` workers over one transport.

    The workers are the only ones that POST, so at most that many requests are in flight.
    They take receivers due for a retry first, then fresh ones from a shared iterator (no
    task per receiver: memory stays flat at 100,000 receivers). A receiver waiting for its
    retry is a small sleeping task that holds no worker; when it wakes it queues itself for
    the next free worker. Every decision is the core's.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def take(self, receivers: Sequence[ReceiverLike]) -> list[int]:
        """Every receiver (the engine gives it those no other route took)."""
        return list(range(len(receivers)))

    async def deliver(self, send: Send, indices: Sequence[int]) -> None:
        """POST to the receivers at ``indices`` until each has an outcome."""
        await _Push(self.engine, send, indices).run()


class _Push:
    """The workers of one send on the push route."""

    def __init__(self, engine: Engine, send: Send, indices: Sequence[int]) -> None:
        self.engine = engine
        self.send = send
        self.fresh: Iterator[int] = iter(indices)
        workers = min(engine.settings.concurrency, len(indices))
        self.ready: collections.deque[Course] = collections.deque()
        self.waiting: dict[int, Course] = {}  # receivers sleeping until their retry
        self.wakeup = asyncio.Event()
        self.post, bounded = engine.poster()
        self.pinned = engine.pinned_poster()
        self.workers: list[asyncio.Task[None]] = []
        self.count = workers
        # The watchdog of transports that do not bound their attempts: when each worker's
        # POST began (0.0: none in flight), and the workers it cancelled for overrunning.
        self.began: list[float] | None = None if bounded else [0.0] * workers
        self.overdue = [False] * workers
        self.lane_running = False  # the fast lane drives first attempts (see _Lane)

    def lane(self) -> DrivingTransport | None:
        """The transport that can drive this send's first attempts itself, if it may.

        The fast lane is for the common case: push, first attempts, no hook that watches
        attempts or adds headers, no address guard (pinning), no breaker, the plain retry
        policy (a 2xx needs no decision), a transport that drives (``drive``) and bounds each
        of its attempts itself.
        """
        engine, send = self.engine, self.send
        core = send.core
        transport = engine.transport
        settings = engine.settings
        if (
            not engine.fast_lane
            or not isinstance(transport, DrivingTransport)
            or not core.plain
            or send.plan.resume is not None
            or settings.policy.block_private
            or settings.breaker is not None
            or self.began is not None  # it does not bound its attempts: the watchdog must
        ):
            return None
        return transport

    async def run(self) -> None:
        send = self.send
        lane = self.lane()
        if lane is not None and self.count:
            # while the lane drives first attempts, one worker makes the retries that fall
            # due (at most one request beyond the lane's), so none waits for the lane's end
            self.lane_running = True
            retries = send.spawn(self.work(RETRY_WORKER))
            try:
                await _Lane(self, lane).run()
            finally:
                self.lane_running = False
                self.wakeup.set()
            await retries
        for worker in range(self.count):
            self.workers.append(send.spawn(self.work(worker)))
        if self.began is not None and self.workers:
            send.spawn(self.watchdog(self.engine.settings.attempt_timeout))
        await asyncio.gather(*self.workers, return_exceptions=True)

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

    async def work(self, worker: int) -> None:
        """Run receivers' flows until none is left to try, now or after a backoff.

        One flat loop on purpose: every coroutine layer costs on the path of 100,000
        receivers. The worker only does the I/O a flow asks for (resolve, POST, wait); the
        flow decides the steps. Whatever goes wrong for one receiver ends that receiver,
        never the loop.
        """
        send = self.send
        core = send.core
        policy = self.engine.settings.policy
        ready = self.ready
        fresh = self.fresh
        post = self.post
        pin = cast(Callable[..., Awaitable[HttpResponse]], self.pinned)
        body = core.body
        began = self.began
        record = send.record
        now = asyncio.get_running_loop().time
        while True:
            if ready:
                course = ready.popleft()
                flow = cast(Flow, course.flow)
            elif worker == RETRY_WORKER:
                if not self.lane_running:
                    return  # the workers take over the retries
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            else:
                index = next(fresh, None)
                if index is None:
                    if not self.waiting:
                        self.wakeup.set()  # nothing is left: let idle workers see it and end
                        return
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                course = send.course(index)
                flow = course.flow = core.flow(course)
            answer: Any = None
            failure: Exception | None = None
            try:
                while True:
                    step = flow.send(answer) if failure is None else flow.throw(failure)
                    answer = failure = None
                    kind = type(step)
                    if kind is Post:
                        post_step = cast(Post, step)
                        address = post_step.address
                        if began is not None:
                            began[worker] = now()
                        try:
                            answer = await (
                                post(course.url, body, post_step.headers)
                                if address is None
                                else pin(course.url, body, post_step.headers, connect_to=address)
                            )
                        except asyncio.CancelledError:
                            if began is None:
                                raise
                            began[worker] = 0.0
                            if not self.overran(worker):
                                raise
                            failure = self.timed_out(course.url)
                        except Exception as exc:
                            failure = exc
                        if began is not None:
                            began[worker] = 0.0
                    elif kind is Resolve:
                        resolve = cast(Resolve, step)
                        try:
                            answer = await policy.acheck_host(
                                resolve.host, resolve.port, url=course.url
                            )
                        except Exception as exc:
                            failure = exc
                    else:
                        self.again(course, cast(Wait, step).seconds)
                        break
            except StopIteration as stop:
                course.flow = None
                record(course.index, cast(Delivery, stop.value))
            except Exception as exc:  # the engine itself broke: still one outcome
                course.flow = None
                logger.exception("The engine failed while delivering to %s.", course.receiver.id)
                error = internal_error("the engine", exc, course.url)
                record(course.index, core.fail(course, error))

    def judged(self, index: int, url: str, response: object, exc: Exception | None) -> None:
        """A fast-lane attempt that was not a plain 2xx: the core judges it, as in the flow.

        A retry continues on the general path (a fresh flow checks the endpoint again).
        """
        send = self.send
        core = send.core
        course = send.course(index)  # its lane attempt counted, from when it began
        course.url = url
        try:
            step = core.judge(course, cast(HttpResponse, response), exc)
        except Exception as failure:  # the engine itself broke: still one outcome
            logger.exception("The engine failed while delivering to %s.", course.receiver.id)
            step = core.fail(course, internal_error("the engine", failure, url))
        if type(step) is float:
            course.flow = core.flow(course)
            self.again(course, step)
        else:
            send.record(index, cast(Delivery, step))

    def timed_out(self, url: str) -> TransportTimeoutError:
        limit = self.engine.settings.attempt_timeout
        return TransportTimeoutError(
            f"timed out after {limit:g} s: the whole attempt took too long", url=url
        )

    def again(self, course: Course, delay: float) -> None:
        """Another attempt after ``delay``: deferred to the driver, or a sleeping task."""
        if self.send.plan.defer_retries:
            self.send.defer(course.index, delay)
            return
        self.waiting[course.index] = course
        self.send.spawn(self.wait_then_queue(course, delay))

    async def wait_then_queue(self, course: Course, delay: float) -> None:
        """Sleep (holding no worker), then queue the next attempt for a free worker."""
        try:
            await self.engine.seams.sleep(delay)
        except Exception as exc:
            self.waiting.pop(course.index, None)
            error = internal_error("sleep", exc, course.url)
            self.send.record(course.index, self.send.core.fail(course, error))
            self.wakeup.set()
            return
        self.waiting.pop(course.index, None)
        self.ready.append(course)
        self.wakeup.set()


class _Lane:
    """The fast lane of a send: the transport drives first attempts; 2xx recorded at once.

    Per send, once: the shared headers (content type, user agent), the signer's prepared
    key state. Per receiver: its URL checked (the origin part cached by the policy), its
    ``webhook-id``, timestamp and signature, the time it began (compact, in an array).
    A receiver the lane cannot take (a URL, signer or header problem) goes to the general
    flow, which fails it with the right typed error; an answer other than 2xx, or an
    error, is judged by the core like any attempt.
    """

    def __init__(self, push: _Push, transport: DrivingTransport) -> None:
        self.push = push
        self.transport = transport
        send = push.send
        self.send = send
        self.diverted: list[int] = []

    def jobs(self) -> Iterator[Job]:
        push, send = self.push, self.send
        core = send.core
        engine = push.engine
        receivers, ids = send.receivers, send.message_ids
        began = send.lane_began
        assert began is not None  # noqa: S101 - set by run()
        validate = engine.settings.policy.validate_url
        clock, wall = engine.seams.clock, engine.seams.wall_clock
        own_lines = core.own_lines()
        diverted = self.diverted
        stamp, stamped = -1, ""
        for index in push.fresh:
            if send.expired:
                return
            receiver = receivers[index]
            try:
                url = receiver.message_endpoint
                if type(url) is not str:
                    raise TypeError(url)
                validate(url)
                now = int(wall())
                if now != stamp:
                    stamp, stamped = now, str(now)
                own = own_lines(ids[index], stamped, receiver)
            except Exception:  # the general flow fails it with the right error
                diverted.append(index)
                continue
            began[index] = clock()
            yield url, own, index

    def done(self, index: int, response: Any, exc: Exception | None) -> None:
        send = self.send
        if send.results[index] is not None or send.expired:
            return
        if exc is None and type(response) is HttpResponse:
            status = response.status_code
            if type(status) is int and 200 <= status < 300:
                began = cast("array[float]", send.lane_began)[index]
                receiver, message_id = send.receivers[index], send.message_ids[index]
                send.record(index, send.core.delivered(receiver, message_id, status, began))
                return
        self.push.judged(index, send.receivers[index].message_endpoint, response, exc)

    async def run(self) -> None:
        push, send = self.push, self.send
        core = send.core
        send.lane_began = array("d", [math.nan]) * len(send.receivers)
        headers = core.shared_headers()
        try:
            await self.transport.drive(core.body, headers, self.jobs(), self.done, push.count)
        except asyncio.CancelledError:
            raise
        except Exception:  # the transport broke: what it left goes the general way
            logger.exception("The fast lane's transport failed; the general path takes over.")
            failed = True
        else:
            failed = False
        # receivers it did not take go the general way: those it refused, those not reached
        rest = self.diverted
        rest.extend(push.fresh)
        if failed:  # and those it left in flight without an outcome (counted as attempted)
            began = send.lane_began
            deferred = {index for index, _ in send.deferred}
            rest.extend(
                i
                for i, since in enumerate(began)
                if since == since  # NaN: never began
                and send.results[i] is None
                and i not in push.waiting
                and i not in deferred
            )
        push.fresh = iter(rest)


RETRY_WORKER = -1
"""The worker number of the one worker that makes retries while the fast lane runs."""

Repository = Union["TrainingRepository", "AsyncTrainingRepository"]


class Engine:
    """Runs sends: a plan in, a result out. Built by the Notifier and the Celery driver.

    Args:
        settings: How sends are made.
        repository: Lets notification classes with default callbacks build them.
        routes: Routes tried before push, in order (e.g. the mailbox of polling clients).
        seams: Clocks, sleeper and random source; the current ones (real unless a test
            switched fakes on with ``flnotify.testing.seams``) if ``None``.
    """

    fast_lane: bool = True
    """Whether sends may take the fast lane (tests run both paths by switching it off)."""

    def __init__(
        self,
        settings: Settings,
        *,
        repository: Repository | None = None,
        routes: Sequence[Route] = (),
        seams: Seams | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.seams = current_seams() if seams is None else seams
        self.transport: AsyncTransport | Transport = (
            default_transport() if settings.transport is None else settings.transport
        )
        self.capabilities = capabilities(self.transport)
        self.routes: tuple[Route, ...] = (*routes, PushRoute(self))
        self._portal: Portal | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # -- a send ----------------------------------------------------------------------------

    def plan(
        self,
        notification: Notification[Any],
        callbacks: Callbacks | None = None,
        *,
        message_ids: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> Plan:
        """A whole send of ``notification``: encoded once, ids chosen, callbacks picked.

        ``deadline``: seconds this send may take; the settings' ``deadline`` if ``None``.

        Raises:
            ConfigurationError: ``message_ids`` does not match the receivers.
            PayloadTooLargeError: The encoded body exceeds the endpoint policy's limit.
        """
        body = self.settings.encode(notification)
        ids = message_ids_for(notification, message_ids)
        if callbacks is None:
            callbacks = self.default_callbacks(notification)
        return Plan(notification, body, ids, callbacks, deadline=deadline)

    async def run(self, plan: Plan) -> Run:
        """Each receiver of ``plan`` to one outcome (or a deferred retry), callbacks run."""
        if plan.is_part:
            refuse_parts_unjudged(plan.callbacks, "This driver")
        watchers = HookSet((*self.settings.hooks, *plan.hooks))
        deadline = self.settings.deadline if plan.deadline is None else plan.deadline
        looked = self.seams.clock()
        signer = await self.signer_for(plan.notification.receivers, deadline)
        if deadline is not None:  # the lookup's time counts toward the send's deadline
            deadline = max(0.0, deadline - (self.seams.clock() - looked))
        core = self.core(
            plan.notification, plan.body, plan.send_id, plan.size, watchers, signer=signer
        )
        send = Send(self, core, plan, deadline)
        if watchers.hooks:
            notification = plan.notification
            watchers.send_started(SendStarted(notification, plan.send_id, notification.receivers))
        try:
            result = await send.run(self.routes)
        except asyncio.CancelledError:
            if watchers.hooks:  # the hooks see this send end too, with what it reached
                send.abandon()
                watchers.send_ended(send.partial_report())
            raise
        if watchers.hooks:
            watchers.send_ended(result.report)
        return result

    async def asend(
        self,
        notification: Notification[Any],
        callbacks: Callbacks | None = None,
        *,
        message_ids: Sequence[str] | None = None,
    ) -> DeliveryReport:
        """Send ``notification`` now (the engine is the default callbacks' sender)."""
        plan = self.plan(notification, callbacks, message_ids=message_ids)
        return (await self.run(plan)).report

    async def signer_for(
        self, receivers: Sequence[ReceiverLike], deadline: float | None
    ) -> Signer | None:
        """The settings' signer with the receivers' own secrets looked up, once per send.

        Off the event loop and before the first attempt (see
        [`Signer.resolved`][flnotify.Signer.resolved]); the send's attempts, retries
        included, reuse what was found. A lookup still running when the send's deadline
        passes fails the receivers it did not answer for.
        """
        signer = self.settings.signer
        if not isinstance(signer, Signer) or not signer.looks_up:
            return signer  # nothing to look up (a signer of another kind signs as it likes)
        try:
            return await asyncio.wait_for(signer.resolved(receivers), deadline)
        except asyncio.TimeoutError:
            late = TimeoutError(f"the secret lookup took longer than the send's {deadline:g} s")

            def timed_out(receiver: ReceiverLike) -> str | None:
                raise late

            return Signer(lookup=timed_out)

    def core(
        self,
        notification: Notification[Any],
        body: bytes,
        send_id: str,
        send_size: int,
        hooks: HookSet | None = None,
        *,
        signer: Signer | None = None,
    ) -> Core:
        """The delivery core of one send, configured by these settings.

        ``signer``: the send's resolved signer (see ``signer_for``); the settings' if ``None``.
        """
        settings, seams = self.settings, self.seams
        return Core(
            notification,
            body,
            retry=settings.retry,
            signer=settings.signer if signer is None else signer,
            policy=settings.policy,
            user_agent=settings.user_agent,
            clock=seams.clock,
            wall_clock=seams.wall_clock,
            rng=seams.rng,
            hooks=HookSet(settings.hooks) if hooks is None else hooks,
            breaker=settings.breaker,
            send_id=send_id,
            send_size=send_size,
            pins=self.pinned_poster() is not None,
        )

    def refuse_split_sends_unjudged(self, driver: str, callbacks: Callbacks | None = None) -> None:
        """For a driver that delivers sends in parts: refuse callbacks that cannot judge them.

        Args:
            driver: Its name, for the error.
            callbacks: The callbacks it was given; ``None``: it uses the defaults.

        Raises:
            ConfigurationError: Naming what to add (``OutcomeTracking``) or use instead.
        """
        if callbacks is not None:
            refuse_parts_unjudged(callbacks, driver)
            return
        settings = self.settings
        refuse_split_sends_unjudged(
            settings.default_callbacks, self.repository, settings.failure_policy, driver
        )

    def default_callbacks(self, notification: Notification[Any]) -> Callbacks | None:
        """The notification's default callbacks, with these settings' policy; the engine sends."""
        return self.settings.default_callbacks.for_notification(
            notification,
            self.repository,
            policy=self.settings.failure_policy,
            sender=self,
        )

    # -- one POST ------------------------------------------------------------------------

    def poster(self) -> tuple[Poster, bool]:
        """The transport's ``apost`` (its blocking ``post`` in a thread pool).

        Returns:
            The POST, and whether the transport bounds each attempt itself (it declares
            [`SelfBoundingTransport`][flnotify.transports.SelfBoundingTransport]); if not,
            the send's watchdog bounds it by ``attempt_timeout``.
        """
        transport = self.transport
        if isinstance(transport, AsyncTransport):
            return transport.apost, self.capabilities.bounds_attempts
        post = transport.post
        pool = self._thread_pool()

        async def in_thread(url: str, body: bytes, headers: dict[str, str]) -> HttpResponse:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, post, url, body, headers)

        return in_thread, False

    def pinned_poster(self) -> Callable[..., Awaitable[HttpResponse]] | None:
        """The transport's ``apost`` taking ``connect_to=`` (the checked address), if any."""
        transport = self.transport
        if self.capabilities.pins_connections and isinstance(transport, PinningTransport):
            return transport.apost
        return None

    def _thread_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(self.settings.concurrency, 64),
                thread_name_prefix="flnotify-post",
            )
        return self._executor

    # -- life cycle ----------------------------------------------------------------------

    def portal(self) -> Portal:
        """The engine's private event loop thread (started on first use)."""
        if self._portal is None:
            self._portal = portal = Portal()
            # an engine dropped without close() must not leak its loop thread
            weakref.finalize(self, portal.close)
        return self._portal

    def run_sync(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the engine's private loop thread and wait for it."""
        return self.portal().run(coroutine)

    async def aclose(self) -> None:
        """Release the transport's connections for the running loop, and worker threads."""
        if isinstance(self.transport, AsyncTransport):
            await self.transport.aclose()
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
