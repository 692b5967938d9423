"""Sending: what the FL platform's server code calls to start the next round."""

from __future__ import annotations

from uuid import UUID

from django.db import transaction

import flnotify
from flnotify.contrib.django import get_notifier, notification_for

from .models import Training


def start_next_round(training_id: UUID, model_id: UUID | None = None) -> flnotify.DeliveryReport:
    """Advance the training to its next round (with a new global model) and tell the clients.

    The process's Notifier (from the ``FLNOTIFY`` settings) signs each request with the
    client's own secret; a client that rejects the round is removed from the training, and
    unreachable ones count against the failure policy: flnotify's default callbacks do that
    through the settings' repository.
    """
    with transaction.atomic():
        training = Training.objects.select_for_update().get(pk=training_id)
        training.round += 1
        if model_id is not None:
            training.model_id = model_id
        training.state = Training.State.ONGOING
        training.save(update_fields=["round", "model_id", "state"])
    notification = notification_for(flnotify.TrainingRoundStartNotification, training)
    return get_notifier().send(notification)
