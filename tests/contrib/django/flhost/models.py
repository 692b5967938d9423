"""The host's models: users, global models with their round, trainings."""

from __future__ import annotations

import uuid

from django.db import models


class User(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    username = models.CharField(max_length=150, blank=True)
    message_endpoint = models.CharField(max_length=500)

    def __str__(self) -> str:
        return self.username


class GlobalModel(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    round = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"model {self.id} (round {self.round})"


class Training(models.Model):
    class State(models.TextChoices):
        INITIAL = "I"
        ONGOING = "O"
        COMPLETED = "C"
        ERROR = "E"
        SWAG_ROUND = "S"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    actor = models.ForeignKey(User, on_delete=models.PROTECT, related_name="started")
    participants = models.ManyToManyField(User, related_name="trainings", blank=True)
    model = models.ForeignKey(GlobalModel, on_delete=models.PROTECT)
    state = models.CharField(max_length=1, choices=State.choices, default=State.INITIAL)

    def __str__(self) -> str:
        return f"training {self.id} ({self.state})"
