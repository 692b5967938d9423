"""What happens after each delivery: callbacks, the training defaults, and who gets which.

A callback object has ``on_success`` and ``on_error``; each may be a plain function or a
coroutine function. Every driver calls exactly one of them exactly once per receiver, with
the frozen [`Delivery`][flnotify.Delivery] for that receiver. A callback that raises is
logged at ERROR, kept on the report as a [`CallbackError`][flnotify.errors.CallbackError], and does
not disturb other deliveries.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from fractions import Fraction
from typing import Any, Protocol, Union
from uuid import UUID

import attrs

from ._exceptions import CallbackError, ConfigurationError
from ._notification import Notification, TrainingNotification
from ._report import Delivery
from ._training import (
    ClientRemovedNotification,
    TrainingModelTestNotification,
    TrainingRoundStartNotification,
    TrainingSWAGRoundStartNotification,
)
from ._types import Outcome, TrainingState
from ._validators import positive
from .repository import (
    AsyncTrainingRepository,
    InMemoryTrainingRepository,
    OutcomeRecord,
    SendTally,
    TrainingRepository,
    tracks_outcomes,
)

__all__ = [
    "CallbackFactory",
    "CallbackRegistry",
    "NotificationSender",
    "Reaction",
    "Verdict",
    "call_callbacks",
    "default_callback_registry",
    "default_callbacks_for",
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


def call_callbacks(
    callbacks: Callbacks, delivery: Delivery
) -> CallbackError | Coroutine[Any, Any, CallbackError | None] | None:
    """Call the right method of ``callbacks`` for ``delivery``; never raise.

    A sync method is done when this returns; an async one returns a coroutine to await
    (the engine runs several at once, so slow callbacks such as telling a removed client
    overlap).

    Returns:
        ``None``, the [`CallbackError`][flnotify.errors.CallbackError] (logged at ERROR with the
        receiver and training) when the callback raised, or a coroutine that returns one
        of the two.
    """
    method = callbacks.on_success if delivery.ok else callbacks.on_error
    try:
        result = method(delivery)
    except Exception as exc:
        return _failed(method, delivery, exc)
    if inspect.isawaitable(result):
        return _finish(method, delivery, result)
    return None


async def _finish(
    method: Callable[..., object], delivery: Delivery, result: Awaitable[object]
) -> CallbackError | None:
    try:
        await result
    except Exception as exc:
        return _failed(method, delivery, exc)
    return None


async def run_callbacks(callbacks: Callbacks, delivery: Delivery) -> CallbackError | None:
    """Call the right method of ``callbacks`` for ``delivery`` and wait for it; never raise.

    Returns:
        ``None``, or the [`CallbackError`][flnotify.errors.CallbackError] (logged at ERROR with
        the receiver and training) when the callback raised.
    """
    called = call_callbacks(callbacks, delivery)
    if called is None or isinstance(called, CallbackError):
        return called
    return await called


def _failed(method: Callable[..., object], delivery: Delivery, exc: Exception) -> CallbackError:
    """The error of a callback that raised, logged at ERROR."""
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
        f"callback {name} failed for receiver {delivery.receiver.id}: {type(exc).__name__}: {exc}",
        delivery=delivery,
        callback=name,
    )
    error.__cause__ = exc
    return error


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


class Verdict(enum.Enum):
    """What a [`FailurePolicy`][flnotify.FailurePolicy] says of a send so far."""

    ERROR = "error"
    """The send failed the policy: the training goes to ``ERROR``."""
    FINE = "fine"
    """The send met the policy, whatever the receivers still pending do."""
    OPEN = "open"
    """Not decided yet: it depends on receivers still pending."""


def _count(value: object, name: str, *, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"FailurePolicy.{name} must be an int >= 0{' or None' if none else ''}, got {value!r}"
        raise ConfigurationError(msg)


@attrs.frozen
class FailurePolicy:
    """When a send puts its training into ``ERROR``: decided once, over all its receivers.

    A send fails the policy when more of its receivers failed than ``max_failures``, or
    fewer were delivered than ``min_delivered`` or than ``min_delivered_fraction`` of them
    (rejected receivers count as not delivered, never as failed). The default is the
    original platform's strict rule: one failure puts the training into ``ERROR``.
    Like Flower's ``accept_failures`` and minimum completion rates, a tolerant policy lets a
    round go on without some clients; ``remove_after`` removes a client that failed that
    many notifications of the training in a row (the count lives with the training, see
    [`OutcomeTracking`][flnotify.repository.OutcomeTracking]).

    Args:
        max_failures: Failed receivers a send may have; ``None`` for no limit.
        min_delivered: Receivers a send must deliver to.
        min_delivered_fraction: Share of its receivers a send must deliver to (0 to 1).
        remove_after: Remove a client after this many consecutive failed notifications of
            the training; ``None`` never removes for failures.
    """

    max_failures: int | None = attrs.field(default=0)
    min_delivered: int = attrs.field(default=0)
    min_delivered_fraction: float = attrs.field(default=0.0)
    remove_after: int | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        _count(self.max_failures, "max_failures", none=True)
        _count(self.min_delivered, "min_delivered")
        fraction = self.min_delivered_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            msg = f"FailurePolicy.min_delivered_fraction must be a number, got {fraction!r}"
            raise ConfigurationError(msg)
        if not 0.0 <= fraction <= 1.0:
            msg = f"FailurePolicy.min_delivered_fraction must be in [0, 1], got {fraction!r}"
            raise ConfigurationError(msg)
        _count(self.remove_after, "remove_after", none=True)
        if self.remove_after == 0:
            msg = "FailurePolicy.remove_after must be >= 1 or None, got 0"
            raise ConfigurationError(msg)

    @classmethod
    def strict(cls) -> FailurePolicy:
        """Any failure puts the training into ``ERROR`` (the default)."""
        return cls()

    @classmethod
    def tolerant(
        cls, *, min_delivered_fraction: float = 0.5, remove_after: int | None = 3
    ) -> FailurePolicy:
        """No limit on failures as long as enough receivers are delivered; remove the dead."""
        return cls(
            max_failures=None,
            min_delivered_fraction=min_delivered_fraction,
            remove_after=remove_after,
        )

    @property
    def _share(self) -> Fraction:
        """``min_delivered_fraction`` as the exact ratio its decimal digits say (0.56: 14/25)."""
        return Fraction(repr(float(self.min_delivered_fraction)))

    def _short_of_share(self, delivered: int, total: int) -> bool:
        """Whether ``delivered`` of ``total`` is below the share, in integers (no rounding)."""
        share = self._share
        return delivered * share.denominator < share.numerator * total

    @property
    def counts_deliveries(self) -> bool:
        """Whether delivered and rejected outcomes matter (else only failures do)."""
        return bool(self.min_delivered or self.min_delivered_fraction or self.remove_after)

    def verdict(self, tally: SendTally) -> Verdict:
        """Judge a send from its counts so far; ``ERROR`` or ``FINE`` as soon as it is certain."""
        pending = tally.pending
        best = tally.delivered + pending  # delivered if every pending receiver delivers
        limit = self.max_failures
        if (
            (limit is not None and tally.failed > limit)
            or best < self.min_delivered
            or self._short_of_share(best, tally.total)
        ):
            return Verdict.ERROR
        if pending == 0:
            return Verdict.FINE
        worst = tally.failed + pending  # failed if every pending receiver fails
        if (
            (limit is None or worst <= limit)
            and tally.delivered >= self.min_delivered
            and not self._short_of_share(tally.delivered, tally.total)
        ):
            return Verdict.FINE
        return Verdict.OPEN

    def explain(self, tally: SendTally) -> str:
        """The verdict in a sentence, with the counts that led to it."""
        verdict = self.verdict(tally)
        counts = (
            f"{tally.delivered} delivered, {tally.rejected} rejected, {tally.failed} failed "
            f"of {tally.total}"
        )
        rules = []
        if self.max_failures is not None:
            rules.append(f"at most {self.max_failures} failed")
        if self.min_delivered:
            rules.append(f"at least {self.min_delivered} delivered")
        if self.min_delivered_fraction:
            rules.append(f"at least {self.min_delivered_fraction:.0%} delivered")
        wanted = " and ".join(rules) or "nothing"
        if verdict is Verdict.ERROR:
            return f"{counts}: the policy asks {wanted}, so the training goes to ERROR"
        if verdict is Verdict.FINE:
            return f"{counts}: the policy ({wanted}) is met, the training goes on"
        return f"{counts}: not decided yet ({wanted})"


class NotificationSender(Protocol):
    """What tells a removed client: anything with a Notifier's ``asend``.

    The drivers pass their [`Notifier`][flnotify.Notifier].
    """

    async def asend(self, notification: Notification[Any], callbacks: Callbacks | None) -> Any:
        """Deliver ``notification``."""
        ...


class _Quiet:
    """Callbacks of a CLIENT_REMOVED notice: its outcome never removes or errors anything."""

    def on_success(self, delivery: Delivery, /) -> None:
        logger.debug("Told %s it was removed.", delivery.receiver.id, extra=delivery.log_context())

    def on_error(self, delivery: Delivery, /) -> None:
        logger.info(
            "Could not tell %s it was removed: %s.",
            delivery.receiver.id,
            delivery.describe(),
            extra=delivery.log_context(),
        )


@attrs.define
class TrainingCallbacks:
    """The default callbacks of the round-type notifications.

    Rejected: the client is removed from the training (warning logged) and told so.
    Failed: the failure counts toward the send's [`FailurePolicy`][flnotify.FailurePolicy],
    which decides once per send whether the training goes to ``ERROR`` (strict by default:
    any failure does); with ``remove_after`` a client failing that many notifications in a
    row is removed and told. Delivered: counted where the policy needs it. Works with a sync
    [`TrainingRepository`][flnotify.TrainingRepository] (its calls run in a worker thread,
    so ORMs that refuse to run inside an event loop are fine) or an async one. Repositories
    that implement [`OutcomeTracking`][flnotify.repository.OutcomeTracking] keep the counts
    across processes; for others they are kept here, for the sends these callbacks see.

    Args:
        repository: Where trainings live.
        on_rejected: What a rejection does.
        on_failed: What a failure does: ``SET_ERROR`` lets the policy decide.
        policy: When a send puts the training into ``ERROR``, and when a failing client is
            removed.
        sender: Sends ``CLIENT_REMOVED`` to a removed client and the training's actor (the
            driver passes its Notifier); nobody is told without one.
        tell_removed: Whether removed clients are told.
        tell_timeout: Seconds the telling may hold up the callback (and so the send whose
            outcome removed the client). A removed client that polls a mailbox and has
            gone quiet would otherwise hold it until the mailbox's acknowledgement
            deadline; the notice stays in its mailbox for when it comes back.

    Raises:
        ConfigurationError: ``policy.remove_after`` is set but the repository does not
            keep outcomes (it must survive restarts).
    """

    repository: TrainingRepository | AsyncTrainingRepository
    on_rejected: Reaction = Reaction.REMOVE_PARTICIPANT
    on_failed: Reaction = Reaction.SET_ERROR
    policy: FailurePolicy = attrs.field(factory=FailurePolicy)
    sender: NotificationSender | None = attrs.field(default=None, repr=False)
    tell_removed: bool = True
    tell_timeout: float = attrs.field(default=10.0, validator=positive)
    _outcomes: Any = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if tracks_outcomes(self.repository):
            self._outcomes = self.repository
        elif self.policy.remove_after is not None:
            msg = (
                f"FailurePolicy(remove_after={self.policy.remove_after}) needs a repository "
                f"that keeps outcomes (OutcomeTracking); {type(self.repository).__name__} "
                "does not"
            )
            raise ConfigurationError(msg)
        else:
            self._outcomes = InMemoryTrainingRepository()  # counts for this process only

    def on_success(self, delivery: Delivery, /) -> Awaitable[None] | None:
        """Count the delivery where the policy needs it; log at debug level."""
        logger.debug("Delivered to %s.", delivery.receiver.id, extra=delivery.log_context())
        if self.policy.counts_deliveries and self.on_failed is Reaction.SET_ERROR:
            return self._judge(delivery)
        return None

    async def on_error(self, delivery: Delivery, /) -> None:
        """Apply the configured reaction, and the policy to a failure."""
        rejected = delivery.outcome is Outcome.REJECTED
        reaction = self.on_rejected if rejected else self.on_failed
        notification = delivery.notification
        context = delivery.log_context()
        log = logger.warning if rejected else logger.error
        log(
            "%s %s for receiver %s (%s): %s.",
            notification.notification_type.value,
            delivery.outcome.value,
            delivery.receiver.id,
            delivery.receiver.message_endpoint,
            reaction.value,
            extra=context,
        )
        if not isinstance(notification, TrainingNotification):
            if reaction is not Reaction.LOG:
                logger.warning(
                    "%s is not about a training; nothing to %s.",
                    type(notification).__name__,
                    reaction.value,
                    extra=context,
                )
            return
        if reaction is Reaction.REMOVE_PARTICIPANT:
            why = f"rejected {notification.notification_type.value}" + (
                f" with status {delivery.status_code}" if delivery.status_code is not None else ""
            )
            await self._remove(delivery, why)
        elif reaction is Reaction.SET_ERROR and rejected:
            await self._call("set_state", notification.training_uuid, TrainingState.ERROR)
        if self.on_failed is Reaction.SET_ERROR and (
            not rejected or self.policy.counts_deliveries
        ):  # the policy judges the send: failures always, the others where it counts them
            await self._judge(delivery)

    async def _judge(self, delivery: Delivery) -> None:
        """Count the outcome; remove a client failing too long; apply the send's verdict."""
        notification = delivery.notification
        assert isinstance(notification, TrainingNotification)  # noqa: S101 - callers check
        training_id: UUID = notification.training_uuid
        record: OutcomeRecord = await self._call_on(
            self._outcomes,
            "record_outcome",
            training_id,
            delivery.send_id,
            max(delivery.send_size, 1),
            delivery.receiver.id,
            delivery.outcome,
        )
        policy = self.policy
        if (
            delivery.outcome is Outcome.FAILED
            and policy.remove_after is not None
            and record.consecutive_failures >= policy.remove_after
        ):
            await self._remove(
                delivery,
                f"unreachable for {record.consecutive_failures} notifications in a row",
            )
        verdict = policy.verdict(record.tally)
        if verdict is Verdict.OPEN:
            return
        if not await self._call_on(self._outcomes, "claim_verdict", delivery.send_id):
            return  # decided already, here or on another worker
        explanation = policy.explain(record.tally)
        context = delivery.log_context()
        if verdict is Verdict.ERROR:
            logger.error(
                "%s of training %s: %s.",
                notification.notification_type.value,
                training_id,
                explanation,
                extra=context,
            )
            await self._call("set_state", training_id, TrainingState.ERROR)
        else:
            logger.info(
                "%s of training %s: %s.",
                notification.notification_type.value,
                training_id,
                explanation,
                extra=context,
            )

    async def _remove(self, delivery: Delivery, reason: str) -> None:
        """Remove the receiver from the training and tell it (and the actor), best effort."""
        notification = delivery.notification
        assert isinstance(notification, TrainingNotification)  # noqa: S101 - callers check
        training_id: UUID = notification.training_uuid
        logger.warning(
            "Removing %s from training %s: %s.",
            delivery.receiver.id,
            training_id,
            reason,
            extra=delivery.log_context(),
        )
        removed = await self._call("remove_participant", training_id, delivery.receiver.id)
        if removed is False:  # removed already (another send, or these callbacks run again)
            logger.debug(
                "%s had left training %s already; it is not told again.",
                delivery.receiver.id,
                training_id,
                extra=delivery.log_context(),
            )
            return
        if self.sender is None or not self.tell_removed:
            return
        try:
            snapshot = await self._call("get_training", training_id)
            notice = ClientRemovedNotification.from_training(
                snapshot, client=delivery.receiver, reason=reason
            )
            # cut at tell_timeout: a quiet polling client finds the notice in its mailbox
            # when it comes back (the engine tells the hooks that the send ended)
            await asyncio.wait_for(self.sender.asend(notice, _Quiet()), self.tell_timeout)
        except Exception:  # best effort: telling never changes the training
            logger.warning(
                "Could not tell %s it was removed.",
                delivery.receiver.id,
                exc_info=True,
                extra=delivery.log_context(),
            )

    async def _call(self, name: str, *args: object) -> Any:
        return await self._call_on(self.repository, name, *args)

    @staticmethod
    async def _call_on(target: object, name: str, *args: object) -> Any:
        method = getattr(target, name)
        if inspect.iscoroutinefunction(method):
            return await method(*args)
        return await asyncio.to_thread(method, *args)


