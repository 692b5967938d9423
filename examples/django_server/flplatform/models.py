"""The FL platform's models: users (FL clients and data scientists) and trainings."""

from __future__ import annotations

import uuid

from django.db import models


class User(models.Model):
    """Someone who takes part: an FL client (``message_endpoint``) or who starts trainings.

    A real platform extends ``django.contrib.auth.models.AbstractUser``; flnotify only needs
    ``id`` and ``message_endpoint``, so any model with those two is a receiver as it is.
    Each client's signing secret is a row of flnotify's ``ClientSecret`` table.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    username = models.CharField(max_length=150, blank=True)
    message_endpoint = models.URLField(max_length=500)

    def __str__(self) -> str:
        return self.username or str(self.id)


class Training(models.Model):
    """A federated training: its participants, current round and global model."""

    class State(models.TextChoices):
        INITIAL = "INITIAL"
        ONGOING = "ONGOING"
        COMPLETED = "COMPLETED"
        ERROR = "ERROR"
        SWAG_ROUND = "SWAG_ROUND"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    actor = models.ForeignKey(User, on_delete=models.PROTECT, related_name="started_trainings")
    participants = models.ManyToManyField(User, related_name="trainings", blank=True)
    model_id = models.UUIDField(default=uuid.uuid4)
    round = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=20, choices=State.choices, default=State.INITIAL)

    def __str__(self) -> str:
        return f"training {self.id} ({self.state}, round {self.round})"
