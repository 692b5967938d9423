"""The Notifier: the in-process facade of the engine.

It encodes once, fans out concurrently, retries without blocking and reports everything,
by handing the [`Engine`][flnotify._engine.Engine] one plan per send. ``Notifier.send`` runs
the engine on a private event loop thread, so it works from plain sync code and from inside
a running event loop alike; ``Notifier.submit`` starts a send and returns at once with a
[`SendHandle`][flnotify.SendHandle]. In-process push keeps no record of outcomes: a process that
dies during a send loses the callbacks still to run; the outbox keeps them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
from typing_extensions import Unpack

from ._closing import AsyncClosing, Closing
from ._engine import Engine, Plan, Settings, SettingsOptions, with_options
from ._handle import SendHandle
from ._notification import Notification
from ._report import DeliveryReport
from .callbacks import Callbacks
from .mailbox._route import DEFAULT_MAILBOX_LEASE, mailbox_route
from .transports._base import AsyncTransport, Transport

if TYPE_CHECKING:
    from .mailbox._store import MailboxStore
    from .repository import AsyncTrainingRepository, TrainingRepository

__all__ = ["Notifier"]


class Notifier(Closing, AsyncClosing):
    """Sends notifications to their receivers; reusable, and closed when done.

    Args:
        transport: How POSTs are made; a
            [`StreamTransport`][flnotify.transports.StreamTransport] by default (see
            [`Settings.transport`][flnotify.Settings]).
        repository: Lets notification classes with default callbacks (the round-type
            ones) build them, e.g. [`TrainingCallbacks`][flnotify.TrainingCallbacks].
        mailbox: Where notifications for polling receivers (``message_endpoint``
            ``"mailbox:"``) wait for their clients, e.g. a
            [`Mailbox`][flnotify.mailbox.Mailbox]; a send waits for their
            acknowledgements like for the answers of its POSTs.
        mailbox_lease: Seconds this Notifier's hold on the messages it posted lasts without
            renewal (renewed every third); if it stops, a
            [`MailboxDispatcher`][flnotify.mailbox.MailboxDispatcher] adopts them after that.
        settings: How sends are made ([`Settings`][flnotify.Settings]); the defaults if
            ``None``.
        **options: Single fields of [`Settings`][flnotify.Settings] (``retry``,
            ``signer``, ``policy``, ``deadline``, ``failure_policy``, ``hooks``, ...),
            applied over ``settings``.
    """

    def __init__(
        self,
        transport: AsyncTransport | Transport | None = None,
        *,
        repository: TrainingRepository | AsyncTrainingRepository | None = None,
        mailbox: MailboxStore | None = None,
        mailbox_lease: float = DEFAULT_MAILBOX_LEASE,
        settings: Settings | None = None,
        **options: Unpack[SettingsOptions],
    ) -> None:
        route = mailbox_route(mailbox, mailbox_lease)
        settings = with_options(settings, options, "Notifier")
        if transport is not None:
            settings = attrs.evolve(settings, transport=transport)
        self.mailbox = mailbox
        self.engine = Engine(settings, repository=repository, routes=(route,))
        # sends started by submit() and not yet ended, on the private loop thread and as
        # tasks of a caller's loop: closing waits for them
        self._running: set[concurrent.futures.Future[DeliveryReport]] = set()
        self._tasks: set[asyncio.Task[DeliveryReport]] = set()

    @property
    def settings(self) -> Settings:
        """How this Notifier sends."""
        return self.engine.settings

    @property
    def transport(self) -> AsyncTransport | Transport:
        """The transport its POSTs go through."""
        return self.engine.transport

    @property
    def repository(self) -> TrainingRepository | AsyncTrainingRepository | None:
        """Where the default callbacks find trainings."""
        return self.engine.repository

    def __repr__(self) -> str:
        return f"Notifier(transport={type(self.transport).__name__})"

    # -- sending -------------------------------------------------------------------------

    async def asend(
        self,
        notification: Notification[Any],
        callbacks: Callbacks | None = None,
        *,
        message_ids: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> DeliveryReport:
        """Deliver ``notification`` to all its receivers and report each outcome.

        Args:
            notification: What to send, and to whom.
            callbacks: Called once per receiver; defaults to the notification class's
                default callbacks (built with ``repository``), if any.
            message_ids: One ``webhook-id`` per receiver (e.g. kept in an outbox so a
                resend carries the same ids); new random ids by default.
            deadline: Seconds this send may take; the settings' ``deadline`` if ``None``.

        Raises:
            ConfigurationError: ``message_ids`` does not match the receivers.
            PayloadTooLargeError: The encoded body exceeds the endpoint policy's limit.
        """
        engine = self.engine
        plan = engine.plan(notification, callbacks, message_ids=message_ids, deadline=deadline)
        return (await engine.run(plan)).report

    def send(
        self,
        notification: Notification[Any],
        callbacks: Callbacks | None = None,
        *,
        message_ids: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> DeliveryReport:
        """Blocking [`asend`][flnotify.Notifier.asend]; safe inside a running event loop too."""
        return self.engine.run_sync(
            self.asend(notification, callbacks, message_ids=message_ids, deadline=deadline)
        )

    def submit(
        self,
        notification: Notification[Any],
        callbacks: Callbacks | None = None,
        *,
        message_ids: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> SendHandle:
        """Start delivering ``notification`` and return at once with a handle.

        The handle has the ``message_ids`` now and the report later (``await handle`` or
        ``handle.result(timeout)``), like an enqueue that returns a message id: a web
        route starts a send and answers without waiting for the clients. In async code
        the send runs on the running event loop (as ``asend`` would); in sync code, on
        this Notifier's private loop thread. ``close()`` and ``aclose()`` wait for sends
        still running. In-process sends keep no record: a process that dies during one loses
        its callbacks (the outbox keeps them).

        Args: as for [`asend`][flnotify.Notifier.asend].

        Raises:
            ConfigurationError: ``message_ids`` does not match the receivers.
            PayloadTooLargeError: The encoded body exceeds the endpoint policy's limit.
        """
        engine = self.engine
        plan = engine.plan(notification, callbacks, message_ids=message_ids, deadline=deadline)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            portal = engine.portal()
            future = portal.submit(self._report(plan))
            thread = portal.thread
            self._running.add(future)
            future.add_done_callback(self._running.discard)
        else:
            future = concurrent.futures.Future()
            future.set_running_or_notify_cancel()  # nobody cancels it: the send goes on
            task = loop.create_task(self._report(plan))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda done: _settle(future, done))
            thread = threading.current_thread()
        return SendHandle(notification, tuple(plan.message_ids), plan.send_id, future, thread)

    async def _report(self, plan: Plan) -> DeliveryReport:
        return (await self.engine.run(plan)).report

    # -- life cycle ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Wait for submitted sends, then release the transport's connections and threads."""
        loop = asyncio.get_running_loop()
        mine = [task for task in self._tasks if task.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)
        if self._running:
            await asyncio.gather(
                *(asyncio.wrap_future(f) for f in list(self._running)), return_exceptions=True
            )
        await self.engine.aclose()

    def close(self) -> None:
        """Wait for submitted sends, then release connections and the private loop thread."""
        concurrent.futures.wait(list(self._running))
        self.engine.close()


def _settle(
    future: concurrent.futures.Future[DeliveryReport], task: asyncio.Task[DeliveryReport]
) -> None:
    """Hand a task's result (or error) to the future of its handle."""
    if task.cancelled():
        future.set_exception(asyncio.CancelledError())
    elif (error := task.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(task.result())