@attrs.define
class CallbackRegistry:
    """Which callbacks a notification class gets when a send names none.

    One registry belongs to each [`Settings`][flnotify.Settings] (no module global):
    [`default_callback_registry`][flnotify.callbacks.default_callback_registry] gives the round-type
    notifications [`TrainingCallbacks`][flnotify.TrainingCallbacks]; register your own
    classes on a registry you pass in ``Settings(default_callbacks=...)``. A class's entry covers
    its subclasses (looked up along the MRO).
    """

    _factories: dict[type[Notification[Any]], CallbackFactory] = attrs.field(
        factory=dict, alias="factories"
    )

    def register(
        self, notification_class: type[Notification[Any]], factory: CallbackFactory | None
    ) -> None:
        """Give a notification class (and its subclasses) default callbacks, or take them away.

        Args:
            notification_class: The class, e.g. a notification type of your own.
            factory: Builds the callbacks from the driver's repository; ``None`` removes
                the class's entry.
        """
        if factory is None:
            self._factories.pop(notification_class, None)
        else:
            self._factories[notification_class] = factory

    def for_notification(
        self,
        notification: Notification[Any],
        repository: TrainingRepository | AsyncTrainingRepository | None,
        *,
        policy: FailurePolicy | None = None,
        sender: NotificationSender | None = None,
    ) -> Callbacks | None:
        """The callbacks a driver uses for ``notification`` when it is given none.

        [`TrainingCallbacks`][flnotify.TrainingCallbacks] entries are built with ``policy``
        and ``sender``; other factories get the repository. Without a repository there are
        none.
        """
        if repository is None:
            return None
        for cls in type(notification).__mro__:
            factory = self._factories.get(cls)
            if factory is TrainingCallbacks:
                return TrainingCallbacks(
                    repository, policy=policy or FailurePolicy(), sender=sender
                )
            if factory is not None:
                return factory(repository)
        return None


def default_callback_registry() -> CallbackRegistry:
    """A new registry with the round-type notifications' defaults.

    Update round, SWAG round and model test get
    [`TrainingCallbacks`][flnotify.TrainingCallbacks]; nothing else has defaults.
    """
    return CallbackRegistry(
        {
            TrainingRoundStartNotification: TrainingCallbacks,
            TrainingSWAGRoundStartNotification: TrainingCallbacks,
            TrainingModelTestNotification: TrainingCallbacks,
        }
    )


def default_callbacks_for(
    notification: Notification[Any],
    repository: TrainingRepository | AsyncTrainingRepository | None,
    *,
    policy: FailurePolicy | None = None,
    sender: NotificationSender | None = None,
) -> Callbacks | None:
    """The default registry's callbacks for ``notification``.

    See [`CallbackRegistry.for_notification`][flnotify.callbacks.CallbackRegistry.for_notification].
    """
    return default_callback_registry().for_notification(
        notification, repository, policy=policy, sender=sender
    )
