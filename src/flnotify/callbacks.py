"""What happens after each delivery: callbacks, the training defaults, and who gets which.

A callback object has ``on_success`` and ``on_error``; each may be a plain function or a
coroutine function. Every driver calls exactly one of them exactly once per receiver, with
the frozen [`Delivery`][flnotify.Delivery] for that receiver. A callback that raises is
logged at ERROR, kept on the report as a [`CallbackError`][flnotify.CallbackError], and does
not disturb other deliveries.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, Union
from uuid import UUID

import attrs

from ._exceptions import CallbackError
from ._notification import Notification, TrainingNotification
from ._report import Delivery
from ._types import Outcome, TrainingState
from .repository import AsyncTrainingRepository, TrainingRepository
from .training import (
    TrainingModelTestNotification,
    TrainingRoundStartNotification,
    TrainingSWAGRoundStartNotification,
)

__all__ = [
    "CallbackFactory",
    "Callbacks",
    "FunctionCallbacks",
    "Reaction",
    "TrainingCallbacks",
    "default_callbacks_for",
    "register_default_callbacks",
    "run_callbacks",
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


class CallbackFactory(Protocol):
    """Builds a notification class's default callbacks from the driver's repository."""

    def __call__(self, repository: Any, /) -> Callbacks:
        """The callbacks for one send."""
        ...


async def run_callbacks(callbacks: Callbacks, delivery: Delivery) -> CallbackError | None:
    """Call the right method of ``callbacks`` for ``delivery``; never raise.

    Returns:
        ``None``, or the [`CallbackError`][flnotify.CallbackError] (logged at ERROR with
        the receiver and training) when the callback raised.
    """
    method = callbacks.on_success if delivery.ok else callbacks.on_error
    try:
        result = method(delivery)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        name = _name(method)
        context = delivery.log_context()
        logger.exception(
            "The callback %s failed for receiver %s of training %s: %s",
            name,
            delivery.receiver.id,
            context["training_id"] or "-",
            exc,
            extra=context,
        )
        error = CallbackError(
            f"callback {name} failed for receiver {delivery.receiver.id}: "
            f"{type(exc).__name__}: {exc}",
            delivery=delivery,
            callback=name,
        )
        error.__cause__ = exc
        return error
    return None


def _name(method: Callable[..., object]) -> str:
    return getattr(method, "__qualname__", repr(method))


class Reaction(enum.Enum):
    """What [`TrainingCallbacks`][flnotify.TrainingCallbacks] does for one outcome."""

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


_DEFAULTS: dict[type[Notification[Any]], CallbackFactory] = {
    TrainingRoundStartNotification: TrainingCallbacks,
    TrainingSWAGRoundStartNotification: TrainingCallbacks,
    TrainingModelTestNotification: TrainingCallbacks,
}


def register_default_callbacks(
    notification_class: type[Notification[Any]], factory: CallbackFactory | None
) -> None:
    """Give a notification class (and its subclasses) default callbacks, or take them away.

    Args:
        notification_class: The class, e.g. a notification type of your own.
        factory: Builds the callbacks from the driver's repository; ``None`` removes the
            class's entry.
    """
    if factory is None:
        _DEFAULTS.pop(notification_class, None)
    else:
        _DEFAULTS[notification_class] = factory


def default_callbacks_for(
    notification: Notification[Any],
    repository: TrainingRepository | AsyncTrainingRepository | None,
) -> Callbacks | None:
    """The callbacks a driver uses for ``notification`` when it is given none.

    The round-type notifications (update round, SWAG round, model test) get
    [`TrainingCallbacks`][flnotify.TrainingCallbacks]; other classes get what
    [`register_default_callbacks`][flnotify.register_default_callbacks] gave them (looked up
    along the class's MRO). Without a repository there are none.
    """
    if repository is None:
        return None
    for cls in type(notification).__mro__:
        factory = _DEFAULTS.get(cls)
        if factory is not None:
            return factory(repository)
    return None
