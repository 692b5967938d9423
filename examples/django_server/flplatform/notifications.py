"""Sending: what the FL platform's server code calls to start the next round."""

from __future__ import annotations

from uuid import UUID

from django.db import transaction

import flnotify
from flnotify.signing import Signer

from .models import Training, User
from .repository import DjangoTrainingRepository


def make_notifier(training: Training) -> flnotify.Notifier:
    """A Notifier that signs with each client's own secret and acts on the training.

    The secrets are read here, before sending: the Signer's lookup runs inside flnotify's
    event loop, where Django refuses ORM calls.
    """
    secrets = {
        user.id: user.notification_secret
        for user in User.objects.filter(trainings=training).exclude(notification_secret="")
    }
    return flnotify.Notifier(
        repository=DjangoTrainingRepository(),
        signer=Signer(lookup=lambda receiver: secrets.get(receiver.id)),
        retry=flnotify.RetryPolicy(max_attempts=3, initial_backoff=0.2),
        deadline=30.0,
    )


def start_next_round(training_id: UUID, model_id: UUID | None = None) -> flnotify.DeliveryReport:
    """Advance the training to its next round (with a new global model) and tell the clients.

    Clients that reject the round are removed from the training and an unreachable one
    puts it into ERROR: flnotify's default callbacks do that through the repository.
    """
    with transaction.atomic():
        training = Training.objects.select_for_update().get(pk=training_id)
        training.round += 1
        if model_id is not None:
            training.model_id = model_id
        training.state = Training.State.ONGOING
        training.save(update_fields=["round", "model_id", "state"])
    snapshot = DjangoTrainingRepository().get_training(training_id)
    notification = flnotify.TrainingRoundStartNotification.from_training(snapshot)
    with make_notifier(training) as notifier:
        return notifier.send(notification)
