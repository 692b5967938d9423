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
creates the app), so that the task and its configuration exist there. It refuses an app
whose workers would refuse its JSON messages (``accept_content`` without ``json``, as in
a pickle-only configuration): they would drop every notification while ``enqueue``
returned normally. The task keeps no result (``ignore_result``). Each worker process
builds its transport, repository and mailbox on its first task and closes them when it
shuts down (``worker_process_shutdown``, ``worker_shutdown``).

Ordering: [`enqueue`][flnotify.contrib.celery.CeleryDelivery.enqueue] sends one
notification; two calls are two independent sets of tasks, and a retry of the first may
reach a client after the second.
[`enqueue_ordered`][flnotify.contrib.celery.CeleryDelivery.enqueue_ordered] sends several
as one chain of tasks per group of clients, so no client gets one before the ones before it
were settled (delivered, rejected or failed) for it. In tests, [`use_transport`][] routes
every ``CeleryDelivery`` of the process to a transport of the test's (a
[`MemoryTransport`][flnotify.testing.MemoryTransport]).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs
from typing_extensions import Unpack

from .._attempt import message_ids_for, new_send_id
from .._engine import Engine, Plan, Resume, Settings, SettingsOptions, deadline_passed, with_options
from .._exceptions import ConfigurationError, FlnotifyError
from .._notification import Notification
from .._seams import current_seams
from .._types import Receiver
from ..callbacks import CallbackFactory, Callbacks
from ..mailbox._route import DEFAULT_MAILBOX_LEASE, mailbox_route
from ..transports import AsyncTransport, Transport

if TYPE_CHECKING:
    from ..mailbox._store import MailboxStore
    from ..repository import AsyncTrainingRepository, TrainingRepository

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_TASK_NAME",
    "SMALL_MESSAGE_BROKERS",
    "SMALL_MESSAGE_CHUNK_SIZE",
    "CeleryDelivery",
    "Enqueued",
    "default_chunk_size",
    "use_transport",
]

logger = logging.getLogger("flnotify")

DEFAULT_TASK_NAME = "flnotify.deliver"
"""The name the delivery task is registered under unless told otherwise."""

DEFAULT_CHUNK_SIZE = 1000
"""Receivers per task on a broker that takes large messages (Redis, RabbitMQ, ...).

A task costs its worker about a millisecond of its own (broker round trip, JSON, the run's
set-up); 1000 receivers at 30-50 µs each make that 2-3 % of the task. A receiver costs
about 110 bytes of the message plus its URL, so 1000 receivers with 100-character URLs are
about 200 KB: far below Redis's 512 MB and RabbitMQ's 16 MiB (4.x ``max_message_size``).
Larger chunks gain little more and leave worker processes idle at the end of a send
(10,000 receivers in chunks of 2000 are 5 tasks: of 2 processes, one runs 3). Measured in
``docs/benchmarks.md`` (``bench/scaleout.py --chunk``).
"""
SMALL_MESSAGE_CHUNK_SIZE = 500
"""Receivers per task on a broker of small messages (``SMALL_MESSAGE_BROKERS``).

Amazon SQS and Azure Service Bus take at most 256 KiB per message, and kombu's SQS
transport base64-encodes the body (4/3 of its size): 500 receivers with 100-character
URLs are about 140 KB on the wire, leaving room for the notification's body.
"""
SMALL_MESSAGE_BROKERS = frozenset({"sqs", "azureservicebus"})
"""Broker URL schemes (kombu transports) whose messages are capped at 256 KiB."""

_WireReceiver = dict[str, str]
_JSON = "application/json"

# A test's transport for every CeleryDelivery of the process (see use_transport), and
# the deliveries to rebuild when it changes.
_overrides: list[AsyncTransport | Transport] = []
_deliveries: weakref.WeakSet[CeleryDelivery] = weakref.WeakSet()


