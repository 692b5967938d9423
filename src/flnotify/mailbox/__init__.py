"""Clients behind NAT: a durable mailbox they poll, with everything a push carries.

A receiver whose ``message_endpoint`` is ``"mailbox:"``
([`MAILBOX_ENDPOINT`][flnotify.mailbox.MAILBOX_ENDPOINT]) is not POSTed to. A
[`Notifier`][flnotify.Notifier] with ``mailbox=`` posts its notification to a store
([`Mailbox`][flnotify.mailbox.Mailbox] on SQLite, or
[`PostgresMailbox`][flnotify.mailbox.PostgresMailbox]) and waits for the client's
acknowledgement as it waits for a POST's answer. The client fetches from a
[`MailboxApp`][flnotify.mailbox.MailboxApp] mounted next to the server's API, with a
[`MailboxPoller`][flnotify.receiving.MailboxPoller] that feeds its usual
[`NotificationRouter`][flnotify.receiving.NotificationRouter], and acknowledges each
message with the status the router answered. That status is judged like an HTTP answer;
no acknowledgement within the store's ``ack_deadline`` fails the receiver. One send may
mix pushed and polling receivers. Messages of a sender that stopped are adopted by a
[`MailboxDispatcher`][flnotify.mailbox.MailboxDispatcher].
"""

from __future__ import annotations

from typing import Any

from ._app import MailboxApp
from ._dispatcher import MailboxDispatcher
from ._postgres import PostgresMailbox
from ._sqlite import Mailbox
from ._store import (
    Adopted,
    Answer,
    Letter,
    MailboxNonces,
    MailboxOperations,
    MailboxQueue,
    MailboxSignals,
    MailboxStore,
)
from ._wire import MAILBOX_ENDPOINT

__all__ = [
    "MAILBOX_ENDPOINT",
    "Adopted",
    "Answer",
    "Letter",
    "Mailbox",
    "MailboxApp",
    "MailboxDispatcher",
    "MailboxNonces",
    "MailboxOperations",
    "MailboxQueue",
    "MailboxSignals",
    "MailboxStore",
    "PostgresMailbox",
    "open_mailbox",
]


def open_mailbox(target: str, **options: Any) -> Mailbox | PostgresMailbox:
    """The mailbox at ``target``: a PostgreSQL URL, or else an SQLite file path.

    Args:
        target: ``postgresql://...`` / ``postgres://...`` for a
            [`PostgresMailbox`][flnotify.mailbox.PostgresMailbox], anything else is a path
            for a [`Mailbox`][flnotify.mailbox.Mailbox].
        **options: Passed on to the store (``codec=``, ``ack_deadline=``, ...).
    """
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresMailbox(target, **options)
    return Mailbox(target, **options)
