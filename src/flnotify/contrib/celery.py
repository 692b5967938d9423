"""Deliver notifications on Celery workers (``pip install 'flnotify[celery]'``).

The host gives its Celery app; [`CeleryDelivery`][] registers one task on it and
[`CeleryDelivery.enqueue`][] sends a notification as tasks of up to ``chunk_size``
receivers each. What travels through the broker is JSON only (the task is declared with
the ``json`` serializer): the wire document exactly as flnotify encodes it (a string,
encoded once per notification), the receivers as ``{"id": str, "message_endpoint": str}``
and their ``webhook-id`` s, chosen at enqueue time. No host object is ever pickled.

On the worker each execution makes **one** attempt per receiver of its chunk with the
transport's blocking ``post``; the receivers that should be tried again go back to the
broker with ``task.retry(countdown=...)`` on the [`RetryPolicy`][]'s schedule
(the longest delay any of them asked for), so a worker never sleeps through a backoff and
a retrying receiver never holds a worker slot. Each receiver's final outcome calls its
callbacks once, on the worker, with the same [`Delivery`][] as in-process:
the notification class's default callbacks built with the repository from
``repository_factory``, or callbacks registered by name.

The same [`CeleryDelivery`][] must be built in the worker (typically in the module that
creates the app), so that the task and its configuration exist there.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

from .._codec import Codec
from .._delivery import Delivery, build_headers, message_ids_for, refused_endpoint
from .._exceptions import (
    ConfigurationError,
    EndpointError,
    FlnotifyError,
    TransportError,
)
from .._notification import CallbackFactory, Notification
from .._retry import Decision, Outcome, RetryPolicy
from .._types import Receiver
from .._validators import at_least_one
from ..callbacks import Callbacks, call_callbacks
from ..endpoints import EndpointPolicy
from ..transports import HttpResponse, HttpxTransport, Transport

if TYPE_CHECKING:
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


@attrs.frozen
class _Attempt:
    """One receiver's try in one task execution."""

    decision: Decision
    posted: bool
    response: HttpResponse | None = None
    error: FlnotifyError | None = None


