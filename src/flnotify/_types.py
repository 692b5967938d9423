"""Plain values shared by every part of flnotify: types, receivers, trainings, outcomes, answers.

Nothing here does I/O or imports another flnotify module, so every layer can use them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable
from uuid import UUID

import attrs

from ._validators import positive

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "HttpResponse",
    "NotificationKind",
    "NotificationType",
    "Outcome",
    "Receiver",
    "ReceiverLike",
    "Timeouts",
    "TrainingSnapshot",
    "TrainingState",
    "as_receivers",
]


class NotificationKind(Protocol):
    """What a notification type must offer: its wire string and a human description.

    [`NotificationType`][] is the built-in implementation; users who add their own
    notifications may define their own enum with the same two attributes.
    """

    @property
    def value(self) -> str:
        """The ``notification_type`` string on the wire."""
        ...

    @property
    def description(self) -> str:
        """A short human-readable description."""
        ...


class NotificationType(enum.Enum):
    """The six notifications of a training; ``.value`` is the wire string."""

    TRAINING_START = ("TRAINING_START", "Training start")
    UPDATE_ROUND_START = ("UPDATE_ROUND_START", "Start update round")
    SWAG_ROUND_START = ("SWAG_ROUND_START", "Start swag round")
    MODEL_TEST_ROUND = ("MODEL_TEST_ROUND", "Start model round")
    TRAINING_FINISHED = ("TRAINING_FINISHED", "Training finished")
    CLIENT_REMOVED = ("CLIENT_REMOVED", "Client removed")

    _value_: str
    description: str

    def __new__(cls, wire: str, description: str) -> NotificationType:
        member = object.__new__(cls)
        member._value_ = wire
        member.description = description
        return member

    def __str__(self) -> str:
        return self._value_


class TrainingState(enum.Enum):
    """Life cycle of a training as the repository stores it."""

    INITIAL = "INITIAL"
    ONGOING = "ONGOING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    SWAG_ROUND = "SWAG_ROUND"


@runtime_checkable
class ReceiverLike(Protocol):
    """Anything that can be notified: a host app's user model qualifies as it is."""

    @property
    def id(self) -> UUID:
        """The receiver's id."""
        ...

    @property
    def message_endpoint(self) -> str:
        """The absolute http(s) URL notifications are POSTed to."""
        ...


@attrs.frozen
class Receiver:
    """A client that receives notifications.

    Args:
        id: The client's id.
        message_endpoint: The absolute http(s) URL notifications are POSTed to.
    """

    id: UUID
    message_endpoint: str


def as_receivers(receivers: Iterable[ReceiverLike]) -> tuple[ReceiverLike, ...]:
    """Freeze an iterable of receivers into a tuple, checking each has ``id`` and endpoint.

    Raises:
        TypeError: An element lacks ``id`` or ``message_endpoint``, or a single receiver
            or a string was passed instead of an iterable of them.
    """
    # a list or tuple first: the runtime Protocol check costs tens of µs, on the path of
    # every notification a client parses
    if type(receivers) not in (list, tuple) and isinstance(receivers, (str, bytes, ReceiverLike)):
        msg = "receivers must be an iterable of receivers, not a single one"
        raise TypeError(msg)
    frozen = tuple(receivers)
    for index, receiver in enumerate(frozen):
        # a plain Receiver first: the runtime Protocol check costs ~40 µs per receiver,
        # on the path of every outbox claim and Celery task
        if type(receiver) is not Receiver and not isinstance(receiver, ReceiverLike):
            msg = (
                f"receivers[{index}] ({type(receiver).__name__}) has no "
                "'id' and 'message_endpoint' attributes"
            )
            raise TypeError(msg)
    return frozen


@attrs.frozen
class TrainingSnapshot:
    """A training as the repository saw it at one moment; what notifications are built from.

    Args:
        id: The training's id (``training_uuid`` on the wire).
        model_id: The current global model's id.
        round: The current round number (>= 0).
        participants: The clients taking part.
        actor: The user who started the training.
        state: The training's state.
    """

    id: UUID
    model_id: UUID
    round: int = attrs.field(validator=attrs.validators.ge(0))
    participants: tuple[ReceiverLike, ...] = attrs.field(converter=as_receivers)
    actor: ReceiverLike
    state: TrainingState = TrainingState.INITIAL

    def participant_ids(self) -> frozenset[UUID]:
        """The ids of the participants, for membership tests."""
        return frozenset(p.id for p in self.participants)


class Outcome(enum.Enum):
    """How a delivery to one receiver ended; prints as the plain word (``delivered``)."""

    DELIVERED = "delivered"
    """Any 2xx answer."""
    REJECTED = "rejected"
    """A non-2xx answer that is not retryable: the client said no."""
    FAILED = "failed"
    """No answer (refused, reset, timed out, invalid URL, ...), or a retryable status still
    failing when the retry budget ran out."""

    def __str__(self) -> str:
        return self.value


DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
"""Response bodies are read up to this many bytes; the rest is discarded unread."""


@attrs.frozen
class Timeouts:
    """Time limits of one attempt, in seconds.

    ``total`` bounds the whole attempt (connect, write and the whole response): a peer that
    drips one byte at a time cannot hold an attempt longer. Waiting for a free pooled
    connection is queueing behind other attempts (each bounded by ``total``), not part of an
    attempt; ``pool`` bounds it only if set.

    Args:
        connect: Establishing the TCP (and TLS) connection.
        read: Waiting for the next piece of the response.
        write: Sending the next piece of the request.
        total: The whole attempt, from connecting to the last byte of the response.
        pool: Waiting for a free connection from the pool (``None``: as long as it takes).
    """

    connect: float = attrs.field(default=5.0, validator=positive)
    read: float = attrs.field(default=10.0, validator=positive)
    write: float = attrs.field(default=10.0, validator=positive)
    total: float = attrs.field(default=15.0, validator=positive)
    pool: float | None = attrs.field(default=None, validator=attrs.validators.optional(positive))

    @classmethod
    def all(cls, seconds: float) -> Timeouts:
        """The same limit for every phase and for the whole attempt."""
        return cls(seconds, seconds, seconds, seconds, seconds)


@attrs.frozen
class HttpResponse:
    """What came back from one POST.

    Args:
        status_code: The HTTP status.
        headers: Response headers with lower-cased names (last value wins).
        body: The body, at most the transport's cap.
        truncated: Whether the body was longer than the cap.
    """

    status_code: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    truncated: bool = False
