"""Storing a training the contract suites describe, with the host's models."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import flnotify

from .models import GlobalModel, Training, User

_STORED = {
    flnotify.TrainingState.INITIAL: "I",
    flnotify.TrainingState.ONGOING: "O",
    flnotify.TrainingState.COMPLETED: "C",
    flnotify.TrainingState.ERROR: "E",
    flnotify.TrainingState.SWAG_ROUND: "S",
}


def seed(
    using: str,
    *,
    actor: flnotify.ReceiverLike,
    participants: Sequence[flnotify.ReceiverLike],
    model_id: uuid.UUID,
    round: int,
    state: flnotify.TrainingState,
) -> uuid.UUID:
    """Create the users, the global model and the training; return the training's id."""
    users = {
        r.id: User(id=r.id, username=f"user-{r.id}", message_endpoint=r.message_endpoint)
        for r in (actor, *participants)
    }
    User.objects.using(using).bulk_create(users.values())
    model = GlobalModel.objects.using(using).create(id=model_id, round=round)
    training = Training.objects.using(using).create(
        actor=users[actor.id], model=model, state=_STORED[state]
    )
    training.participants.add(*(users[p.id] for p in participants))
    training_id: uuid.UUID = training.id
    return training_id


def empty(using: str) -> None:
    """Delete every training, model and user."""
    Training.objects.using(using).all().delete()
    GlobalModel.objects.using(using).all().delete()
    User.objects.using(using).all().delete()
