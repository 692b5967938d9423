"""What happens after each delivery: callback protocols and the default training callbacks.

A callback object has ``on_success`` and ``on_error``; each may be a plain function or a
coroutine function. The Notifier calls exactly one of them exactly once per receiver, with
the frozen [`Delivery`][flnotify.Delivery] for that receiver. A callback that raises is logged
and does not disturb other deliveries.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, Union
from uuid import UUID

import attrs

from ._notification import CallbackFactory, TrainingNotification
from ._retry import Outcome
from ._types import TrainingState

if TYPE_CHECKING:
    from ._delivery import Delivery
    from .repository import AsyncTrainingRepository, TrainingRepository

__all__ = [
    "CallbackFactory",
    "Callbacks",
    "FunctionCallbacks",
    "Reaction",
    "TrainingCallbacks",
    "call_callbacks",
]

logger = logging.getLogger("flnotify")

MaybeAwaitable = Union[None, Awaitable[None]]  # noqa: UP007 - runtime alias on Python 3.10


class Callbacks(Protocol):
    """Called once per receiver after its final outcome; either method may be async."""

    def on_success(self, delivery: Delivery, /) -> MaybeAwaitable:
        """The receiver answered 2xx."""
        ...

    def on_error(self, delivery: Delivery, /) -> MaybeAwaitable:
        """The receiver rejected the notification or could not be reached."""
        ...


@attrs.frozen
class FunctionCallbacks:
    """Callbacks from plain functions; either may be omitted.

    Args:
        success: Called with the delivery of each receiver that answered 2xx.
        error: Called with the delivery of each receiver that did not.
    """

    success: Callable[[Delivery], MaybeAwaitable] | None = None
    error: Callable[[Delivery], MaybeAwaitable] | None = None

    def on_success(self, delivery: Delivery, /) -> MaybeAwaitable:
        """Forward to ``success``."""
        return None if self.success is None else self.success(delivery)

    def on_error(self, delivery: Delivery, /) -> MaybeAwaitable:
        """Forward to ``error``."""
        return None if self.error is None else self.error(delivery)


async def call_callbacks(callbacks: Callbacks, delivery: Delivery) -> None:
    """Call the right method of ``callbacks`` for ``delivery``; log, never raise, on failure."""
    method = callbacks.on_success if delivery.ok else callbacks.on_error
    try:
        result = method(delivery)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception(
            "callback %s failed for receiver %s",
            _name(method),
            delivery.receiver.id,
            extra=delivery.log_context(),
        )


def _name(method: Callable[..., object]) -> str:
    return getattr(method, "__qualname__", repr(method))


class Reaction(enum.Enum):
    """What [`TrainingCallbacks`][] does to the training for one outcome."""

    REMOVE_PARTICIPANT = "remove_participant"
    """Remove the receiver from the training's participants."""
    SET_ERROR = "set_error"
    """Put the training into ``TrainingState.ERROR``."""
    LOG = "log"
    """Only log."""


@attrs.define
class TrainingCallbacks:
    """The default callbacks of the round-type notifications.

    Rejected -> the client is removed from the training (warning logged); failed -> the
    training goes to ``ERROR`` (error logged); delivered -> a debug log line. Works with a
    sync [`TrainingRepository`][flnotify.TrainingRepository] (its calls run in a worker thread,
    so ORMs that refuse to run inside an event loop are fine) or an async one.

    Args:
        repository: Where trainings live.
        on_rejected: What a rejection does.
        on_failed: What a failure does.
    """

    repository: TrainingRepository | AsyncTrainingRepository
    on_rejected: Reaction = Reaction.REMOVE_PARTICIPANT
    on_failed: Reaction = Reaction.SET_ERROR

    def on_success(self, delivery: Delivery, /) -> None:
        """Log at debug level."""
        logger.debug("delivered to %s", delivery.receiver.id, extra=delivery.log_context())

    async def on_error(self, delivery: Delivery, /) -> None:
        """Apply the configured reaction to the training."""
        rejected = delivery.outcome is Outcome.REJECTED
        reaction = self.on_rejected if rejected else self.on_failed
        notification = delivery.notification
        context = delivery.log_context()
        log = logger.warning if rejected else logger.error
        log(
            "%s %s for receiver %s (%s): %s",
            notification.notification_type.value,
            delivery.outcome.value,
            delivery.receiver.id,
            delivery.receiver.message_endpoint,
            reaction.value,
            extra=context,
        )
        if reaction is Reaction.LOG:
            return
        if not isinstance(notification, TrainingNotification):
            logger.warning(
                "%s is not about a training; nothing to %s",
                type(notification).__name__,
                reaction.value,
                extra=context,
            )
            return
        training_id: UUID = notification.training_uuid
        if reaction is Reaction.REMOVE_PARTICIPANT:
            await self._call("remove_participant", training_id, delivery.receiver.id)
        else:
            await self._call("set_state", training_id, TrainingState.ERROR)

    async def _call(self, name: str, *args: object) -> None:
        method = getattr(self.repository, name)
        if inspect.iscoroutinefunction(method):
            await method(*args)
        else:
            await asyncio.to_thread(method, *args)