@attrs.define(eq=False)
class CeleryDelivery:
    """Registers flnotify's delivery task on a Celery app, and enqueues notifications for it.

    Args:
        app: The host's ``celery.Celery`` app.
        repository_factory: Builds the repository on the worker (once per worker process)
            for the notification classes' default callbacks, e.g. ``lambda:
            SQLiteTrainingRepository("fl.db")``; without it those callbacks are skipped.
        transport_factory: Builds the blocking transport on the worker (once per process).
        signer: Signs each attempt (Standard Webhooks).
        retry: When to try again; ``max_attempts`` includes the first try.
        policy: Which endpoints may be POSTed to, checked on the worker before each POST.
        codec: Encodes notifications at enqueue time and decodes them on the worker; its
            registry must know every class that is sent.
        callbacks: Callback factories selectable by name in [`enqueue`][]; each is called
            on the worker with the repository (or ``None``) and returns the callbacks.
        chunk_size: Receivers per task.
        task_name: The registered task's name (one per app and configuration).
        user_agent: The ``User-Agent`` header.
        wall_clock: Epoch seconds, for ``webhook-timestamp``, ``Retry-After`` and ``elapsed``.
        rng: Jitter source returning floats in [0, 1).
    """

    app: Any
    repository_factory: Callable[[], TrainingRepository | AsyncTrainingRepository] | None = None
    transport_factory: Callable[[], Transport] = HttpxTransport
    signer: Signer | None = None
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    policy: EndpointPolicy = attrs.field(factory=EndpointPolicy)
    codec: Codec = attrs.field(factory=Codec)
    callbacks: Mapping[str, CallbackFactory] = attrs.field(factory=dict)
    chunk_size: int = attrs.field(default=50, validator=at_least_one)
    task_name: str = DEFAULT_TASK_NAME
    user_agent: str = "flnotify"
    wall_clock: Callable[[], float] = time.time
    rng: Callable[[], float] = random.random
    _task: Any = attrs.field(init=False, default=None, repr=False)
    _transport: Transport | None = attrs.field(init=False, default=None, repr=False)
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
        ) -> None:
            self._execute(task, notification, receivers, message_ids, callbacks, started)

        deliver.__doc__ = "flnotify: one attempt per receiver of a chunk; retries via Celery."
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
        results = tuple(
            self._task.apply_async(
                args=(payload, wire[i : i + self.chunk_size], ids[i : i + self.chunk_size]),
                kwargs={"callbacks": callbacks},
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
    ) -> None:
        attempt = int(task.request.retries) + 1
        if started is None:
            started = self.wall_clock()
        receivers = [Receiver(UUID(r["id"]), r["message_endpoint"]) for r in wire]
        notification = self.codec.decode(payload).with_receivers(receivers)
        callbacks = self._callbacks_for(notification, callbacks_name)  # fail before any POST
        body = payload.encode()
        transport = self._get_transport()
        final: list[Delivery] = []
        again: list[int] = []
        delay = 0.0
        for index, receiver in enumerate(receivers):
            result = self._attempt(transport, body, receiver, message_ids[index], attempt)
            if result.decision.outcome is None:
                again.append(index)
                delay = max(delay, result.decision.delay)
                continue
            final.append(
                Delivery(
                    receiver=receiver,
                    notification=notification,
                    outcome=result.decision.outcome,
                    message_id=message_ids[index],
                    attempts=attempt if result.posted else attempt - 1,
                    elapsed=max(0.0, self.wall_clock() - started),
                    status_code=None if result.response is None else result.response.status_code,
                    error=result.error,
                    response=result.response,
                )
            )
        if callbacks is not None and final:
            asyncio.run(_call_all(callbacks, final))
        if again:
            raise task.retry(
                args=(
                    payload,
                    [wire[i] for i in again],
                    [message_ids[i] for i in again],
                ),
                kwargs={"callbacks": callbacks_name, "started": started},
                countdown=delay,
                max_retries=self.retry.max_attempts - 1,
            )

    def _attempt(
        self, transport: Transport, body: bytes, receiver: Receiver, message_id: str, attempt: int
    ) -> _Attempt:
        """Check the endpoint, POST once, and let the retry policy judge the result."""
        url = receiver.message_endpoint
        try:
            self.policy.check_endpoint(url)
        except (EndpointError, TransportError) as exc:
            error = refused_endpoint(exc, url)
            return _Attempt(Decision(Outcome.FAILED), posted=False, error=error)
        headers = build_headers(
            message_id,
            body,
            receiver,
            timestamp=int(self.wall_clock()),
            signer=self.signer,
            user_agent=self.user_agent,
        )
        response: HttpResponse | None = None
        failure: TransportError | None = None
        try:
            response = transport.post(url, body, headers)
        except TransportError as exc:
            failure = exc
        decision = self.retry.decide(
            attempt, response=response, error=failure, rng=self.rng, now=self.wall_clock
        )
        return _Attempt(decision, posted=True, response=response, error=failure)

    def _callbacks_for(self, notification: Notification[Any], name: str | None) -> Callbacks | None:
        if name is not None:
            factory = self.callbacks.get(name)
            if factory is None:
                msg = f"no callbacks registered as {name!r} on this worker"
                raise ConfigurationError(msg)
            return factory(self._get_repository())
        default = type(notification).default_callbacks
        if default is None:
            return None
        repository = self._get_repository()
        return None if repository is None else default(repository)

    def _get_transport(self) -> Transport:
        with self._lock:
            if self._transport is None:
                self._transport = self.transport_factory()
            return self._transport

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
            transport, self._transport = self._transport, None
            repository, self._repository = self._repository, None
        if transport is not None:
            transport.close()
        closer = getattr(repository, "close", None)
        if callable(closer):
            closer()


async def _call_all(callbacks: Callbacks, deliveries: list[Delivery]) -> None:
    for delivery in deliveries:
        await call_callbacks(callbacks, delivery)
