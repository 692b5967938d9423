"""The generic notification types: ``Notification[Body]`` and ``TrainingNotification[Body]``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Generic
from uuid import UUID

import attrs
from typing_extensions import Self, TypeVar

from ._types import NotificationKind, ReceiverLike, as_receivers

__all__ = ["Body", "Notification", "TrainingNotification"]

Body = TypeVar("Body", covariant=True, default=Any)


def _receivers(value: Iterable[ReceiverLike]) -> tuple[ReceiverLike, ...]:
    return as_receivers(value)


@attrs.frozen
class Notification(Generic[Body]):
    """A message for a set of receivers; its type is a property of the class.

    Subclasses set ``notification_type`` and pick a body type; the codec writes
    ``{"notification_type": ..., "body": ..., <other fields>}`` and never the receivers,
    which say where the message goes, not what it says.

    Args:
        receivers: Where the notification goes: anything with ``id`` and
            ``message_endpoint`` (a host app's user model is fine).
        body: The payload, an attrs instance of the class's body type.
    """

    notification_type: ClassVar[NotificationKind]

    receivers: tuple[ReceiverLike, ...] = attrs.field(converter=_receivers)
    body: Body

    @property
    def description(self) -> str:
        """The human description of this notification's type."""
        return self.notification_type.description

    def with_receivers(self, receivers: Iterable[ReceiverLike]) -> Self:
        """The same notification for other receivers (the per-client variant)."""
        return attrs.evolve(self, receivers=receivers)


@attrs.frozen
class TrainingNotification(Notification[Body]):
    """A notification about one training; ``training_uuid`` travels on the wire.

    Args:
        receivers: Where the notification goes.
        body: The payload.
        training_uuid: The training the notification is about.
    """

    training_uuid: UUID
