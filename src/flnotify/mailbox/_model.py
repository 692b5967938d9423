"""What both mailbox stores share: the error, the states and the checks of their input."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from uuid import UUID

from .._exceptions import ConfigurationError, MailboxError
from .._lease import LeaseTable
from .._report import Delivery

__all__ = [
    "LEASES",
    "STATES",
    "MailboxError",
    "check_lease",
    "check_limit",
    "check_post",
    "fetchable_sql",
    "first_per_id",
]

STATES = ("queued", "offered", "answered", "done")
"""A message's states, in the order it goes through them."""


_ADOPTION = {"take_order": "lease_until, seq", "take_index": "flnotify_mailbox_lease"}
LEASES = LeaseTable("flnotify_mailbox", "owner", "flnotify_mailbox_sends", "send_id", **_ADOPTION)
"""The mailbox as a lease queue: an owner (a judge) holds messages; a dispatcher adopts
them once the lease ended."""


def fetchable_sql(now: str) -> str:
    """The condition of a row a fetch offers at ``now`` (a placeholder of the store)."""
    return (
        f"state IN ('queued', 'offered') AND deadline_at > {now} AND ("
        f"(state = 'queued' AND available_at <= {now})"
        f" OR (state = 'offered' AND offered_until <= {now}))"
    )


def check_lease(lease_seconds: float) -> None:
    """Refuse a lease of no time."""
    if not lease_seconds > 0:
        msg = f"lease_seconds must be > 0, not {lease_seconds!r}"
        raise ConfigurationError(msg)


def check_limit(limit: int) -> None:
    """Refuse a fetch or adoption of nothing (a negative SQL ``LIMIT`` is no limit)."""
    if type(limit) is not int or limit < 1:
        msg = f"limit must be an int >= 1, not {limit!r}"
        raise ConfigurationError(msg)


def first_per_id(deliveries: Iterable[Delivery]) -> list[Delivery]:
    """The deliveries with the first of each message id only: one outcome per message."""
    seen: set[str] = set()
    kept = []
    for delivery in deliveries:
        if delivery.message_id not in seen:
            seen.add(delivery.message_id)
            kept.append(delivery)
    return kept


def check_post(
    send_size: int, letters: Sequence[tuple[UUID, str]], lease_seconds: float
) -> list[tuple[str, str]]:
    """The (client id, message id) rows of a post, as text, checked.

    Raises:
        ConfigurationError: A client id is not a UUID, a message id not a non-empty
            string, the send smaller than its letters or the lease not positive.
    """
    check_lease(lease_seconds)
    if type(send_size) is not int or send_size < len(letters):
        msg = f"send_size {send_size!r} is below the {len(letters)} messages posted"
        raise ConfigurationError(msg)
    rows = []
    for client, message_id in letters:
        if not isinstance(client, UUID):
            msg = f"client id {client!r} is not a UUID"
            raise ConfigurationError(msg)
        if not isinstance(message_id, str) or not message_id:
            msg = f"message id {message_id!r} is not a non-empty string"
            raise ConfigurationError(msg)
        rows.append((str(client), message_id))
    return rows
