"""Static checks of the public types; mypy checks this file, nothing ever runs it.

Each ``assert_type`` fails type checking if flnotify's annotations stop giving users the
types they rely on; each ``# type: ignore[...]`` fails (strict mode warns on unused ignores)
if a mistake stops being reported.
"""

from __future__ import annotations

import enum
from typing import Any
from uuid import UUID

import attrs
from typing_extensions import assert_type

import flnotify
import flnotify.codec
from flnotify import (
    ClientRemovedNotification,
    GlobalModelBody,
    Notification,
    NotificationKind,
    ReceiverLike,
    RoundBody,
    TrainingFinishedNotification,
    TrainingModelTestNotification,
    TrainingNotification,
    TrainingRoundStartNotification,
    TrainingSnapshot,
    TrainingStartNotification,
    TrainingSWAGRoundStartNotification,
)


class MyKind(enum.Enum):
    EVAL = "MODEL_EVAL"

    @property
    def description(self) -> str:
        return "Evaluate model"


@attrs.frozen
class MyBody:
    score: float


@attrs.frozen
class MyNotification(TrainingNotification[MyBody]):
    notification_type = MyKind.EVAL


class User:
    def __init__(self, id: UUID, message_endpoint: str) -> None:
        self.id = id
        self.message_endpoint = message_endpoint


def round_types(
    update: TrainingRoundStartNotification,
    swag: TrainingSWAGRoundStartNotification,
    test: TrainingModelTestNotification,
) -> None:
    assert_type(update.body, RoundBody)
    assert_type(update.body.round, int)
    assert_type(swag.body.round, int)
    assert_type(test.body.round, int)
    assert_type(update.body.global_model_uuid, UUID)
    assert_type(swag.body.global_model_uuid, UUID)
    assert_type(test.body.global_model_uuid, UUID)
    assert_type(update.training_uuid, UUID)
    assert_type(update.receivers, tuple[ReceiverLike, ...])
    assert_type(update.description, str)
    assert_type(update.with_receivers([]), TrainingRoundStartNotification)
    assert_type(TrainingRoundStartNotification.Body, type[RoundBody])


def model_types(start: TrainingStartNotification, done: TrainingFinishedNotification) -> None:
    assert_type(start.body, GlobalModelBody)
    assert_type(start.body.global_model_uuid, UUID)
    assert_type(done.body.global_model_uuid, UUID)
    assert_type(start.training_uuid, UUID)
    _ = start.body.round  # type: ignore[attr-defined]


def factories(s: TrainingSnapshot, user: User) -> None:
    assert_type(TrainingStartNotification.from_training(s), TrainingStartNotification)
    assert_type(TrainingFinishedNotification.from_training(s), TrainingFinishedNotification)
    assert_type(
        TrainingRoundStartNotification.from_training(s, receivers=[user]),
        TrainingRoundStartNotification,
    )
    assert_type(
        TrainingSWAGRoundStartNotification.from_training(s), TrainingSWAGRoundStartNotification
    )
    assert_type(TrainingModelTestNotification.from_training(s), TrainingModelTestNotification)
    assert_type(ClientRemovedNotification.from_training(s, client=user), ClientRemovedNotification)
    assert_type(ClientRemovedNotification.from_training(s, client=user).body.reason, str)


def explicit_construction(user: User, model: UUID, training: UUID) -> None:
    # a plain class with ``id`` and ``message_endpoint`` is a ReceiverLike
    n = TrainingRoundStartNotification(
        receivers=[user], body=RoundBody(round=1, global_model_uuid=model), training_uuid=training
    )
    assert_type(n, TrainingRoundStartNotification)
    # the body type is checked at construction
    TrainingRoundStartNotification(
        receivers=[user],
        body=GlobalModelBody(global_model_uuid=model),  # type: ignore[arg-type]
        training_uuid=training,
    )
    RoundBody(round="1", global_model_uuid=model)  # type: ignore[arg-type]


def codec(data: bytes) -> None:
    assert_type(flnotify.codec.decode(data), Notification[Any])
    assert_type(flnotify.codec.decode(data.decode()), Notification[Any])
    assert_type(flnotify.codec.decode({"notification_type": "TRAINING_START"}), Notification[Any])
    assert_type(flnotify.codec.encode(flnotify.codec.decode(data)), bytes)
    assert_type(flnotify.codec.Codec().decode(data), Notification[Any])
    assert_type(flnotify.codec.Codec().to_dict(flnotify.codec.decode(data)), dict[str, Any])
    n = flnotify.codec.decode(data)
    if isinstance(n, TrainingRoundStartNotification):
        assert_type(n.body.round, int)


def registry() -> None:
    reg = flnotify.codec.default_registry().copy()
    assert_type(reg.register(MyNotification), type[MyNotification])
    assert_type(reg.get("MODEL_EVAL"), type[Notification[Any]] | None)


def user_generic(n: MyNotification, generic: Notification[MyBody]) -> None:
    assert_type(n.body, MyBody)
    assert_type(n.body.score, float)
    assert_type(n.training_uuid, UUID)
    assert_type(generic.body, MyBody)
    assert_type(generic.body.score, float)
    assert_type(n.with_receivers(()), MyNotification)
    kind: NotificationKind = MyKind.EVAL
    assert_type(kind.description, str)
    assert_type(flnotify.NotificationType.TRAINING_START.description, str)
    # Body is covariant: a notification with a specific body is a Notification[Any]
    anything: Notification[Any] = n
    assert_type(anything.body, Any)
