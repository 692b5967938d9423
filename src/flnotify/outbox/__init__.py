"""A durable outbox: store every delivery first, send it later, lose none in a crash.

[`Outbox.put`][flnotify.outbox.Outbox.put] commits one row per receiver (receiver,
endpoint, ``webhook-id``) before anything is sent. An
[`OutboxDispatcher`][flnotify.outbox.OutboxDispatcher] claims open rows under a lease,
sends them with a [`Notifier`][flnotify.Notifier] (each row keeps its ``webhook-id`` on
every redelivery), records each outcome once, then runs the callbacks. A row goes::

    pending --claim--> claimed --outcome recorded--> claimed + outcome --callbacks--> done
                         |                             |
                         +-- lease expired: claimable again (an outcome already recorded
                             is kept: only its callbacks run again, nothing is resent)

Delivery is at least once: a dispatcher that dies after a POST but before recording its
outcome leaves a claim whose lease expires, and the next claim sends the same message id
again. Outcomes are recorded exactly once (only the live claim may write them), and the
callbacks of a recorded outcome run at least once.

Two stores keep these semantics, and both pass one contract suite
([`OutboxStoreContract`][flnotify.testing.OutboxStoreContract]):
[`Outbox`][flnotify.outbox.Outbox], an SQLite file for the processes of one machine, and
[`PostgresOutbox`][flnotify.outbox.PostgresOutbox], for server replicas and dispatchers on
several hosts.
"""

from __future__ import annotations

from typing import Any

from ._dispatcher import OutboxDispatcher
from ._existing import require_outbox
from ._model import (
    Claim,
    OutboxEntry,
    OutboxOperations,
    OutboxQueue,
    OutboxState,
    OutboxStore,
)
from ._postgres import PostgresOutbox
from ._sqlite import Outbox

__all__ = [
    "Claim",
    "Outbox",
    "OutboxDispatcher",
    "OutboxEntry",
    "OutboxOperations",
    "OutboxQueue",
    "OutboxState",
    "OutboxStore",
    "PostgresOutbox",
    "open_outbox",
]


def open_outbox(target: str, *, create: bool = True, **options: Any) -> Outbox | PostgresOutbox:
    """The outbox at ``target``: a PostgreSQL URL, or else an SQLite file path.

    Args:
        target: ``postgresql://...`` / ``postgres://...`` for a
            [`PostgresOutbox`][flnotify.outbox.PostgresOutbox], anything else is a path.
        create: Create the outbox if it is not there yet; with ``False`` (to look at an
            outbox that must exist) a target without one is refused and left as it is.
        **options: Passed on to the store (``codec=``, ``clock=``, ...).

    Raises:
        NoOutboxError: ``create`` is ``False`` and ``target`` holds no outbox.
    """
    postgres = target.startswith(("postgresql://", "postgres://"))
    if not create:
        require_outbox(target, postgres=postgres)
    if postgres:
        return PostgresOutbox(target, **options)
    return Outbox(target, **options)
