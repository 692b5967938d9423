"""What a send produced: one [`Delivery`][flnotify.Delivery] per receiver, and the report.

Plain values, built by the delivery core (``_attempt``) and read by everyone else.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs
from typing_extensions import Self

from ._exceptions import CallbackError, DeliveryError, FlnotifyError
from ._notification import Notification, TrainingNotification
from ._types import HttpResponse, Outcome, ReceiverLike

__all__ = ["Delivery", "DeliveryReport", "OutcomeCounts"]


@attrs.frozen
class Delivery:
    """The final result of delivering one notification to one receiver.

    Args:
        receiver: Who it was for.
        notification: What was sent.
        outcome: Delivered, rejected or failed.
        message_id: The ``webhook-id`` it carried (the same on every attempt).
        attempts: POSTs made (0 when the endpoint was refused before any I/O).
        elapsed: Seconds from the first attempt to the outcome, backoff included.
        status_code: The last HTTP status received, if any.
        error: Why it failed, when it did without a final status.
        response: The last answer (body capped by the transport) of a receiver that was
            not delivered, for diagnosis; ``None`` for delivered ones (``status_code``
            says enough, and a large fan-out's report stays small).
        send_id: The send it belongs to (one ``send``, one Celery ``enqueue``, one outbox
            ``put``), so a failure policy can judge all its receivers together.
        send_size: How many receivers that send had in all.
    """

    receiver: ReceiverLike
    notification: Notification[Any] = attrs.field(repr=False)
    outcome: Outcome
    message_id: str
    attempts: int
    elapsed: float
    status_code: int | None = None
    error: FlnotifyError | None = None
    response: HttpResponse | None = attrs.field(default=None, repr=False)
    send_id: str = attrs.field(default="", repr=False)
    send_size: int = attrs.field(default=0, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.outcome is Outcome.DELIVERED

    @property
    def redirect(self) -> str | None:
        """Where a 3xx answer pointed (its ``Location``); redirects are never followed."""
        response = self.response
        if response is None or not 300 <= response.status_code < 400:
            return None
        return response.headers.get("location", "")

    def describe(self) -> str:
        """One line for humans: receiver, outcome, status or error, attempts."""
        why = ""
        if self.status_code is not None:
            why = f"status {self.status_code}"
            redirect = self.redirect
            if redirect is not None:
                why += f", redirect to {redirect or '(no Location)'} not followed"
        if self.error is not None:
            why = f"{why}; {self.error}" if why else str(self.error)
        return (
            f"{self.receiver.id} ({self.receiver.message_endpoint}): {self.outcome.value}"
            f"{', ' + why if why else ''} after {self.attempts} attempt(s)"
        )

    def log_context(self) -> dict[str, object]:
        """Fields for ``logging``'s ``extra``: ids, endpoint and type; never secrets."""
        notification = self.notification
        training = (
            str(notification.training_uuid)
            if isinstance(notification, TrainingNotification)
            else None
        )
        return {
            "training_id": training,
            "receiver_id": str(self.receiver.id),
            "endpoint": self.receiver.message_endpoint,
            "notification_type": notification.notification_type.value,
            "message_id": self.message_id,
            "outcome": self.outcome.value,
        }


@attrs.frozen(eq=False)  # compared as the Mapping it is
class OutcomeCounts(Mapping[Outcome, int]):
    """How many deliveries ended in each outcome; prints as ``5 delivered, 0 rejected, ...``."""

    delivered: int = 0
    rejected: int = 0
    failed: int = 0

    def __getitem__(self, outcome: Outcome) -> int:
        if not isinstance(outcome, Outcome):
            raise KeyError(outcome)
        return int(getattr(self, outcome.value))

    def __iter__(self) -> Iterator[Outcome]:
        return iter(Outcome)

    def __len__(self) -> int:
        return len(Outcome)

    def __str__(self) -> str:
        return ", ".join(f"{self[o]} {o.value}" for o in Outcome)


@attrs.frozen
class DeliveryReport:
    """Every receiver's [`Delivery`][flnotify.Delivery] for one send, in receiver order.

    Args:
        notification: What was sent.
        deliveries: One per receiver.
        elapsed: Seconds the send took.
        callback_errors: The callbacks that raised (each also logged at ERROR).
        send_id: The send's id, as on each of its deliveries (and on the hooks' details).
    """

    notification: Notification[Any] = attrs.field(repr=False)
    deliveries: tuple[Delivery, ...]
    elapsed: float
    callback_errors: tuple[CallbackError, ...] = ()
    send_id: str = ""

    def __iter__(self) -> Iterator[Delivery]:
        return iter(self.deliveries)

    def __len__(self) -> int:
        return len(self.deliveries)

    def _with(self, outcome: Outcome) -> tuple[Delivery, ...]:
        return tuple(d for d in self.deliveries if d.outcome is outcome)

    @property
    def delivered(self) -> tuple[Delivery, ...]:
        """The deliveries that got a 2xx."""
        return self._with(Outcome.DELIVERED)

    @property
    def rejected(self) -> tuple[Delivery, ...]:
        """The deliveries a client said no to."""
        return self._with(Outcome.REJECTED)

    @property
    def failed(self) -> tuple[Delivery, ...]:
        """The deliveries that could not be completed."""
        return self._with(Outcome.FAILED)

    def counts(self) -> OutcomeCounts:
        """How many deliveries ended in each outcome (every outcome present)."""
        tally = dict.fromkeys(Outcome, 0)
        for delivery in self.deliveries:
            tally[delivery.outcome] += 1
        return OutcomeCounts(*(tally[o] for o in Outcome))

    def summary(self) -> str:
        """One line: type, receivers, counts, time, and failed callbacks if any."""
        callbacks = (
            f"; {len(self.callback_errors)} callback(s) failed" if self.callback_errors else ""
        )
        return (
            f"{self.notification.notification_type.value} to {len(self)} receiver(s): "
            f"{self.counts()} in {self.elapsed:.2f} s{callbacks}"
        )

    @property
    def ok(self) -> bool:
        """Whether every receiver answered 2xx (see ``callback_errors`` for the callbacks)."""
        return all(d.outcome is Outcome.DELIVERED for d in self.deliveries)

    def raise_for_failures(self) -> Self:
        """Return ``self`` if all were delivered and called back, else raise.

        Raises:
            DeliveryError: Some receivers were rejected or failed, or a callback raised;
                it carries both.
        """
        bad = tuple(d for d in self.deliveries if d.outcome is not Outcome.DELIVERED)
        if not bad and not self.callback_errors:
            return self
        parts = []
        if bad:
            parts.append(f"{len(bad)} receiver(s) not delivered; first: {bad[0].describe()}")
        if self.callback_errors:
            first = self.callback_errors[0]
            parts.append(f"{len(self.callback_errors)} callback(s) failed; first: {first}")
        raise DeliveryError("; ".join(parts), bad, self.callback_errors)