def _refuse_unaccepted(app: Any) -> None:
    """Raise if the app's workers would refuse the task's JSON messages."""
    from kombu.exceptions import SerializerNotInstalled
    from kombu.serialization import prepare_accept_content

    accepted = app.conf.accept_content
    try:
        types = prepare_accept_content(accepted)  # type: ignore[no-untyped-call]
    except SerializerNotInstalled as exc:
        msg = f"the Celery app's accept_content {accepted!r} is not usable: {exc}"
        raise ConfigurationError(msg) from None
    if types is not None and _JSON not in types:
        msg = (
            f"the Celery app accepts only {list(accepted)!r} (its accept_content setting;"
            " CELERY_ACCEPT_CONTENT in a Django settings module): flnotify's task is sent"
            " as JSON (its task_serializer is 'json', whatever the app's), so every worker"
            " would refuse it ('Refusing to deserialize untrusted content') and drop the"
            " notification. Add 'json' to accept_content; the app's own tasks can keep"
            " their serializer"
        )
        raise ConfigurationError(msg)


def default_chunk_size(app: Any) -> int:
    """The ``chunk_size`` [`CeleryDelivery`][] takes for ``app`` unless told.

    ``SMALL_MESSAGE_CHUNK_SIZE`` when the app's broker (``broker_url``, or
    ``broker_transport`` when set) is one of ``SMALL_MESSAGE_BROKERS``, else
    ``DEFAULT_CHUNK_SIZE``.
    """
    conf = app.conf
    transport = conf.get("broker_transport") or conf.get("broker_url") or ""
    if not isinstance(transport, str):  # a transport class, or several URLs: look no further
        transport = str(getattr(transport, "__name__", "")) or ""
    scheme = transport.split("://", 1)[0].split("+", 1)[0].lower()
    return SMALL_MESSAGE_CHUNK_SIZE if scheme in SMALL_MESSAGE_BROKERS else DEFAULT_CHUNK_SIZE


@contextlib.contextmanager
def use_transport(transport: AsyncTransport | Transport) -> Iterator[None]:
    """Within the block, every [`CeleryDelivery`][] of this process sends through ``transport``.

    For tests of a host app whose tasks run in the test process (``task_always_eager``,
    or a worker started by ``celery.contrib.testing``): the per-process delivery objects,
    built once and kept, are closed on entry and on exit, so the ones built inside the
    block use ``transport`` (a [`MemoryTransport`][flnotify.testing.MemoryTransport],
    say) and nothing reaches the network. A worker in another process is not affected.
    """
    for delivery in list(_deliveries):
        delivery.close()
    _overrides.append(transport)
    try:
        yield
    finally:
        _overrides.remove(transport)
        for delivery in list(_deliveries):
            delivery.close()


def _on_shutdown(delivery: weakref.ReferenceType[CeleryDelivery]) -> Callable[..., None]:
    """A signal receiver closing the delivery's objects of this process (if it lives)."""

    def receiver(sender: Any = None, **_: Any) -> None:
        target = delivery()
        if target is None:
            return
        app = getattr(sender, "app", None)  # worker_shutdown: the worker, with its app
        if app is None or app is target.app:
            target.close()

    return receiver


@attrs.frozen
class Enqueued:
    """What [`CeleryDelivery.enqueue`][] sent to the broker.

    Args:
        message_ids: The ``webhook-id`` of each receiver, in the order of the receivers.
        results: One Celery ``AsyncResult`` per task (chunk of receivers).
    """

    message_ids: tuple[str, ...]
    results: tuple[Any, ...] = attrs.field(repr=False)


