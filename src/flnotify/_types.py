"""Value types shared by every part of flnotify: notification types, receivers, trainings."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Protocol, runtime_checkable
from uuid import UUID

import attrs

__all__ = [
    "NotificationKind",
    "NotificationType",
    "Receiver",
    "ReceiverLike",
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
    if isinstance(receivers, (str, bytes, ReceiverLike)):
        msg = "receivers must be an iterable of receivers, not a single one"
        raise TypeError(msg)
    frozen = tuple(receivers)
    for index, receiver in enumerate(frozen):
        if not isinstance(receiver, ReceiverLike):
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
