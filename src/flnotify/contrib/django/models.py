"""The app's optional tables: outcome tracking and per-client signing secrets.

Nothing uses them unless configured: ``"track_outcomes": True`` in the repository settings
(a [`DjangoTrackingRepository`][flnotify.contrib.django.DjangoTrackingRepository]) and a
[`ClientSecretLookup`][flnotify.contrib.django.ClientSecretLookup] as the signer's lookup.
Client and training ids are stored as plain UUIDs, not foreign keys: the app knows none of
the host's models.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from ...signing import Signer

__all__ = ["ClientSecret", "ParticipantFailure", "SendOutcome", "SendVerdict"]


def validate_secret(value: str) -> None:
    """Refuse a value that is not a ``whsec_`` base64 secret (as `Signer` parses it)."""
    try:
        Signer(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class SendOutcome(models.Model):
    """One receiver's outcome of one send, recorded once (see `OutcomeTracking`)."""

    class Result(models.TextChoices):
        """The stored outcome values (`Outcome`'s)."""

        DELIVERED = "delivered"
        REJECTED = "rejected"
        FAILED = "failed"

    send_id = models.CharField(max_length=200)
    receiver_id = models.UUIDField()
    training_id = models.UUIDField(db_index=True)
    total = models.PositiveIntegerField(help_text="The send's number of receivers.")
    outcome = models.CharField(max_length=10, choices=Result.choices)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:  # noqa: D106 - Django's options
        constraints = (
            models.UniqueConstraint(
                fields=("send_id", "receiver_id"), name="flnotify_outcome_once_per_receiver"
            ),
        )

    def __str__(self) -> str:
        return f"{self.send_id}: {self.receiver_id} {self.outcome}"


class SendVerdict(models.Model):
    """A send whose failure-policy verdict was claimed (once per send)."""

    send_id = models.CharField(max_length=200, primary_key=True)
    claimed_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.send_id


class ParticipantFailure(models.Model):
    """A client's run of consecutive failed notifications of one training."""

    training_id = models.UUIDField()
    receiver_id = models.UUIDField()
    consecutive = models.PositiveIntegerField()
    last_send = models.CharField(max_length=200)

    class Meta:  # noqa: D106 - Django's options
        constraints = (
            models.UniqueConstraint(
                fields=("training_id", "receiver_id"), name="flnotify_one_failure_run"
            ),
        )

    def __str__(self) -> str:
        return f"{self.receiver_id} in {self.training_id}: {self.consecutive} failure(s)"


class ClientSecret(models.Model):
    """One of a client's ``whsec_`` signing secrets; several during a rotation."""

    client_id = models.UUIDField(db_index=True, help_text="The receiver's id.")
    secret = models.CharField(max_length=200, validators=[validate_secret])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:  # noqa: D106 - Django's options
        ordering = ("client_id", "created_at", "pk")

    def __str__(self) -> str:
        return f"secret of {self.client_id} from {self.created_at:%Y-%m-%d}"
