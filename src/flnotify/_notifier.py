"""The Notifier: the in-process facade of the engine.

It encodes once, fans out concurrently, retries without blocking and reports everything,
by handing the [`Engine`][flnotify._engine.Engine] one plan per send. ``Notifier.send`` runs
the engine on a private event loop thread, so it works from plain sync code and from inside
a running event loop alike. In-process push keeps no record of outcomes: a process that
dies during a send loses the callbacks still to run; the outbox keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
from typing_extensions import Unpack

from ._closing import AsyncClosing, Closing
from ._engine import Engine, Settings, SettingsOptions, with_options
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

    # -- life cycle ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Release the transport's connections for the running loop, and worker threads."""
        await self.engine.aclose()

    def close(self) -> None:
        """Release connections, the private event loop thread and worker threads."""
        self.engine.close()
