"""flnotify's ``TrainingRepository`` over the Django ORM.

flnotify reads a training, removes a participant and sets a state; that is all it asks of
the host's storage. The protocol is structural: no base class, just these three methods.

flnotify's default callbacks call a synchronous repository from a worker thread (never
inside its event loop), so plain ORM calls are fine here. Django opens one database
connection per thread; a call made from a worker thread closes its connection when done,
as Django does at the end of a request, so no thread leaves one behind.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar
from uuid import UUID

from django.db import connection, transaction

import flnotify

from .models import Training

P = ParamSpec("P")
R = TypeVar("R")


def _closes_worker_connection(method: Callable[P, R]) -> Callable[P, R]:
    """Close this thread's connection after the call unless it is the main thread."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        finally:
            if threading.current_thread() is not threading.main_thread() and not (
                connection.in_atomic_block
            ):
                connection.close()

    return call


class DjangoTrainingRepository:
    """Trainings as the FL platform's ``Training`` model stores them."""

    @_closes_worker_connection
    def get_training(self, training_id: UUID) -> flnotify.TrainingSnapshot:
        """The training as it is now, read in one transaction."""
        with transaction.atomic():
            try:
                training = Training.objects.select_related("actor").get(pk=training_id)
            except Training.DoesNotExist:
                raise flnotify.TrainingNotFoundError(training_id) from None
            participants = [
                flnotify.Receiver(user.id, user.message_endpoint)
                for user in training.participants.order_by("username", "id")
            ]
        return flnotify.TrainingSnapshot(
            id=training.id,
            model_id=training.model_id,
            round=training.round,
            participants=participants,
            actor=flnotify.Receiver(training.actor.id, training.actor.message_endpoint),
            state=flnotify.TrainingState(training.state),
        )

    @_closes_worker_connection
    def remove_participant(self, training_id: UUID, receiver_id: UUID) -> None:
        """Remove one participant; nothing happens if it takes no part."""
        with transaction.atomic():
            if not Training.objects.filter(pk=training_id).exists():
                raise flnotify.TrainingNotFoundError(training_id)
            Training.participants.through.objects.filter(
                training_id=training_id, user_id=receiver_id
            ).delete()

    @_closes_worker_connection
    def set_state(self, training_id: UUID, state: flnotify.TrainingState) -> None:
        """Set the training's state."""
        if not Training.objects.filter(pk=training_id).update(state=state.value):
            raise flnotify.TrainingNotFoundError(training_id)
