"""What both mailbox stores share: the error, the states and the checks of their input."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from uuid import UUID

from .._exceptions import ConfigurationError, MailboxError
from .._lease import LeaseTable
from .._report import Delivery

__all__ = [
    "LEASES",
    "REPOST",
    "STATES",
    "MailboxError",
    "check_lease",
    "check_limit",
    "check_post",
    "check_reposted",
    "fetchable_sql",
    "first_nonces",
    "first_per_id",
    "fresh_flags",
    "taken_counts",
    "unique_answers",
]

STATES = ("queued", "offered", "answered", "done")
"""A message's states, in the order it goes through them."""


_ADOPTION = {"take_order": "lease_until, seq", "take_index": "flnotify_mailbox_lease"}
LEASES = LeaseTable("flnotify_mailbox", "owner", "flnotify_mailbox_sends", "send_id", **_ADOPTION)
"""The mailbox as a lease queue: an owner (a judge) holds messages; a dispatcher adopts
them once the lease ended."""


REPOST = """
ON CONFLICT (message_id) DO UPDATE SET
    send_id = excluded.send_id, state = 'queued', available_at = excluded.available_at,
    offered_until = NULL, deadline_at = excluded.deadline_at, fetches = 0, status = NULL,
    owner = excluded.owner, lease_until = excluded.lease_until, outcome = NULL,
    attempts = NULL, status_code = NULL, error = NULL, error_kind = NULL, elapsed = NULL,
    settled_at = NULL
WHERE flnotify_mailbox.client_id = excluded.client_id
"""
"""The tail of both stores' post: a message id posted again to its client is offered
again, as a fresh letter of the new post (its send, judge, deadline; no outcome yet)."""


def check_reposted(written: int, rows: Sequence[tuple[str, str]]) -> None:
    """Refuse a post that wrote fewer rows than it has letters: an id of another client.

    Raises:
        MailboxError: A message id is taken by another client (nothing is written).
    """
    if written != len(rows):
        msg = (
            f"{len(rows) - written} of {len(rows)} message id(s) are taken by another"
            " client's message; nothing was posted"
        )
        raise MailboxError(msg)


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


def unique_answers(
    acks: Sequence[tuple[UUID, Sequence[tuple[str, int]]]],
) -> tuple[dict[tuple[UUID, str], int], list[tuple[UUID, str, int]]]:
    """An acknowledgement batch as one set of rows, and whose request each row is.

    The first answer of each (client, message id) counts; the mapping gives the index in
    ``acks`` of the request it came from.
    """
    whose: dict[tuple[UUID, str], int] = {}
    rows = []
    for i, (client, answers) in enumerate(acks):
        for message_id, status in answers:
            if (client, message_id) not in whose:
                whose[client, message_id] = i
                rows.append((client, message_id, status))
    return whose, rows


def taken_counts(
    size: int, whose: Mapping[tuple[UUID, str], int], taken: Iterable[tuple[UUID, str]]
) -> list[int]:
    """How many answers of each of ``size`` requests were taken (see `unique_answers`)."""
    counts = [0] * size
    for key in taken:
        counts[whose[key]] += 1
    return counts


def first_nonces(nonces: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Each nonce of a batch once, with the ``until`` of its first occurrence."""
    return dict(reversed(nonces))


def fresh_flags(nonces: Sequence[tuple[str, float]], fresh: Iterable[str]) -> list[bool]:
    """Per nonce of a batch: whether it is new (stored now, and its first occurrence)."""
    new = set(fresh)
    seen: set[str] = set()
    found = []
    for nonce, _ in nonces:
        found.append(nonce in new and nonce not in seen)
        seen.add(nonce)
    return found


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
        MailboxError: A message id is in the post twice.
    """
    check_lease(lease_seconds)
    if type(send_size) is not int or send_size < len(letters):
        msg = f"send_size {send_size!r} is below the {len(letters)} messages posted"
        raise ConfigurationError(msg)
    rows = []
    seen: set[str] = set()
    for client, message_id in letters:
        if not isinstance(client, UUID):
            msg = f"client id {client!r} is not a UUID"
            raise ConfigurationError(msg)
        if not isinstance(message_id, str) or not message_id:
            msg = f"message id {message_id!r} is not a non-empty string"
            raise ConfigurationError(msg)
        if message_id in seen:
            msg = f"message id {message_id!r} is posted twice at once; nothing was posted"
            raise MailboxError(msg)
        seen.add(message_id)
        rows.append((str(client), message_id))
    return rows
