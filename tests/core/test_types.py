"""The value types and the two ways of building a training notification (DESIGN §1)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import attrs
import pytest

import flnotify
from flnotify import (
    ClientRemovedBody,
    ClientRemovedNotification,
    GlobalModelBody,
    Notification,
    NotificationType,
    Receiver,
    RoundBody,
    TrainingFinishedNotification,
    TrainingModelTestNotification,
    TrainingRoundStartNotification,
    TrainingSnapshot,
    TrainingStartNotification,
    TrainingState,
    TrainingSWAGRoundStartNotification,
)

TRAINING_ID = UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01")
MODEL_ID = UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")
LOCAL_MODEL_ID = UUID("d00dfeed-cafe-4bad-beef-0123456789ab")

ALICE = Receiver(UUID("a11ce000-0000-4000-8000-00000000000a"), "http://alice.example:8000/msg")
BOB = Receiver(UUID("b0b00000-0000-4000-8000-00000000000b"), "http://bob.example:8000/msg")
ACTOR = Receiver(UUID("ac70a000-0000-4000-8000-0000000000ac"), "http://actor.example/msg")


class User:
    """A host app's user model: no attrs, no base class, just the two attributes."""

    def __init__(self, id: UUID, message_endpoint: str) -> None:
        self.id = id
        self.message_endpoint = message_endpoint


class NoEndpoint:
    def __init__(self, id: UUID) -> None:
        self.id = id


def snapshot(
    participants: tuple[Any, ...] = (ALICE, BOB), actor: Any = ACTOR, round: int = 7
) -> TrainingSnapshot:
    return TrainingSnapshot(
        id=TRAINING_ID,
        model_id=MODEL_ID,
        round=round,
        participants=participants,
        actor=actor,
        state=TrainingState.ONGOING,
    )


RoundClass = (
    type[TrainingRoundStartNotification]
    | type[TrainingSWAGRoundStartNotification]
    | type[TrainingModelTestNotification]
)
ROUND_CLASSES: list[RoundClass] = [
    TrainingRoundStartNotification,
    TrainingSWAGRoundStartNotification,
    TrainingModelTestNotification,
]


