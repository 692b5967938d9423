"""The six training notifications, their bodies, and ``from_training`` factories.

Every class can be built two ways, both one call:

* ``TrainingRoundStartNotification.from_training(snapshot)`` — receivers per the wire rules;
* ``TrainingRoundStartNotification(receivers=[client], body=..., training_uuid=...)`` — an
  explicit receiver list, e.g. one client with a local model of its own (daisy-chaining).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar
from uuid import UUID

import attrs
from typing_extensions import Self

from ._notification import TrainingNotification
from ._types import NotificationType, ReceiverLike, TrainingSnapshot

__all__ = [
    "ClientRemovedBody",
    "ClientRemovedNotification",
    "GlobalModelBody",
    "RoundBody",
    "TrainingFinishedNotification",
    "TrainingModelTestNotification",
    "TrainingRoundStartNotification",
    "TrainingSWAGRoundStartNotification",
    "TrainingStartNotification",
]


@attrs.frozen
class GlobalModelBody:
    """Body naming the global model: TRAINING_START and TRAINING_FINISHED."""

    global_model_uuid: UUID


@attrs.frozen
class RoundBody:
    """Body of the round-type notifications: the round number and the model to train."""

    round: int = attrs.field(validator=attrs.validators.ge(0))
    global_model_uuid: UUID


@attrs.frozen
class ClientRemovedBody:
    """Body of CLIENT_REMOVED: which client left the training, and why."""

    client_uuid: UUID
    reason: str = ""


@attrs.frozen
class _RoundNotification(TrainingNotification[RoundBody]):
    """Shared shape of the three round-type notifications (participants, round, model)."""

    Body: ClassVar[type[RoundBody]] = RoundBody

    @classmethod
    def from_training(
        cls,
        snapshot: TrainingSnapshot,
        *,
        receivers: Iterable[ReceiverLike] | None = None,
        global_model_uuid: UUID | None = None,
    ) -> Self:
        """Build for the training's participants at its current round and model.

        Args:
            snapshot: The training.
            receivers: Override the receivers (e.g. one client only).
            global_model_uuid: Override the model (e.g. a client's local model).
        """
        return cls(
            receivers=snapshot.participants if receivers is None else receivers,
            body=RoundBody(
                round=snapshot.round,
                global_model_uuid=global_model_uuid or snapshot.model_id,
            ),
            training_uuid=snapshot.id,
        )


@attrs.frozen
class TrainingRoundStartNotification(_RoundNotification):
    """UPDATE_ROUND_START: participants train ``body.round`` from ``body.global_model_uuid``."""

    notification_type = NotificationType.UPDATE_ROUND_START


@attrs.frozen
class TrainingSWAGRoundStartNotification(_RoundNotification):
    """SWAG_ROUND_START: participants run a SWAG round on the given model."""

    notification_type = NotificationType.SWAG_ROUND_START


@attrs.frozen
class TrainingModelTestNotification(_RoundNotification):
    """MODEL_TEST_ROUND: participants test the given model."""

    notification_type = NotificationType.MODEL_TEST_ROUND


@attrs.frozen
class TrainingStartNotification(TrainingNotification[GlobalModelBody]):
    """TRAINING_START: participants prepare for training on the global model."""

    notification_type = NotificationType.TRAINING_START
    Body: ClassVar[type[GlobalModelBody]] = GlobalModelBody

    @classmethod
    def from_training(
        cls, snapshot: TrainingSnapshot, *, receivers: Iterable[ReceiverLike] | None = None
    ) -> Self:
        """Build for the training's participants."""
        return cls(
            receivers=snapshot.participants if receivers is None else receivers,
            body=GlobalModelBody(global_model_uuid=snapshot.model_id),
            training_uuid=snapshot.id,
        )


@attrs.frozen
class TrainingFinishedNotification(TrainingNotification[GlobalModelBody]):
    """TRAINING_FINISHED: sent to participants and to the actor if not already one."""

    notification_type = NotificationType.TRAINING_FINISHED
    Body: ClassVar[type[GlobalModelBody]] = GlobalModelBody

    @classmethod
    def from_training(
        cls, snapshot: TrainingSnapshot, *, receivers: Iterable[ReceiverLike] | None = None
    ) -> Self:
        """Build for the participants plus the actor (unless the actor already takes part)."""
        if receivers is None:
            receivers = _with(snapshot.participants, snapshot.actor)
        return cls(
            receivers=receivers,
            body=GlobalModelBody(global_model_uuid=snapshot.model_id),
            training_uuid=snapshot.id,
        )


@attrs.frozen
class ClientRemovedNotification(TrainingNotification[ClientRemovedBody]):
    """CLIENT_REMOVED: tells a client (and the actor) it was removed from the training."""

    notification_type = NotificationType.CLIENT_REMOVED
    Body: ClassVar[type[ClientRemovedBody]] = ClientRemovedBody

    @classmethod
    def from_training(
        cls,
        snapshot: TrainingSnapshot,
        *,
        client: ReceiverLike,
        reason: str = "",
        receivers: Iterable[ReceiverLike] | None = None,
    ) -> Self:
        """Build for the removed ``client`` and the training's actor.

        Args:
            snapshot: The training the client was removed from.
            client: The removed client (need no longer be a participant).
            reason: Why, in words the client may show to its operator.
            receivers: Override the receivers.
        """
        if receivers is None:
            receivers = _with((client,), snapshot.actor)
        return cls(
            receivers=receivers,
            body=ClientRemovedBody(client_uuid=client.id, reason=reason),
            training_uuid=snapshot.id,
        )


def _with(receivers: tuple[ReceiverLike, ...], extra: ReceiverLike) -> tuple[ReceiverLike, ...]:
    """``receivers`` plus ``extra`` unless a receiver with its id is already there."""
    if any(r.id == extra.id for r in receivers):
        return receivers
    return (*receivers, extra)
