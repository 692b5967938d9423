"""Deliver notifications on Celery workers (``pip install 'flnotify[celery]'``).

The host gives its Celery app; [`CeleryDelivery`][] registers one task on it and
[`CeleryDelivery.enqueue`][] sends a notification as tasks of up to ``chunk_size``
receivers each. What travels through the broker is JSON only (the task is declared with
the ``json`` serializer): the wire document exactly as flnotify encodes it (a string,
encoded once per notification), the receivers as ``{"id": str, "message_endpoint": str}``
and their ``webhook-id`` s, chosen at enqueue time. No host object is ever pickled.

On the worker each execution runs the same delivery core as the in-process
[`Notifier`][flnotify.Notifier] (one Notifier per worker process, with a long-lived
transport and event loop): **one** attempt per receiver of its chunk, all of them
concurrently; the receivers that should be tried again go back to the broker with
``task.retry(countdown=...)`` on the [`RetryPolicy`][flnotify.RetryPolicy]'s schedule (the
longest delay any of them asked for), so a worker never sleeps through a backoff and a
retrying receiver never holds a worker slot. Each receiver's final outcome calls its
callbacks once, on the worker, with the same [`Delivery`][flnotify.Delivery] as in-process:
the notification class's default callbacks built with the repository from
``repository_factory``, or callbacks registered by name. A ``deadline`` counts from the
first execution: receivers still without an outcome when it has passed fail (``DEADLINE``).

The same [`CeleryDelivery`][] must be built in the worker (typically in the module that
creates the app), so that the task and its configuration exist there.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

from .._attempt import message_ids_for, new_send_id
from .._codec import Codec
from .._delivery import Notifier, _Resume
from .._exceptions import ConfigurationError, FlnotifyError, TransportError, TransportErrorKind
from .._hooks import DeliveryHook
from .._notification import Notification
from .._retry import RetryPolicy
from .._types import Receiver
from .._validators import at_least_one, positive
from .._version import __version__
from ..callbacks import CallbackFactory, Callbacks, FailurePolicy, default_callbacks_for
from ..endpoints import EndpointPolicy
from ..health import CircuitBreaker
from ..transports import AsyncTransport, HttpxTransport, Transport

if TYPE_CHECKING:
    from .._mailbox import MailboxStore
    from ..repository import AsyncTrainingRepository, TrainingRepository
    from ..signing import Signer

__all__ = ["DEFAULT_TASK_NAME", "CeleryDelivery", "Enqueued"]

DEFAULT_TASK_NAME = "flnotify.deliver"
"""The name the delivery task is registered under unless told otherwise."""

_WireReceiver = dict[str, str]


@attrs.frozen
class Enqueued:
    """What [`CeleryDelivery.enqueue`][] sent to the broker.

    Args:
        message_ids: The ``webhook-id`` of each receiver, in the order of the receivers.
        results: One Celery ``AsyncResult`` per task (chunk of receivers).
    """

    message_ids: tuple[str, ...]
    results: tuple[Any, ...] = attrs.field(repr=False)


@attrs.define(eq=False)
class CeleryDelivery:
    """Registers flnotify's delivery task on a Celery app, and enqueues notifications for it.

    Args:
        app: The host's ``celery.Celery`` app.
        repository_factory: Builds the repository on the worker (once per worker process)
            for the notification classes' default callbacks, e.g. ``lambda:
            SQLiteTrainingRepository("fl.db")``; without it those callbacks are skipped.
        transport_factory: Builds the transport on the worker (once per process, kept for
            every task), e.g. ``StreamTransport`` for large fan-out.
        signer: Signs each attempt (Standard Webhooks).
        retry: When to try again; ``max_attempts`` includes the first try.
        policy: Which endpoints may be POSTed to, checked on the worker before each POST.
        codec: Encodes notifications at enqueue time and decodes them on the worker; its
            registry must know every class that is sent.
        callbacks: Callback factories selectable by name in [`enqueue`][]; each is called
            on the worker with the repository (or ``None``) and returns the callbacks.
        chunk_size: Receivers per task. A task costs the worker about a millisecond of its
            own, so chunks of hundreds keep that small beside the POSTs (50 ran the 2
            prefork processes at 0.3x of one in-process Notifier, 500 at about 1x; see
            ``docs/benchmarks.md``).
        concurrency: At most this many POSTs in flight per task execution.
        deadline: Seconds from a chunk's first execution after which its receivers
            still without an outcome fail (``DEADLINE``); none by default.
        hooks: Observers of attempts and outcomes on the worker.
        breaker: Skips endpoints that keep failing; share its store between workers
            (e.g. an [`SQLiteHealthStore`][flnotify.health.SQLiteHealthStore]).
        failure_policy: The default callbacks' policy, decided over all chunks of a send
            when the repository keeps outcomes (``OutcomeTracking``).
        task_name: The registered task's name (one per app and configuration).
        user_agent: The ``User-Agent`` header.
        wall_clock: Epoch seconds, for ``webhook-timestamp``, ``Retry-After`` and ``elapsed``.
        rng: Jitter source returning floats in [0, 1).
        mailbox_factory: Opens the mailbox on the worker (once per process) for polling
            receivers (``message_endpoint`` ``"mailbox:"``), e.g. ``lambda:
            Mailbox("mail.db")``; a task waits for their acknowledgements as for answers.
            Without it they fail with a clear error.
    """

    app: Any
    repository_factory: Callable[[], TrainingRepository | AsyncTrainingRepository] | None = None
    transport_factory: Callable[[], Transport | AsyncTransport] = HttpxTransport
    signer: Signer | None = None
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    policy: EndpointPolicy = attrs.field(factory=EndpointPolicy)
    codec: Codec = attrs.field(factory=Codec)
    callbacks: Mapping[str, CallbackFactory] = attrs.field(factory=dict)
    chunk_size: int = attrs.field(default=500, validator=at_least_one)
    concurrency: int = attrs.field(default=100, validator=at_least_one)
    deadline: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive)
    )
    hooks: Sequence[DeliveryHook] = ()
    breaker: CircuitBreaker | None = None
    failure_policy: FailurePolicy = attrs.field(factory=FailurePolicy)
    task_name: str = DEFAULT_TASK_NAME
    user_agent: str = f"flnotify/{__version__}"
    wall_clock: Callable[[], float] = time.time
    rng: Callable[[], float] = random.random
    mailbox_factory: Callable[[], MailboxStore] | None = None
    _task: Any = attrs.field(init=False, default=None, repr=False)
    _notifier: Notifier | None = attrs.field(init=False, default=None, repr=False)
    _repository: TrainingRepository | AsyncTrainingRepository | None = attrs.field(
        init=False, default=None, repr=False
    )
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def __attrs_post_init__(self) -> None:
        def deliver(
            task: Any,
            notification: str,
            receivers: list[_WireReceiver],
            message_ids: list[str],
            callbacks: str | None = None,
            started: float | None = None,
            send: list[Any] | None = None,
        ) -> None:
            self._execute(task, notification, receivers, message_ids, callbacks, started, send)

        deliver.__doc__ = "flnotify: one attempt per receiver of a chunk; retries via Celery."
        deliver.__name__ = deliver.__qualname__ = "deliver"
        self._task = self.app.task(
            bind=True,
            name=self.task_name,
            shared=False,  # this app's task only, not every app created later
            serializer="json",
            acks_late=True,  # a worker lost mid-task: redelivered with the same ids
            reject_on_worker_lost=True,
            max_retries=self.retry.max_attempts - 1,
        )(deliver)

    @property
    def task(self) -> Any:
        """The registered Celery task."""
        return self._task

    # -- the sending side --------------------------------------------------------------

    def enqueue(
        self,
        notification: Notification[Any],
        *,
        callbacks: str | None = None,
        message_ids: Sequence[str] | None = None,
        **options: Any,
    ) -> Enqueued:
        """Send ``notification`` to the broker as tasks of up to ``chunk_size`` receivers.

        Args:
            notification: What to send, and to whom.
            callbacks: The name of callbacks registered in ``callbacks``; by default the
                notification class's default callbacks (built with the worker's repository).
            message_ids: One ``webhook-id`` per receiver; fresh random ids by default.
            **options: Passed on to ``apply_async`` (``queue``, ``priority``, ...).

        Raises:
            ConfigurationError: Unknown callbacks name, or ``message_ids`` does not match
                the receivers.
            PayloadTooLargeError: The encoded body exceeds the endpoint policy's limit.
        """
        if callbacks is not None and callbacks not in self.callbacks:
            msg = f"no callbacks registered as {callbacks!r}; known: {sorted(self.callbacks)}"
            raise ConfigurationError(msg)
        body = self.codec.encode(notification)  # once, whatever the number of receivers
        self.policy.check_body_size(body)
        payload = body.decode()
        receivers = notification.receivers
        message_ids = list(message_ids_for(notification, message_ids))
        ids = [str(m) for m in message_ids]
        wire = [{"id": str(r.id), "message_endpoint": r.message_endpoint} for r in receivers]
        send = [new_send_id(), len(wire)]  # the chunks are one send, for failure policies
        results = tuple(
            self._task.apply_async(
                args=(payload, wire[i : i + self.chunk_size], ids[i : i + self.chunk_size]),
                kwargs={"callbacks": callbacks, "send": send},
                serializer="json",
                **options,
            )
            for i in range(0, len(wire), self.chunk_size)
        )
        return Enqueued(tuple(ids), results)

    # -- the worker side ---------------------------------------------------------------

    def _execute(
        self,
        task: Any,
        payload: str,
        wire: list[_WireReceiver],
        message_ids: list[str],
        callbacks_name: str | None,
        started: float | None,
        send: list[Any] | None,
    ) -> None:
        now = self.wall_clock()
        if started is None:
            started = now
        receivers = [Receiver(UUID(r["id"]), r["message_endpoint"]) for r in wire]
        notification = self.codec.decode(payload).with_receivers(receivers)
        callbacks = self._callbacks_for(notification, callbacks_name)  # fail before any POST
        refused: FlnotifyError | None = None
        remaining = None
        if self.deadline is not None:
            remaining = started + self.deadline - now
            if remaining <= 0:
                refused = TransportError(
                    f"deadline of {self.deadline:g} s passed before an outcome",
                    kind=TransportErrorKind.DEADLINE,
                )
        notifier = self._get_notifier()
        run = notifier._run_sync(
            notifier._deliver(
                notification,
                payload.encode(),
                message_ids,
                callbacks,
                resume=_Resume(int(task.request.retries), started),
                defer_retries=True,
                deadline=remaining,
                refused=refused,
                send=None if send is None else (str(send[0]), int(send[1])),
            )
        )
        if run.deferred:
            again = [index for index, _ in run.deferred]
            raise task.retry(
                args=(payload, [wire[i] for i in again], [message_ids[i] for i in again]),
                kwargs={"callbacks": callbacks_name, "started": started, "send": send},
                countdown=max(delay for _, delay in run.deferred),
                max_retries=self.retry.max_attempts - 1,
            )

    def _callbacks_for(self, notification: Notification[Any], name: str | None) -> Callbacks | None:
        if name is not None:
            factory = self.callbacks.get(name)
            if factory is None:
                msg = f"no callbacks registered as {name!r} on this worker"
                raise ConfigurationError(msg)
            return factory(self._get_repository())
        return default_callbacks_for(
            notification,
            self._get_repository(),
            policy=self.failure_policy,
            sender=self._get_notifier(),
        )

    def _get_notifier(self) -> Notifier:
        """The Notifier of this process: one transport and event loop for all its tasks."""
        with self._lock:
            if self._notifier is None:
                self._notifier = Notifier(
                    transport=self.transport_factory(),
                    retry=self.retry,
                    concurrency=min(self.concurrency, self.chunk_size),
                    signer=self.signer,
                    policy=self.policy,
                    codec=self.codec,
                    hooks=self.hooks,
                    breaker=self.breaker,
                    failure_policy=self.failure_policy,
                    clock=self.wall_clock,  # elapsed counts across executions
                    wall_clock=self.wall_clock,
                    rng=self.rng,
                    user_agent=self.user_agent,
                    mailbox=None if self.mailbox_factory is None else self.mailbox_factory(),
                )
            return self._notifier

    def _get_repository(self) -> TrainingRepository | AsyncTrainingRepository | None:
        if self.repository_factory is None:
            return None
        with self._lock:
            if self._repository is None:
                self._repository = self.repository_factory()
            return self._repository

    def close(self) -> None:
        """Close the transport and repository this process created (the app stays)."""
        with self._lock:
            notifier, self._notifier = self._notifier, None
            repository, self._repository = self._repository, None
        if notifier is not None:
            notifier.close()
        closer = getattr(repository, "close", None)
        if callable(closer):
            closer()