# --- NotificationType ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "wire", "description"),
    [
        (NotificationType.TRAINING_START, "TRAINING_START", "Training start"),
        (NotificationType.UPDATE_ROUND_START, "UPDATE_ROUND_START", "Start update round"),
        (NotificationType.SWAG_ROUND_START, "SWAG_ROUND_START", "Start swag round"),
        (NotificationType.MODEL_TEST_ROUND, "MODEL_TEST_ROUND", "Start model round"),
        (NotificationType.TRAINING_FINISHED, "TRAINING_FINISHED", "Training finished"),
        (NotificationType.CLIENT_REMOVED, "CLIENT_REMOVED", "Client removed"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_notification_type_value_and_description(
    member: NotificationType, wire: str, description: str
) -> None:
    assert member.value == wire
    assert member.description == description
    assert str(member) == wire
    # lookup by wire string works at run time; mypy reads the two-argument __new__
    assert NotificationType(wire) is member  # type: ignore[call-arg]


def test_there_are_exactly_six_notification_types() -> None:
    assert len(NotificationType) == 6
    assert len({m.description for m in NotificationType}) == 6


@pytest.mark.parametrize(
    ("cls", "kind", "body_type"),
    [
        (TrainingStartNotification, NotificationType.TRAINING_START, GlobalModelBody),
        (TrainingRoundStartNotification, NotificationType.UPDATE_ROUND_START, RoundBody),
        (TrainingSWAGRoundStartNotification, NotificationType.SWAG_ROUND_START, RoundBody),
        (TrainingModelTestNotification, NotificationType.MODEL_TEST_ROUND, RoundBody),
        (TrainingFinishedNotification, NotificationType.TRAINING_FINISHED, GlobalModelBody),
        (ClientRemovedNotification, NotificationType.CLIENT_REMOVED, ClientRemovedBody),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_class_type_and_body(
    cls: type[Notification[Any]], kind: NotificationType, body_type: type[Any]
) -> None:
    assert cls.notification_type is kind
    assert getattr(cls, "Body") is body_type  # noqa: B009 - not every class declares Body
    assert issubclass(cls, flnotify.TrainingNotification)


def test_round_start_body_is_the_public_round_body() -> None:
    assert TrainingRoundStartNotification.Body is flnotify.RoundBody


@pytest.mark.parametrize("cls", ROUND_CLASSES, ids=lambda c: c.__name__)
def test_description_on_instances(cls: RoundClass) -> None:
    n = cls.from_training(snapshot())
    assert n.description == cls.notification_type.description
    assert n.description.startswith("Start ")


def test_description_of_each_instance_matches_design() -> None:
    s = snapshot()
    assert TrainingStartNotification.from_training(s).description == "Training start"
    assert TrainingFinishedNotification.from_training(s).description == "Training finished"
    removed = ClientRemovedNotification.from_training(s, client=ALICE)
    assert removed.description == "Client removed"


# --- Receivers ----------------------------------------------------------------------------


def test_receiver_is_frozen_and_hashable() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ALICE.message_endpoint = "http://evil.example/"  # type: ignore[misc]
    assert Receiver(ALICE.id, ALICE.message_endpoint) == ALICE
    assert len({ALICE, Receiver(ALICE.id, ALICE.message_endpoint), BOB}) == 2


def test_plain_user_class_is_a_receiver_for_constructors() -> None:
    user = User(ALICE.id, ALICE.message_endpoint)
    n = TrainingRoundStartNotification(
        receivers=[user],
        body=RoundBody(round=1, global_model_uuid=MODEL_ID),
        training_uuid=TRAINING_ID,
    )
    assert n.receivers == (user,)
    assert isinstance(n.receivers, tuple)


def test_plain_user_class_is_a_receiver_for_from_training() -> None:
    a, b, actor = (User(r.id, r.message_endpoint) for r in (ALICE, BOB, ACTOR))
    s = snapshot(participants=(a, b), actor=actor)
    assert TrainingStartNotification.from_training(s).receivers == (a, b)
    assert TrainingFinishedNotification.from_training(s).receivers == (a, b, actor)
    assert ClientRemovedNotification.from_training(s, client=a).receivers == (a, actor)


def test_receivers_accept_any_iterable() -> None:
    n = TrainingStartNotification(
        receivers=(r for r in (ALICE, BOB)),
        body=GlobalModelBody(MODEL_ID),
        training_uuid=TRAINING_ID,
    )
    assert n.receivers == (ALICE, BOB)


@pytest.mark.parametrize(
    "receivers",
    [ALICE, User(ALICE.id, ALICE.message_endpoint), "http://alice.example/", b"x"],
    ids=["Receiver", "user-object", "str", "bytes"],
)
def test_single_receiver_or_string_instead_of_a_list_is_rejected(receivers: Any) -> None:
    with pytest.raises(TypeError, match="iterable of receivers"):
        TrainingStartNotification(
            receivers=receivers, body=GlobalModelBody(MODEL_ID), training_uuid=TRAINING_ID
        )


def test_single_receiver_rejected_by_snapshot_and_with_receivers() -> None:
    single: Any = ALICE
    with pytest.raises(TypeError, match="iterable of receivers"):
        snapshot(participants=single)
    n = TrainingStartNotification.from_training(snapshot())
    with pytest.raises(TypeError, match="iterable of receivers"):
        n.with_receivers(single)


def test_receiver_without_message_endpoint_is_rejected() -> None:
    bad: Any = NoEndpoint(ALICE.id)
    with pytest.raises(TypeError, match=r"receivers\[1\] \(NoEndpoint\).*message_endpoint"):
        TrainingStartNotification(
            receivers=[BOB, bad], body=GlobalModelBody(MODEL_ID), training_uuid=TRAINING_ID
        )
    with pytest.raises(TypeError, match="message_endpoint"):
        snapshot(participants=(bad,))


# --- from_training receiver rules ---------------------------------------------------------


@pytest.mark.parametrize("cls", ROUND_CLASSES, ids=lambda c: c.__name__)
def test_round_types_go_to_participants(cls: RoundClass) -> None:
    n = cls.from_training(snapshot(round=7))
    assert n.receivers == (ALICE, BOB)
    assert n.body == RoundBody(round=7, global_model_uuid=MODEL_ID)
    assert n.training_uuid == TRAINING_ID
    assert type(n) is cls


def test_training_start_goes_to_participants() -> None:
    n = TrainingStartNotification.from_training(snapshot())
    assert n.receivers == (ALICE, BOB)
    assert n.body == GlobalModelBody(global_model_uuid=MODEL_ID)
    assert n.training_uuid == TRAINING_ID


def test_training_finished_adds_the_actor() -> None:
    n = TrainingFinishedNotification.from_training(snapshot())
    assert n.receivers == (ALICE, BOB, ACTOR)
    assert n.body == GlobalModelBody(global_model_uuid=MODEL_ID)


def test_training_finished_does_not_duplicate_an_actor_who_participates() -> None:
    # The actor is the same person as BOB, but a different object: identity is by id.
    actor = User(BOB.id, "http://other-endpoint.example/")
    n = TrainingFinishedNotification.from_training(snapshot(actor=actor))
    assert n.receivers == (ALICE, BOB)


def test_client_removed_goes_to_the_client_and_the_actor() -> None:
    removed = Receiver(UUID("c1e2a3b4-d5f6-4789-abcd-ef0123456789"), "http://gone.example/")
    n = ClientRemovedNotification.from_training(snapshot(), client=removed, reason="timeout")
    assert n.receivers == (removed, ACTOR)
    assert n.body == ClientRemovedBody(client_uuid=removed.id, reason="timeout")
    assert n.training_uuid == TRAINING_ID


def test_client_removed_when_the_client_is_the_actor() -> None:
    n = ClientRemovedNotification.from_training(snapshot(), client=ACTOR)
    assert n.receivers == (ACTOR,)
    assert n.body.reason == ""


@pytest.mark.parametrize("cls", ROUND_CLASSES, ids=lambda c: c.__name__)
def test_per_client_variant_overrides_receivers_and_model(
    cls: RoundClass,
) -> None:
    n = cls.from_training(snapshot(), receivers=[BOB], global_model_uuid=LOCAL_MODEL_ID)
    assert n.receivers == (BOB,)
    assert n.body == RoundBody(round=7, global_model_uuid=LOCAL_MODEL_ID)
    assert n.training_uuid == TRAINING_ID


def test_per_client_variant_equals_explicit_construction() -> None:
    built = TrainingRoundStartNotification(
        receivers=[BOB],
        body=RoundBody(round=7, global_model_uuid=LOCAL_MODEL_ID),
        training_uuid=TRAINING_ID,
    )
    via_training = TrainingRoundStartNotification.from_training(
        snapshot(), receivers=[BOB], global_model_uuid=LOCAL_MODEL_ID
    )
    assert built == via_training


@pytest.mark.parametrize(
    "cls",
    [TrainingStartNotification, TrainingFinishedNotification],
    ids=lambda c: c.__name__,
)
def test_receivers_override(
    cls: type[TrainingStartNotification] | type[TrainingFinishedNotification],
) -> None:
    n = cls.from_training(snapshot(), receivers=[ALICE])
    assert n.receivers == (ALICE,)


def test_client_removed_receivers_override() -> None:
    n = ClientRemovedNotification.from_training(snapshot(), client=ALICE, receivers=[BOB])
    assert n.receivers == (BOB,)
    assert n.body.client_uuid == ALICE.id


def test_empty_receivers_override_is_honoured() -> None:
    n = TrainingRoundStartNotification.from_training(snapshot(), receivers=[])
    assert n.receivers == ()


# --- Validation, immutability, with_receivers ---------------------------------------------


def test_round_body_rejects_negative_round() -> None:
    with pytest.raises(ValueError, match="round"):
        RoundBody(round=-1, global_model_uuid=MODEL_ID)
    assert RoundBody(round=0, global_model_uuid=MODEL_ID).round == 0


def test_snapshot_rejects_negative_round() -> None:
    with pytest.raises(ValueError, match="round"):
        snapshot(round=-1)
    assert snapshot(round=0).round == 0


def test_snapshot_participant_ids() -> None:
    assert snapshot().participant_ids() == frozenset({ALICE.id, BOB.id})


def test_notifications_are_frozen() -> None:
    n = TrainingStartNotification.from_training(snapshot())
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        n.training_uuid = MODEL_ID  # type: ignore[misc]


def test_with_receivers_returns_a_copy_for_other_receivers() -> None:
    n = TrainingRoundStartNotification.from_training(snapshot())
    other = n.with_receivers([BOB])
    assert type(other) is TrainingRoundStartNotification
    assert other.receivers == (BOB,)
    assert other.body is n.body
    assert other.training_uuid == n.training_uuid
    assert n.receivers == (ALICE, BOB)  # the original is untouched
    assert other != n
    assert other == n.with_receivers((BOB,))


def test_with_receivers_validates() -> None:
    n = TrainingStartNotification.from_training(snapshot())
    bad: Any = [NoEndpoint(ALICE.id)]
    with pytest.raises(TypeError, match="message_endpoint"):
        n.with_receivers(bad)
