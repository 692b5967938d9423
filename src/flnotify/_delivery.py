"""The Notifier: encode once, fan out concurrently, retry without blocking, report everything.

Per receiver there is exactly one [`Delivery`][] and exactly one callback call.
All decisions (what an answer means, when to retry) come from [`RetryPolicy`][]; this
module only schedules. The engine is asyncio; ``Notifier.send`` runs it on a private event
loop thread, so it works from plain sync code and from inside a running event loop alike.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
from typing_extensions import Self

from ._closing import AsyncClosing, Closing
from ._codec import Codec
from ._exceptions import (
    BlockedAddressError,
    ConfigurationError,
    DeliveryError,
    EndpointError,
    FlnotifyError,
    InvalidURLError,
    TransportError,
    TransportErrorKind,
)
from ._notification import Notification, TrainingNotification
from ._retry import Outcome, RetryPolicy
from ._types import ReceiverLike
from ._validators import at_least_one, positive
from ._version import __version__
from .callbacks import Callbacks, call_callbacks
from .endpoints import EndpointPolicy
from .transports._base import AsyncTransport, HttpResponse, Transport
from .transports._httpx import HttpxTransport

if TYPE_CHECKING:
    from .repository import AsyncTrainingRepository, TrainingRepository
    from .signing import Signer

__all__ = [
    "Delivery",
    "DeliveryReport",
    "Notifier",
    "build_headers",
    "message_ids_for",
    "refused_endpoint",
]

logger = logging.getLogger("flnotify")
T = TypeVar("T")


@attrs.frozen
class Delivery:
    """The final result of delivering one notification to one receiver.

    Args:
        receiver: Who it was for.
        notification: What was sent.
        outcome: Delivered, rejected or failed.
        message_id: The ``webhook-id`` it carried (the same on every attempt).
        attempts: POSTs made (0 when the endpoint was refused before any I/O).
        elapsed: Seconds from the first attempt to the outcome, backoff included.
        status_code: The last HTTP status received, if any.
        error: Why it failed, when it did without a final status.
        response: The last answer (body capped by the transport) of a receiver that was
            not delivered, for diagnosis; ``None`` for delivered ones (``status_code``
            says enough, and a large fan-out's report stays small).
    """

    receiver: ReceiverLike
    notification: Notification[Any] = attrs.field(repr=False)
    outcome: Outcome
    message_id: str
    attempts: int
    elapsed: float
    status_code: int | None = None
    error: FlnotifyError | None = None
    response: HttpResponse | None = attrs.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.outcome is Outcome.DELIVERED

    def describe(self) -> str:
        """One line for humans: receiver, outcome, status or error, attempts."""
        why = f"status {self.status_code}" if self.status_code is not None else ""
        if self.error is not None:
            why = f"{why}; {self.error}" if why else str(self.error)
        return (
            f"{self.receiver.id} ({self.receiver.message_endpoint}): {self.outcome.value}"
            f"{', ' + why if why else ''} after {self.attempts} attempt(s)"
        )

    def log_context(self) -> dict[str, object]:
        """Fields for ``logging``'s ``extra``: ids, endpoint and type; never secrets."""
        notification = self.notification
        training = (
            str(notification.training_uuid)
            if isinstance(notification, TrainingNotification)
            else None
        )
        return {
            "training_id": training,
            "receiver_id": str(self.receiver.id),
            "endpoint": self.receiver.message_endpoint,
            "notification_type": notification.notification_type.value,
            "message_id": self.message_id,
            "outcome": self.outcome.value,
        }


@attrs.frozen
class DeliveryReport:
    """Every receiver's [`Delivery`][] for one send, in the order of the receivers."""

    notification: Notification[Any] = attrs.field(repr=False)
    deliveries: tuple[Delivery, ...]
    elapsed: float

    def __iter__(self) -> Iterator[Delivery]:
        return iter(self.deliveries)

    def __len__(self) -> int:
        return len(self.deliveries)

    def _with(self, outcome: Outcome) -> tuple[Delivery, ...]:
        return tuple(d for d in self.deliveries if d.outcome is outcome)

    @property
    def delivered(self) -> tuple[Delivery, ...]:
        """The deliveries that got a 2xx."""
        return self._with(Outcome.DELIVERED)

    @property
    def rejected(self) -> tuple[Delivery, ...]:
        """The deliveries a client said no to."""
        return self._with(Outcome.REJECTED)

    @property
    def failed(self) -> tuple[Delivery, ...]:
        """The deliveries that could not be completed."""
        return self._with(Outcome.FAILED)

    def counts(self) -> dict[Outcome, int]:
        """How many deliveries ended in each outcome (every outcome present)."""
        counts = dict.fromkeys(Outcome, 0)
        for delivery in self.deliveries:
            counts[delivery.outcome] += 1
        return counts

    @property
    def ok(self) -> bool:
        """Whether every receiver answered 2xx."""
        return all(d.outcome is Outcome.DELIVERED for d in self.deliveries)

    def raise_for_failures(self) -> Self:
        """Return ``self`` if all were delivered, else raise [`DeliveryError`][]."""
        bad = tuple(d for d in self.deliveries if d.outcome is not Outcome.DELIVERED)
        if bad:
            raise DeliveryError(bad)
        return self


def build_headers(
    message_id: str,
    body: bytes,
    receiver: ReceiverLike,
    *,
    timestamp: int,
    signer: Signer | None,
    user_agent: str,
) -> dict[str, str]:
    """The headers of one attempt: JSON, ``webhook-id``/``-timestamp``, signature if signing."""
    headers = {
        "content-type": "application/json",
        "user-agent": user_agent,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
    }
    if signer is not None:
        headers.update(signer.headers(message_id, timestamp, body, receiver))
    return headers


def refused_endpoint(exc: EndpointError | TransportError, url: str) -> TransportError:
    """The failure of a receiver whose endpoint was refused before any POST.

    An invalid URL becomes an [`InvalidURLError`][], a guarded address a
    ``TransportError`` of kind ``BLOCKED`` (both never retried); a failed name resolution of
    the guard is kept as it is. The policy's error stays as ``__cause__``.
    """
    if isinstance(exc, TransportError):
        return exc
    error: TransportError
    if isinstance(exc, BlockedAddressError):
        error = TransportError(str(exc), url=url, kind=TransportErrorKind.BLOCKED)
    else:
        error = InvalidURLError(str(exc), url=url)
    error.__cause__ = exc
    return error


def message_ids_for(
    notification: Notification[Any], message_ids: Sequence[str] | None
) -> Sequence[str]:
    """One ``webhook-id`` per receiver: the given ones (checked), or new unique ones.

    Raises:
        ConfigurationError: ``message_ids`` does not have one id per receiver.
    """
    n = len(notification.receivers)
    if message_ids is None:  # one random 96-bit prefix per send, then the receiver's index
        prefix = "msg_" + secrets.token_hex(12)
        return [f"{prefix}_{i:x}" for i in range(n)]
    if len(message_ids) != n:
        msg = f"{len(message_ids)} message ids for {n} receivers"
        raise ConfigurationError(msg)
    return message_ids


def _default_transport() -> HttpxTransport:
    return HttpxTransport()


@attrs.define
class Notifier(Closing, AsyncClosing):
    """Sends notifications to their receivers; reusable, and closed when done.

    Args:
        transport: How POSTs are made; anything with ``apost`` (preferred) or ``post``.
            Defaults to a pooled [`HttpxTransport`][].
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
        sleep: Awaited for each backoff; inject a fake in tests.
        clock: Monotonic seconds, for ``elapsed``.
        wall_clock: Epoch seconds, for ``webhook-timestamp`` and ``Retry-After`` dates.
        rng: Jitter source returning floats in [0, 1).
        user_agent: The ``User-Agent`` header.
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
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    rng: Callable[[], float] = random.random
    user_agent: str = f"flnotify/{__version__}"
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
                default callbacks (built with `repository`), if any.
            message_ids: One ``webhook-id`` per receiver (e.g. kept in an outbox so a
                resend carries the same ids); new random ids by default.

        Raises:
            ConfigurationError: ``message_ids`` does not match the receivers.
            PayloadTooLargeError: The encoded body exceeds the endpoint policy's limit.
        """
        body = self.codec.encode(notification)  # once, whatever the number of receivers
        self.policy.check_body_size(body)
        ids = message_ids_for(notification, message_ids)
        run = _Send(self, notification, body, ids, self._callbacks_for(notification, callbacks))
        return await run.run()

    def send(
        self,
        notification: Notification[Any],
        callbacks: Callbacks | None = None,
        *,
        message_ids: Sequence[str] | None = None,
    ) -> DeliveryReport:
        """Blocking [`asend`][]; also safe to call from inside a running event loop."""
        return self._run_sync(self.asend(notification, callbacks, message_ids=message_ids))

    def _callbacks_for(
        self, notification: Notification[Any], callbacks: Callbacks | None
    ) -> Callbacks | None:
        if callbacks is not None:
            return callbacks
        factory = type(notification).default_callbacks
        if factory is None or self.repository is None:
            return None
        return factory(self.repository)

    # -- one POST ------------------------------------------------------------------------

    def _poster(self) -> Callable[[str, bytes, dict[str, str]], Awaitable[HttpResponse]]:
        """The transport's ``apost``, or its blocking ``post`` run in a thread pool."""
        apost: Callable[[str, bytes, dict[str, str]], Awaitable[HttpResponse]] | None = getattr(
            self.transport, "apost", None
        )
        if apost is not None:
            return apost
        post = cast(Transport, self.transport).post
        pool = self._thread_pool()

        async def in_thread(url: str, body: bytes, headers: dict[str, str]) -> HttpResponse:
            return await asyncio.get_running_loop().run_in_executor(pool, post, url, body, headers)

        return in_thread

    def _thread_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(self.concurrency, 64), thread_name_prefix="flnotify-post"
            )
        return self._executor

    def _headers(self, message_id: str, body: bytes, receiver: ReceiverLike) -> dict[str, str]:
        return build_headers(
            message_id,
            body,
            receiver,
            timestamp=int(self.wall_clock()),  # taken at every attempt
            signer=self.signer,
            user_agent=self.user_agent,
        )

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
    """The state of one fan-out: workers, attempts, retries, a deadline, the results.

    ``concurrency`` worker coroutines are the only ones that POST, so at most that many
    requests are in flight. They take receivers due for a retry first, then fresh ones from
    a shared iterator (no task per receiver: memory stays flat at 100,000 receivers). A
    receiver waiting for its retry is a small sleeping task that holds no worker, so it never
    delays the others; when it wakes it queues itself for the next free worker.
    """

    def __init__(
        self,
        notifier: Notifier,
        notification: Notification[Any],
        body: bytes,
        message_ids: Sequence[str],
        callbacks: Callbacks | None,
    ) -> None:
        self.notifier = notifier
        self.notification = notification
        self.body = body
        self.message_ids = message_ids
        self.callbacks = callbacks
        n = len(notification.receivers)
        self.results: list[Delivery | None] = [None] * n
        self.attempts = [0] * n
        self.started = [0.0] * n
        self.last: dict[int, HttpResponse] = {}  # last answer of receivers in backoff
        self.remaining = n
        self.ready: collections.deque[tuple[int, ReceiverLike, str]] = collections.deque()
        self.sleeping = 0  # receivers waiting for their retry
        self.wakeup = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.post = notifier._poster()
        self.queue: asyncio.Queue[Delivery] | None = (
            asyncio.Queue() if callbacks is not None else None
        )

    async def run(self) -> DeliveryReport:
        notifier = self.notifier
        begin = notifier.clock()
        loop = asyncio.get_running_loop()
        receivers = self.notification.receivers
        timer = (
            loop.call_later(notifier.deadline, self.expire)
            if notifier.deadline is not None and receivers
            else None
        )
        fresh = iter(enumerate(receivers))
        for _ in range(min(notifier.concurrency, len(receivers))):
            self.spawn(self.work(fresh))
        try:
            if self.remaining == 0:
                self.done.set()
            if self.queue is not None and self.callbacks is not None:
                for _ in range(len(self.results)):
                    await call_callbacks(self.callbacks, await self.queue.get())
            await self.done.wait()
        finally:
            if timer is not None:
                timer.cancel()
            self.cancel_all()
        deliveries = tuple(d for d in self.results if d is not None)
        report = DeliveryReport(self.notification, deliveries, notifier.clock() - begin)
        if logger.isEnabledFor(logging.INFO):
            counts = report.counts()
            logger.info(
                "%s to %d receiver(s): %d delivered, %d rejected, %d failed in %.3fs",
                self.notification.notification_type.value,
                len(report),
                counts[Outcome.DELIVERED],
                counts[Outcome.REJECTED],
                counts[Outcome.FAILED],
                report.elapsed,
            )
        return report

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def work(self, fresh: Iterator[tuple[int, ReceiverLike]]) -> None:
        """POST for receivers until none is left to try, now or after a backoff.

        A fresh receiver's endpoint is checked before any I/O, then its first attempt is
        made. (One flat loop on purpose: every coroutine layer costs on the path of 100,000
        receivers.)
        """
        policy = self.notifier.policy
        clock = self.notifier.clock
        ready = self.ready
        while True:
            if ready:
                await self.attempt(*ready.popleft())
                continue
            item = next(fresh, None)
            if item is None:
                if not self.sleeping:
                    self.wakeup.set()  # nothing is left: let idle workers see it and end
                    return
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            index, receiver = item
            url = receiver.message_endpoint
            try:
                if policy.block_private:
                    endpoint = policy.check_url(url)
                    await policy.acheck_host(endpoint.host, endpoint.port, url=url)
                else:
                    policy.validate_url(url)
            except (EndpointError, TransportError) as exc:
                self.finish(index, receiver, Outcome.FAILED, error=refused_endpoint(exc, url))
                continue
            except Exception as exc:  # e.g. a host's resolver broke; never lose the receiver
                logger.exception("checking the endpoint of %s failed", receiver.id)
                error = TransportError(str(exc), url=url, kind=TransportErrorKind.INTERNAL)
                error.__cause__ = exc
                self.finish(index, receiver, Outcome.FAILED, error=error)
                continue
            self.started[index] = clock()
            await self.attempt(index, receiver, url)

    async def again(self, index: int, receiver: ReceiverLike, url: str, delay: float) -> None:
        """Sleep (holding no worker), then queue the next attempt for a free worker."""
        await self.notifier.sleep(delay)
        self.sleeping -= 1
        self.ready.append((index, receiver, url))
        self.wakeup.set()

    async def attempt(self, index: int, receiver: ReceiverLike, url: str) -> None:
        """One POST; the retry policy decides between an outcome and another attempt."""
        notifier = self.notifier
        self.attempts[index] = attempt = self.attempts[index] + 1
        response: HttpResponse | None = None
        error: TransportError | None = None
        body = self.body
        try:
            response = await self.post(
                url, body, notifier._headers(self.message_ids[index], body, receiver)
            )
        except TransportError as exc:
            error = exc
        except Exception as exc:  # a transport broke its contract; never lose the receiver
            logger.exception("transport %s raised %r", type(notifier.transport).__name__, exc)
            msg = f"transport raised {type(exc).__name__}: {exc}"
            error = TransportError(msg, url=url, kind=TransportErrorKind.INTERNAL)
            error.__cause__ = exc
        decision = notifier.retry.decide(
            attempt, response=response, error=error, rng=notifier.rng, now=notifier.wall_clock
        )
        if decision.outcome is not None:
            self.finish(index, receiver, decision.outcome, response=response, error=error)
            return
        if response is not None:
            self.last[index] = response
        self.sleeping += 1
        self.spawn(self.again(index, receiver, url, decision.delay))

    def record(self, index: int, delivery: Delivery) -> None:
        if self.results[index] is not None:  # cannot happen: expire() cancels first
            return
        self.results[index] = delivery
        self.remaining -= 1
        if self.queue is not None:
            self.queue.put_nowait(delivery)
        if self.remaining == 0:
            self.done.set()

    def finish(
        self,
        index: int,
        receiver: ReceiverLike,
        outcome: Outcome,
        *,
        response: HttpResponse | None = None,
        error: FlnotifyError | None = None,
    ) -> None:
        started = self.started[index]
        self.record(
            index,
            Delivery(
                receiver=receiver,
                notification=self.notification,
                outcome=outcome,
                message_id=self.message_ids[index],
                attempts=self.attempts[index],
                elapsed=self.notifier.clock() - started if started else 0.0,
                status_code=None if response is None else response.status_code,
                error=error,
                # kept to diagnose what went wrong; a 2xx answer's body and headers are
                # dropped so that a report of 100,000 deliveries stays small
                response=None if outcome is Outcome.DELIVERED else response,
            ),
        )

    def expire(self) -> None:
        """The deadline passed: everything still pending fails now, callbacks included."""
        self.cancel_all()  # first, so that nothing records after this
        deadline = self.notifier.deadline
        for index, receiver in enumerate(self.notification.receivers):
            if self.results[index] is not None:
                continue
            error = TransportError(
                f"deadline of {deadline}s passed before an outcome",
                url=receiver.message_endpoint,
                kind=TransportErrorKind.DEADLINE,
            )
            self.finish(index, receiver, Outcome.FAILED, response=self.last.get(index), error=error)


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
