"""Observing deliveries: a hook Protocol and the frozen details it is called with.

Hooks watch; they do not decide. Every driver (the [`Notifier`][flnotify.Notifier], Celery
workers, the outbox dispatcher) calls them from the one delivery core, so progress
displays, recorders, metrics and tracing are written once. A hook that raises is logged
and otherwise ignored: observing never changes an outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from ._exceptions import FlnotifyError
from ._notification import Notification
from ._report import Delivery, DeliveryReport
from ._types import ReceiverLike

__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "DeliveryHook",
    "HeaderHook",
    "HookSet",
    "NullHook",
    "SendStarted",
]

logger = logging.getLogger("flnotify")


@attrs.frozen
class SendStarted:
    """A send (one run of the engine) begins.

    Args:
        notification: What is being sent.
        send_id: The send's id: the same on its attempts' details, its
            [`DeliveryReport`][flnotify.DeliveryReport] and every
            [`Delivery`][flnotify.Delivery]. Two sends of one notification object have two
            ids; the parts of a send cut into parts (outbox batches, Celery chunks) share one.
        receivers: The receivers of this run.
    """

    notification: Notification[Any] = attrs.field(repr=False)
    send_id: str
    receivers: tuple[ReceiverLike, ...] = attrs.field(repr=False)


@attrs.frozen
class AttemptStarted:
    """One attempt is about to POST.

    Args:
        notification: What is being sent.
        receiver: To whom.
        message_id: Its ``webhook-id`` (the same on every attempt).
        attempt: Which attempt this is, from 1.
        url: The endpoint.
        send_id: The id of the send the attempt belongs to (see
            [`SendStarted`][flnotify.hooks.SendStarted]).
    """

    notification: Notification[Any] = attrs.field(repr=False)
    receiver: ReceiverLike
    message_id: str
    attempt: int
    url: str
    send_id: str


@attrs.frozen
class AttemptEnded:
    """One attempt is over; ``retry_in`` says whether another one follows.

    Args:
        started: What the attempt was.
        duration: Seconds the attempt took (the driver's clock).
        status_code: The status that came back, if any.
        error: Why no status came back, if none did.
        retry_in: Seconds until the next attempt, or ``None`` if this one was the last.
    """

    started: AttemptStarted
    duration: float
    status_code: int | None = None
    error: FlnotifyError | None = None
    retry_in: float | None = None

    @property
    def send_id(self) -> str:
        """The id of the send the attempt belongs to."""
        return self.started.send_id


class DeliveryHook(Protocol):
    """Observes deliveries: called by the delivery core of every driver.

    Methods are plain functions called on the event loop (keep them fast and non-blocking).
    Subclass [`NullHook`][flnotify.hooks.NullHook] to implement only some of them. A "send" is one
    run of the engine: a ``Notifier.send``, one Celery task execution (a chunk), or one
    stored notification of an outbox claim.
    """

    def on_send_started(self, details: SendStarted, /) -> None:
        """A send begins: what, its id, and to whom."""
        ...

    def on_send_ended(self, report: DeliveryReport, /) -> None:
        """A send is over; ``report`` holds its final deliveries (deferred retries aside)."""
        ...

    def on_attempt_started(self, details: AttemptStarted, /) -> None:
        """An attempt is about to POST."""
        ...

    def on_attempt_ended(self, details: AttemptEnded, /) -> None:
        """An attempt is over (a status, an error, and whether a retry follows)."""
        ...

    def on_outcome(self, delivery: Delivery, /) -> None:
        """A receiver reached its final outcome (called exactly once per receiver)."""
        ...


@runtime_checkable
class HeaderHook(Protocol):
    """A hook's optional capability: headers to add to each attempt (a trace context).

    Called after ``on_attempt_started``; it never replaces one of the core's headers. A
    hook without it adds none.
    """

    def attempt_headers(self, details: AttemptStarted, /) -> Mapping[str, str] | None:
        """Extra headers for the attempt ``details`` describes, or ``None``."""
        ...


class NullHook:
    """A hook that does nothing; subclass it and override what you need."""

    def on_send_started(self, details: SendStarted, /) -> None:
        """Nothing."""

    def on_send_ended(self, report: DeliveryReport, /) -> None:
        """Nothing."""

    def on_attempt_started(self, details: AttemptStarted, /) -> None:
        """Nothing."""

    def on_attempt_ended(self, details: AttemptEnded, /) -> None:
        """Nothing."""

    def on_outcome(self, delivery: Delivery, /) -> None:
        """Nothing."""


class HookSet:
    """Several hooks called in order; one that raises is logged and the others still run."""

    __slots__ = ("attempts", "hooks")

    def __init__(self, hooks: Sequence[DeliveryHook]) -> None:
        self.hooks = tuple(hooks)
        self.attempts = any(
            getattr(type(h), "on_attempt_started", None) is not NullHook.on_attempt_started
            or getattr(type(h), "on_attempt_ended", None) is not NullHook.on_attempt_ended
            for h in self.hooks
        )
        """Whether any hook watches attempts (else their details are never built)."""

    def send_started(self, details: SendStarted) -> None:
        for hook in self.hooks:
            try:
                hook.on_send_started(details)
            except Exception:
                _log_failure(hook, "on_send_started")

    def send_ended(self, report: DeliveryReport) -> None:
        for hook in self.hooks:
            try:
                hook.on_send_ended(report)
            except Exception:
                _log_failure(hook, "on_send_ended")

    def attempt_started(self, details: AttemptStarted) -> None:
        for hook in self.hooks:
            try:
                hook.on_attempt_started(details)
            except Exception:
                _log_failure(hook, "on_attempt_started")

    def attempt_ended(self, details: AttemptEnded) -> None:
        for hook in self.hooks:
            try:
                hook.on_attempt_ended(details)
            except Exception:
                _log_failure(hook, "on_attempt_ended")

    def outcome(self, delivery: Delivery) -> None:
        for hook in self.hooks:
            try:
                hook.on_outcome(delivery)
            except Exception:
                _log_failure(hook, "on_outcome", delivery.log_context())


def _log_failure(hook: object, method: str, extra: dict[str, object] | None = None) -> None:
    logger.exception("The delivery hook %s.%s raised.", type(hook).__name__, method, extra=extra)
