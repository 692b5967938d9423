"""What a mailbox store holds and offers: the values and the store Protocol.

A mailbox keeps the notifications of polling receivers (``message_endpoint`` is
``"mailbox:"``) until their clients fetch and acknowledge them. One row per (message,
client) goes::

    queued --fetch--> offered --ack--> answered --judged: final--> done
      ^                 |                 |
      |                 +-- not acked within ``visibility``: offered again (same id)
      +------- judged: retry (the ack's status is retryable) ---+
    queued/offered --``ack_deadline`` passed--> answered (no status: failed)

The judge of a row is the process that posted it (a [`Notifier`][flnotify.Notifier] send
waiting for its outcomes) under a renewable lease, or, once that lease has ended (the
process stopped), whichever [`MailboxDispatcher`][flnotify.mailbox.MailboxDispatcher]
adopts it. Judging is the delivery core's: an acknowledgement's status is judged exactly
like an HTTP answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import attrs

from .._codec import Codec
from .._report import Delivery

__all__ = [
    "Adopted",
    "Answer",
    "Letter",
    "MailboxNonces",
    "MailboxOperations",
    "MailboxQueue",
    "MailboxSignals",
    "MailboxStore",
]


@attrs.frozen
class Letter:
    """One message handed to its client by a fetch.

    Args:
        message_id: Its ``webhook-id``, the same on every offer.
        client_id: Whose mailbox it is in.
        body: The notification's bytes, exactly as a push would POST them.
        fetches: How often it has been offered, this offer included.
    """

    message_id: str
    client_id: UUID
    body: bytes = attrs.field(repr=False)
    fetches: int


@attrs.frozen
class Answer:
    """A message whose client answered it (or whose deadline passed), waiting for its judge.

    Args:
        message_id: Its ``webhook-id``.
        client_id: Its client.
        status: The status the client's handler answered, or ``None``: the acknowledgement
            deadline passed first.
        fetches: How often it was offered.
        send_id: The send it belongs to.
    """

    message_id: str
    client_id: UUID
    status: int | None
    fetches: int
    send_id: str


@attrs.frozen
class Adopted:
    """A message taken over from a judge whose lease ended, with what judging it needs.

    Args:
        message_id: Its ``webhook-id``.
        client_id: Its client.
        send_id: The send it belongs to.
        send_size: How many receivers that send had in all (pushed ones included).
        payload: The notification's bytes.
        posted_at: When it was posted (store clock, epoch seconds).
    """

    message_id: str
    client_id: UUID
    send_id: str
    send_size: int
    payload: bytes = attrs.field(repr=False)
    posted_at: float


class MailboxSignals:
    """In-process wake-ups: a fetch waiting for mail, a judge waiting for answers.

    A store calls [`mail`][flnotify.mailbox.MailboxSignals.mail] after it queued messages
    and [`answered`][flnotify.mailbox.MailboxSignals.answered] after it took
    acknowledgements; listeners (the mailbox app, a waiting send) subscribe. Listeners of
    another process learn the same by asking the store at their polling interval.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mail: list[Callable[[frozenset[UUID]], None]] = []
        self._answers: list[Callable[[], None]] = []

    def on_mail(self, listener: Callable[[frozenset[UUID]], None]) -> Callable[[], None]:
        """Call ``listener(client_ids)`` when mail is queued; returns the unsubscriber."""
        with self._lock:
            self._mail.append(listener)
        return lambda: self._drop(self._mail, listener)

    def on_answer(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` when acknowledgements arrive; returns the unsubscriber."""
        with self._lock:
            self._answers.append(listener)
        return lambda: self._drop(self._answers, listener)

    def _drop(self, listeners: list[Any], listener: object) -> None:
        with self._lock:
            if listener in listeners:
                listeners.remove(listener)

    def mail(self, clients: Iterable[UUID]) -> None:
        """Tell the listeners that these clients have new mail."""
        ids = frozenset(clients)
        with self._lock:
            listeners = list(self._mail)
        for listener in listeners:
            listener(ids)

    def answered(self) -> None:
        """Tell the listeners that acknowledgements arrived."""
        with self._lock:
            listeners = list(self._answers)
        for listener in listeners:
            listener()


@runtime_checkable
class MailboxQueue(Protocol):
    """The queue operations of a mailbox: what senders, the app and dispatchers need.

    See the module docstring. Every method is blocking (drivers call them from worker
    threads) and each is one transaction.
    """

    @property
    def codec(self) -> Codec:
        """Decodes stored notifications for a judge that adopts them."""
        ...

    @property
    def ack_deadline(self) -> float:
        """Seconds from posting after which an unacknowledged message is failed."""
        ...

    @property
    def visibility(self) -> float:
        """Seconds a fetched, unacknowledged message waits before it is offered again."""
        ...

    @property
    def signals(self) -> MailboxSignals:
        """The wake-ups, in this process, of waiting fetches and judges."""
        ...

    def now(self) -> float:
        """The store clock (epoch seconds) that deadlines and leases are measured by."""
        ...

    def post(
        self,
        send_id: str,
        send_size: int,
        body: bytes,
        letters: Sequence[tuple[UUID, str]],
        *,
        owner: str,
        lease_seconds: float,
    ) -> None:
        """Queue ``body`` for each (client id, message id), judged by ``owner``; committed.

        The same message id posted again (an outbox retry, a task run again) is the same
        message: if the mailbox holds it for the same client, in any state, it is offered
        again as a letter of this post (this send and body, judged by ``owner`` under a
        fresh lease and acknowledgement deadline, its fetch count and any outcome
        cleared), so it gets one outcome per post, never two rows. A judge that held it
        before no longer does: its ``settle`` of it records nothing.

        Raises:
            MailboxError: A message id is held for another client, or is twice in
                ``letters``; nothing is written.
        """
        ...

    def fetch(self, client_id: UUID, limit: int) -> list[Letter]:
        """Offer up to ``limit`` of the client's messages (oldest first), counting a fetch."""
        ...

    def fetch_many(self, limits: Mapping[UUID, int]) -> dict[UUID, list[Letter]]:
        """`fetch` for each client up to its limit, in one transaction (the wake-up path).

        What ``fetch(client, limit)`` of each would offer; the letters of the clients that
        got any.
        """
        ...

    def fetchable(self, client_ids: Iterable[UUID]) -> set[UUID]:
        """Which of these clients have a message that a fetch would offer now."""
        ...

    def ack(self, client_id: UUID, acks: Sequence[tuple[str, int]]) -> int:
        """Take the client's (message id, status) answers of offered messages; how many."""
        ...

    def ack_many(self, acks: Sequence[tuple[UUID, Sequence[tuple[str, int]]]]) -> list[int]:
        """`ack` of each (client id, answers) in one transaction; how many counted, each."""
        ...

    def answers(self, owner: str) -> list[Answer]:
        """The owner's answered messages; overdue unanswered ones are answered ``None`` first."""
        ...

    def requeue(self, owner: str, retries: Sequence[tuple[str, float]]) -> int:
        """Queue answered messages again, each after its delay (seconds); how many."""
        ...

    def settle(self, owner: str, deliveries: Iterable[Delivery]) -> list[Delivery]:
        """Record final outcomes of the owner's answered messages, done; the ones recorded."""
        ...

    def renew(self, owner: str, lease_seconds: float) -> int:
        """Extend the owner's lease on its unsettled messages; how many it holds."""
        ...

    def release(self, owner: str) -> int:
        """End the owner's lease now, so that a dispatcher adopts its messages at once."""
        ...

    def adopt(self, owner: str, lease_seconds: float, limit: int) -> list[Adopted]:
        """Take over up to ``limit`` unsettled messages whose judge's lease ended."""
        ...

    def close(self) -> None:
        """Release the connection; idempotent."""
        ...


@runtime_checkable
class MailboxNonces(Protocol):
    """The replay protection of the mailbox app: request nonces, kept by the store clock."""

    def remember(self, nonce: str, until: float) -> bool:
        """Record a request nonce until ``until``; ``False`` if it was seen already."""
        ...

    def remember_many(self, nonces: Sequence[tuple[str, float]]) -> list[bool]:
        """`remember` of each (nonce, until) in one transaction, in order.

        A nonce twice in ``nonces`` is fresh (``True``) the first time only.
        """
        ...


@runtime_checkable
class MailboxOperations(Protocol):
    """The operator commands of a mailbox (``flnotify mailbox ...``): look and prune."""

    def counts(self) -> dict[str, int]:
        """How many messages are in each state (queued, offered, answered, done)."""
        ...

    def prune(self, before: float) -> int:
        """Delete done messages settled before ``before``; how many."""
        ...


@runtime_checkable
class MailboxStore(MailboxQueue, MailboxNonces, MailboxOperations, Protocol):
    """A whole mailbox store: its queue, its nonces and its operator commands.

    [`MailboxQueue`][flnotify.mailbox.MailboxQueue],
    [`MailboxNonces`][flnotify.mailbox.MailboxNonces] and
    [`MailboxOperations`][flnotify.mailbox.MailboxOperations] in one.

    Implemented by [`Mailbox`][flnotify.mailbox.Mailbox] (SQLite) and
    [`PostgresMailbox`][flnotify.mailbox.PostgresMailbox]; every implementation must pass
    [`MailboxStoreContract`][flnotify.testing.MailboxStoreContract].
    """