class CeleryDelivery:
    """Registers flnotify's delivery task on a Celery app, and enqueues notifications for it.

    Args:
        app: The host's ``celery.Celery`` app.
        settings: How sends are made (the same [`Settings`][flnotify.Settings] value a
            [`Notifier`][flnotify.Notifier] takes), without a ``transport``: each worker
            process builds its own with ``transport_factory``.
        repository_factory: Builds the repository on the worker (once per worker process)
            for the notification classes' default callbacks, e.g. ``lambda:
            SQLiteTrainingRepository("fl.db")``; without it those callbacks are skipped.
        transport_factory: Builds the transport on the worker (once per process, kept for
            every task); the engine's default
            ([`StreamTransport`][flnotify.transports.StreamTransport]) if ``None``.
        callbacks: Callback factories selectable by name in [`enqueue`][]; each is called
            on the worker with the repository (or ``None``) and returns the callbacks.
        chunk_size: Receivers per task; by default as large as the broker allows
            ([`default_chunk_size`][flnotify.contrib.celery.default_chunk_size]: 1000, or 500
            on SQS and Azure Service Bus, whose messages are capped at 256 KiB). A task costs
            the worker about a millisecond of its own, so chunks of hundreds keep that small
            beside the POSTs (50 ran the 2 prefork processes at 0.3x of one in-process
            Notifier; see ``docs/benchmarks.md``).
        task_name: The registered task's name (one per app and configuration).
        mailbox_factory: Opens the mailbox on the worker (once per process) for polling
            receivers (``message_endpoint`` ``"mailbox:"``), e.g. ``lambda:
            Mailbox("mail.db")``; a task waits for their acknowledgements as for answers.
            Without it they fail with a clear error.
        **options: Single fields of [`Settings`][flnotify.Settings] (``retry``,
            ``signer``, ``policy``, ``deadline``, ``failure_policy``, ``hooks``, ...),
            applied over ``settings``. ``deadline`` counts from a chunk's first execution;
            ``concurrency`` is per task execution (at most ``chunk_size``).
    """

    def __init__(
        self,
        app: Any,
        *,
        settings: Settings | None = None,
        repository_factory: Callable[[], TrainingRepository | AsyncTrainingRepository]
        | None = None,
        transport_factory: Callable[[], Transport | AsyncTransport] | None = None,
        callbacks: Mapping[str, CallbackFactory] | None = None,
        chunk_size: int | None = None,
        task_name: str = DEFAULT_TASK_NAME,
        mailbox_factory: Callable[[], MailboxStore] | None = None,
        **options: Unpack[SettingsOptions],
    ) -> None:
        if chunk_size is None:
            chunk_size = default_chunk_size(app)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            msg = f"chunk_size must be an int >= 1, got {chunk_size!r}"
            raise ConfigurationError(msg)
        _refuse_unaccepted(app)
        settings = with_options(settings, options, "CeleryDelivery")
        if settings.transport is not None:
            msg = (
                "CeleryDelivery builds a transport in each worker process: pass"
                " transport_factory=..., not Settings(transport=...)"
            )
            raise ConfigurationError(msg)
        self.app = app
        self.settings = settings
        self.repository_factory = repository_factory
        self.transport_factory = transport_factory
        self.callbacks: Mapping[str, CallbackFactory] = dict(callbacks or {})
        self.chunk_size = chunk_size
        self.task_name = task_name
        self.mailbox_factory = mailbox_factory
        self._seams = current_seams()  # the worker's engines take the seams of now
        self._engine: Engine | None = None
        self._repository: TrainingRepository | AsyncTrainingRepository | None = None
        self._mailbox: MailboxStore | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

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
            ignore_result=True,  # outcomes go to the callbacks; nothing reads a result
            acks_late=True,  # a worker lost mid-task: redelivered with the same ids
            reject_on_worker_lost=True,
            max_retries=self.settings.retry.max_attempts - 1,
        )(deliver)
        from celery import signals  # type: ignore[import-untyped]

        receiver = _on_shutdown(weakref.ref(self))
        self._shutdown_receiver = receiver  # the signals keep weak references only
        signals.worker_process_shutdown.connect(receiver)
        signals.worker_shutdown.connect(receiver)
        _deliveries.add(self)

    def __repr__(self) -> str:
        return f"CeleryDelivery(task_name={self.task_name!r}, settings={self.settings!r})"

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
        self._check_enqueue(callbacks)
        prepared = self._prepare(notification, message_ids)
        payload, wire, ids, send = prepared
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

    def enqueue_ordered(
        self,
        notifications: Sequence[Notification[Any]],
        *,
        callbacks: str | None = None,
        **options: Any,
    ) -> tuple[Enqueued, ...]:
        """Send ``notifications`` so that each client gets them in this order, never overtaken.

        E.g. ``TRAINING_START`` and the first ``UPDATE_ROUND_START``: a client gets a
        notification only once every earlier one of the list was settled for it
        (delivered, rejected, or failed after its retries: a failure does not hold the
        later ones back). The clients are cut into groups of ``chunk_size``; each group's
        notifications run as one Celery chain, one task after the other, so a group's
        later notification waits for the earlier one's retries in that group, and other
        groups go on meanwhile.

        Args:
            notifications: What to send, in order; each to its own receivers.
            callbacks: As in [`enqueue`][], for every notification.
            **options: Passed on to each task's ``apply_async`` (``queue``, ...).

        Returns:
            One [`Enqueued`][] per notification, in order; its ``results`` are the tasks
            of its groups (sent by the worker when their turn comes).

        Raises:
            ConfigurationError: Unknown callbacks name.
            PayloadTooLargeError: An encoded body exceeds the endpoint policy's limit.
        """
        from celery import chain

        self._check_enqueue(callbacks)
        prepared = [self._prepare(n, None) for n in notifications]
        clients = list(dict.fromkeys(r.id for n in notifications for r in n.receivers))
        group_of = {client: i // self.chunk_size for i, client in enumerate(clients)}
        chains: list[list[Any]] = [[] for _ in range(-(-len(clients) // self.chunk_size))]
        results: list[list[Any]] = [[] for _ in notifications]
        for k, (notification, (payload, wire, ids, send)) in enumerate(
            zip(notifications, prepared, strict=True)
        ):
            parts: dict[int, list[int]] = {}
            for index, receiver in enumerate(notification.receivers):
                parts.setdefault(group_of[receiver.id], []).append(index)
            for group, indices in parts.items():
                task_id = str(uuid.uuid4())
                chains[group].append(
                    self._task.signature(
                        ([payload, [wire[i] for i in indices], [ids[i] for i in indices]]),
                        {"callbacks": callbacks, "send": send},
                        task_id=task_id,
                        serializer="json",
                        immutable=True,  # not given the result of the task before it
                        **options,
                    )
                )
                results[k].append(self._task.AsyncResult(task_id))
        for tasks in chains:
            chain(*tasks).apply_async()
        return tuple(
            Enqueued(tuple(p[2]), tuple(r)) for p, r in zip(prepared, results, strict=True)
        )

    def _check_enqueue(self, callbacks: str | None) -> None:
        if callbacks is not None and callbacks not in self.callbacks:
            msg = f"no callbacks registered as {callbacks!r}; known: {sorted(self.callbacks)}"
            raise ConfigurationError(msg)
        _refuse_unaccepted(self.app)  # configured after construction: still not silent

    def _prepare(
        self, notification: Notification[Any], message_ids: Sequence[str] | None
    ) -> tuple[str, list[_WireReceiver], list[str], list[Any]]:
        """The payload (encoded once), receivers and ids on the wire, and the send."""
        payload = self.settings.encode(notification).decode()
        ids = [str(m) for m in message_ids_for(notification, message_ids)]
        wire = [
            {"id": str(r.id), "message_endpoint": r.message_endpoint}
            for r in notification.receivers
        ]
        return payload, wire, ids, [new_send_id(), len(wire)]  # one send, for the policies

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
        engine = self._get_engine()
        now = engine.seams.clock()
        if started is None:
            started = now
        retries = int(task.request.retries)
        receivers = [Receiver(UUID(r["id"]), r["message_endpoint"]) for r in wire]
        notification = self.settings.codec.decode(payload).with_receivers(receivers)
        callbacks = self._callbacks_for(notification, callbacks_name)  # fail before any POST
        refused: FlnotifyError | None = None
        remaining = None
        deadline = self.settings.deadline
        if deadline is not None:
            remaining = started + deadline - now
            if remaining <= 0:
                refused = deadline_passed(deadline)
        plan = Plan(
            notification,
            payload.encode(),
            message_ids,
            callbacks,
            # a first execution makes first attempts: the engine's fast lane takes them, as
            # in-process (a retry resumes its receivers' attempts and start on the general path)
            resume=Resume(retries, started) if retries else None,
            defer_retries=True,
            deadline=remaining,
            refused=refused,
            send_id=new_send_id() if send is None else str(send[0]),
            send_size=-1 if send is None else int(send[1]),
        )
        run = engine.run_sync(engine.run(plan))
        if run.deferred:
            again = [index for index, _ in run.deferred]
            countdown = max(delay for _, delay in run.deferred)
            logger.info(
                "%s: %d receiver(s) to try again in %.2f s (attempt %d of %d), %d settled.",
                notification.notification_type.value,
                len(again),
                countdown,
                retries + 2,
                self.settings.retry.max_attempts,
                len(run.report),
                extra={"notification_type": notification.notification_type.value},
            )
            raise task.retry(
                args=(payload, [wire[i] for i in again], [message_ids[i] for i in again]),
                kwargs={"callbacks": callbacks_name, "started": started, "send": send},
                countdown=countdown,
                max_retries=self.settings.retry.max_attempts - 1,
            )

    def _callbacks_for(self, notification: Notification[Any], name: str | None) -> Callbacks | None:
        if name is not None:
            factory = self.callbacks.get(name)
            if factory is None:
                msg = f"no callbacks registered as {name!r} on this worker"
                raise ConfigurationError(msg)
            return factory(self._get_repository())
        return self._get_engine().default_callbacks(notification)

    def _forked(self) -> None:
        """In a child forked after the objects were built: they are the parent's, not ours."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._engine = self._repository = self._mailbox = None

    def _get_engine(self) -> Engine:
        """The engine of this process: one transport and event loop for all its tasks."""
        self._forked()
        with self._lock:
            if self._engine is None:
                settings = self.settings
                if _overrides:
                    settings = attrs.evolve(settings, transport=_overrides[-1])
                elif self.transport_factory is not None:
                    settings = attrs.evolve(settings, transport=self.transport_factory())
                settings = attrs.evolve(
                    settings, concurrency=min(settings.concurrency, self.chunk_size)
                )
                seams = self._seams
                if self._mailbox is None and self.mailbox_factory is not None:
                    self._mailbox = self.mailbox_factory()
                engine = Engine(
                    settings,
                    repository=self._repository_locked(),
                    routes=(mailbox_route(self._mailbox, DEFAULT_MAILBOX_LEASE),),
                    # elapsed counts across executions (and processes): the wall clock
                    seams=attrs.evolve(seams, clock=seams.wall_clock),
                )
                # chunks and deferred retries are parts of a send: refuse what cannot judge it
                engine.refuse_split_sends_unjudged("CeleryDelivery")
                self._engine = engine
            return self._engine

    def _repository_locked(self) -> TrainingRepository | AsyncTrainingRepository | None:
        if self.repository_factory is None:
            return None
        if self._repository is None:
            self._repository = self.repository_factory()
        return self._repository

    def _get_repository(self) -> TrainingRepository | AsyncTrainingRepository | None:
        self._forked()
        with self._lock:
            return self._repository_locked()

    def close(self) -> None:
        """Close the transport, repository and mailbox this process built (the app stays).

        Called by the worker's shutdown signals; the next task builds them again.
        """
        self._forked()
        with self._lock:
            engine, self._engine = self._engine, None
            repository, self._repository = self._repository, None
            mailbox, self._mailbox = self._mailbox, None
        if engine is not None:
            engine.close()
        for closable in (repository, mailbox):
            closer = getattr(closable, "close", None)
            if callable(closer):
                closer()
