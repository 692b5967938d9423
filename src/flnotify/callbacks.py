"""What happens after each delivery: callbacks, the training defaults, and who gets which.

A callback object has ``on_success`` and ``on_error``; each may be a plain function or a
coroutine function. Every driver calls exactly one of them exactly once per receiver, with
the frozen [`Delivery`][flnotify.Delivery] for that receiver. A callback that raises is
logged at ERROR, kept on the report as a [`CallbackError`][flnotify.errors.CallbackError], and does
not disturb other deliveries.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from fractions import Fraction
from typing import Any, Protocol, Union
from uuid import UUID, uuid5

import attrs

from ._exceptions import (
    AnswerError,
    CallbackError,
    ConfigurationError,
    RepositoryBusyError,
    TransportError,
)
from ._notification import Notification, TrainingNotification
from ._report import Delivery
from ._seams import current_seams
from ._training import (
    ClientRemovedNotification,
    TrainingModelTestNotification,
    TrainingRoundStartNotification,
    TrainingSWAGRoundStartNotification,
)
from ._types import Outcome, TrainingSnapshot, TrainingState
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
    "BUSY_RETRY_DELAYS",
    "BUSY_RETRY_FOR",
    "CallbackFactory",
    "CallbackRegistry",
    "NotificationSender",
    "Reaction",
    "TrainingOptions",
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


BUSY_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0)
"""Seconds before each new try of a callback that failed on a busy repository."""
BUSY_RETRY_FOR = 5.0
"""Seconds from the first busy failure after which a callback is not tried again."""


def call_callbacks(
    callbacks: Callbacks,
    delivery: Delivery,
    *,
    sleep: Callable[[float], Awaitable[object]] | None = None,
    clock: Callable[[], float] | None = None,
) -> CallbackError | Coroutine[Any, Any, CallbackError | None] | None:
    """Call the right method of ``callbacks`` for ``delivery``; never raise.

    A sync method is done when this returns; an async one returns a coroutine to await
    (the engine runs several at once, so slow callbacks such as telling a removed client
    overlap).

    A callback that fails with [`RepositoryBusyError`][flnotify.errors.RepositoryBusyError] (the
    repository was busy for now) is called again after ``BUSY_RETRY_DELAYS`` (0.05 s,
    doubling up to 1 s), for at most ``BUSY_RETRY_FOR`` seconds from its first failure,
    before it is reported. The coroutine returned then does the waiting.

    Args:
        callbacks: Whose method to call.
        delivery: The receiver's final delivery.
        sleep: Awaited between tries; the engine passes its own (tests fake it).
        clock: Measures the tries' time; the engine passes its own.

    Returns:
        ``None``, the [`CallbackError`][flnotify.errors.CallbackError] (logged at ERROR with the
        receiver and training) when the callback raised, or a coroutine that returns one
        of the two.
    """
    method = callbacks.on_success if delivery.ok else callbacks.on_error
    try:
        result = method(delivery)
    except RepositoryBusyError as exc:
        return _again(method, delivery, exc, sleep, clock)
    except Exception as exc:
        return _failed(method, delivery, exc)
    if result is not None and inspect.isawaitable(result):  # a sync one is done: no check
        return _finish(method, delivery, result, sleep, clock)
    return None


async def _finish(
    method: Callable[[Delivery], object],
    delivery: Delivery,
    result: Awaitable[object],
    sleep: Callable[[float], Awaitable[object]] | None,
    clock: Callable[[], float] | None,
) -> CallbackError | None:
    try:
        await result
    except RepositoryBusyError as exc:
        return await _again(method, delivery, exc, sleep, clock)
    except Exception as exc:
        return _failed(method, delivery, exc)
    return None


async def _again(
    method: Callable[[Delivery], object],
    delivery: Delivery,
    busy: RepositoryBusyError,
    sleep: Callable[[float], Awaitable[object]] | None,
    clock: Callable[[], float] | None,
) -> CallbackError | None:
    """Call ``method`` again while the repository is busy: backoff, a few seconds in all."""
    seams = current_seams()
    sleep = seams.sleep if sleep is None else sleep
    clock = seams.clock if clock is None else clock
    first = clock()
    tries = 1
    for delay in BUSY_RETRY_DELAYS:
        if clock() - first + delay > BUSY_RETRY_FOR:
            break
        if tries == 1:
            logger.warning(
                "The callback %s found the repository busy for receiver %s (%s); trying "
                "again for up to %.0f s.",
                _name(method),
                delivery.receiver.id,
                busy,
                BUSY_RETRY_FOR,
                extra=delivery.log_context(),
            )
        await sleep(delay)
        tries += 1
        try:
            result = method(delivery)
            if inspect.isawaitable(result):
                await result
        except RepositoryBusyError as exc:
            busy = exc
            continue
        except Exception as exc:
            return _failed(method, delivery, exc)
        return None
    return _failed(method, delivery, busy, f" ({tries} tries over {clock() - first:.1f} s)")


async def run_callbacks(
    callbacks: Callbacks,
    delivery: Delivery,
    *,
    sleep: Callable[[float], Awaitable[object]] | None = None,
    clock: Callable[[], float] | None = None,
) -> CallbackError | None:
    """Call the right method of ``callbacks`` for ``delivery`` and wait for it; never raise.

    A callback that fails on a busy repository is tried again first, as by
    [`call_callbacks`][flnotify.callbacks.call_callbacks] (which takes the same arguments).

    Returns:
        ``None``, or the [`CallbackError`][flnotify.errors.CallbackError] (logged at ERROR with
        the receiver and training) when the callback raised.
    """
    called = call_callbacks(callbacks, delivery, sleep=sleep, clock=clock)
    if called is None or isinstance(called, CallbackError):
        return called
    return await called


def _failed(
    method: Callable[..., object], delivery: Delivery, exc: Exception, tried: str = ""
) -> CallbackError:
    """The error of a callback that raised, logged at ERROR; ``tried`` tells of retries."""
    name = _name(method)
    context = delivery.log_context()
    logger.exception(
        "The callback %s failed for receiver %s of training %s: %s%s",
        name,
        delivery.receiver.id,
        context["training_id"] or "-",
        exc,
        tried,
        exc_info=exc,
        extra=context,
    )
    error = CallbackError(
        f"callback {name} failed for receiver {delivery.receiver.id}: "
        f"{type(exc).__name__}: {exc}{tried}",
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
    fewer were delivered than ``min_delivered``, or than ``min_delivered_fraction`` of the
    receivers that did not say no (a rejecting client is removed, so it leaves the
    fraction; it never counts as failed). A training also goes to ``ERROR`` when removals
    leave it fewer than ``min_participants`` participants. The default is the original
    platform's strict rule: one failure puts the training into ``ERROR``.
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
        min_participants: Participants a training must keep: a removal that leaves fewer
            puts it into ``ERROR`` (never a silent empty training).
        tell_removed: Whether the default callbacks send ``CLIENT_REMOVED`` to a client
            they removed (and to the actor): off for the strict default, so a platform
            moving from the original sees no new traffic until it asks; on for
            [`tolerant`][flnotify.FailurePolicy.tolerant].
    """

    max_failures: int | None = attrs.field(default=0)
    min_delivered: int = attrs.field(default=0)
    min_delivered_fraction: float = attrs.field(default=0.0)
    remove_after: int | None = attrs.field(default=None)
    min_participants: int = attrs.field(default=1)
    tell_removed: bool = attrs.field(default=False)

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
        _count(self.min_participants, "min_participants")
        if not isinstance(self.tell_removed, bool):
            msg = f"FailurePolicy.tell_removed must be True or False, got {self.tell_removed!r}"
            raise ConfigurationError(msg)
        if self.remove_after == 0:
            msg = "FailurePolicy.remove_after must be >= 1 or None, got 0"
            raise ConfigurationError(msg)

    @classmethod
    def strict(cls) -> FailurePolicy:
        """Any failure puts the training into ``ERROR`` (the default)."""
        return cls()

    @classmethod
    def tolerant(
        cls,
        *,
        min_delivered_fraction: float = 0.5,
        remove_after: int | None = 3,
        min_participants: int = 1,
        tell_removed: bool = True,
    ) -> FailurePolicy:
        """No limit on failures as long as enough receivers are delivered; remove the dead.

        Removed clients are told (``CLIENT_REMOVED``) unless ``tell_removed=False``.
        """
        return cls(
            max_failures=None,
            min_delivered_fraction=min_delivered_fraction,
            remove_after=remove_after,
            min_participants=min_participants,
            tell_removed=tell_removed,
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

    @property
    def decides_alone(self) -> bool:
        """Whether each outcome is judged on its own (one failure puts the training in ERROR).

        Then a send delivered in parts is judged right by each part; any other policy
        judges a send from the counts of all its receivers.
        """
        return self.max_failures == 0 and not self.counts_deliveries

    def verdict(self, tally: SendTally) -> Verdict:
        """Judge a send from its counts so far; ``ERROR`` or ``FINE`` as soon as it is certain.

        The share is of the receivers that did not say no: a rejection can only shrink
        the base of the fraction, never count against it.
        """
        pending = tally.pending
        best = tally.delivered + pending  # delivered if every pending receiver delivers
        limit = self.max_failures
        base = tally.total - tally.rejected  # pending ones may still reject: a lower bound
        if (
            (limit is not None and tally.failed > limit)
            or best < self.min_delivered
            or self._short_of_share(best, base)
        ):
            return Verdict.ERROR
        if pending == 0:
            return Verdict.FINE
        worst = tally.failed + pending  # failed if every pending receiver fails
        if (
            (limit is None or worst <= limit)
            and tally.delivered >= self.min_delivered
            and not self._short_of_share(tally.delivered, base)
        ):
            return Verdict.FINE
        return Verdict.OPEN

    def wanted(self) -> str:
        """What the policy asks of a send, in words."""
        rules = []
        if self.max_failures is not None:
            rules.append(f"at most {self.max_failures} failed")
        if self.min_delivered:
            rules.append(f"at least {self.min_delivered} delivered")
        if self.min_delivered_fraction:
            rules.append(
                f"at least {self.min_delivered_fraction:.0%} of those that did not say no delivered"
            )
        return " and ".join(rules) or "nothing"

    def explain(self, tally: SendTally) -> str:
        """The verdict in a sentence, with the counts that led to it (and what is pending)."""
        verdict = self.verdict(tally)
        counts = (
            f"{tally.delivered} delivered, {tally.rejected} rejected, {tally.failed} failed "
            f"of {tally.total}"
        )
        if tally.pending:
            counts += f", {tally.pending} still pending"
        wanted = self.wanted()
        if verdict is Verdict.ERROR:
            return f"{counts}: the policy asks {wanted}, so the training goes to ERROR"
        if verdict is Verdict.FINE:
            return f"{counts}: the policy ({wanted}) is met, the training goes on"
        return f"{counts}: not decided yet ({wanted})"


class NotificationSender(Protocol):
    """What tells a removed client: anything with a Notifier's ``asend``.

    The drivers pass their [`Notifier`][flnotify.Notifier].
    """

    async def asend(
        self,
        notification: Notification[Any],
        callbacks: Callbacks | None,
        *,
        message_ids: Sequence[str] | None = None,
    ) -> Any:
        """Deliver ``notification``, under ``message_ids`` (one per receiver) when given."""
        ...


class _Quiet:
    """Callbacks of a CLIENT_REMOVED notice: its outcome never removes or errors anything."""

    def on_success(self, delivery: Delivery, /) -> None:
        logger.debug("Told %s it was removed.", delivery.receiver.id, extra=delivery.log_context())

    def on_error(self, delivery: Delivery, /) -> None:
        if delivery.outcome is Outcome.REJECTED:  # e.g. a client that does not know the type
            logger.debug(
                "%s did not take CLIENT_REMOVED (answered %s); it was not told.",
                delivery.receiver.id,
                delivery.status_code,
                extra=delivery.log_context(),
            )
            return
        logger.info(
            "Could not tell %s it was removed: %s.",
            delivery.receiver.id,
            delivery.describe(),
            extra=delivery.log_context(),
        )


@attrs.define
class _SendNotes:
    """What one callbacks object saw of one send: its outcomes, why some failed, its verdict."""

    total: int
    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    reasons: collections.Counter[str] = attrs.field(factory=collections.Counter)
    first: str = ""  # the first failure, described
    decided: tuple[Verdict, int] | None = None  # the verdict and what was pending then

    @property
    def seen(self) -> int:
        return self.delivered + self.rejected + self.failed

    def add(self, delivery: Delivery) -> None:
        outcome = delivery.outcome
        if outcome is Outcome.DELIVERED:
            self.delivered += 1
        elif outcome is Outcome.REJECTED:
            self.rejected += 1
        else:
            self.failed += 1
            self.reasons[_failure_reason(delivery)] += 1
            if not self.first:
                redirect = delivery.redirect
                self.first = f"{delivery.receiver.id} ({delivery.receiver.message_endpoint})" + (
                    f" redirecting to {redirect}" if redirect else ""
                )

    def tally(self) -> SendTally:
        return SendTally(self.total, self.delivered, self.rejected, self.failed)

    def merged(self, shared: SendTally) -> SendTally:
        """The larger of each count: seen here, or recorded with the training."""
        return SendTally(
            self.total,
            max(self.delivered, shared.delivered),
            max(self.rejected, shared.rejected),
            max(self.failed, shared.failed),
        )

    def why(self) -> str:
        """The failures by reason, most common first, and the first one in full."""
        if not self.reasons:
            return ""
        parts = [f"{n} {reason}" for reason, n in self.reasons.most_common(3)]
        return f"failed: {', '.join(parts)}; first: {self.first}"


def _failure_reason(delivery: Delivery) -> str:
    """A failure's cause in a few words, the same for every receiver failing the same way.

    An answer naming the sending side's mistake says what to check (the signing secret,
    the endpoint); a transport error says its kind.
    """
    error = delivery.error
    if isinstance(error, AnswerError):
        return f"answered {error.status} ({error.hint})"
    if isinstance(error, TransportError):
        return f"{error.kind.value} error"
    if delivery.status_code is not None:
        return f"still answering {delivery.status_code} after {delivery.attempts} attempt(s)"
    return "failed"


@attrs.define
class TrainingCallbacks:
    """The default callbacks of the round-type notifications.

    Rejected: the client is removed from the training (warning logged), and told so where
    the policy says (``tell_removed``). Failed: the failure counts toward the send's
    [`FailurePolicy`][flnotify.FailurePolicy], which decides once per send whether the
    training goes to ``ERROR`` (strict by default: any failure does) and says why in one
    line with the counts of the whole send; with ``remove_after`` a client failing that
    many notifications in a row is removed. A removal that leaves fewer than
    ``min_participants`` puts the training into ``ERROR``. Delivered: counted where the
    policy needs it. Works with a sync
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
        tell_removed: Whether removed clients are told; ``None`` (the default): as the
            policy says (off for the strict default, on for tolerant policies).
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
    tell_removed: bool | None = None
    tell_timeout: float = attrs.field(default=10.0, validator=positive)
    _outcomes: Any = attrs.field(init=False, repr=False)
    _notes: dict[str, _SendNotes] = attrs.field(init=False, repr=False, factory=dict)
    _told: set[tuple[UUID, UUID, int]] = attrs.field(init=False, repr=False, factory=set)

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

    @property
    def judges_parts(self) -> bool:
        """Whether a send delivered in parts is judged once and right by these callbacks.

        Parts are Celery chunks and deferred retries, outbox batches, adopted mailbox
        messages: each is a run of its own, maybe in another process. They are judged right
        when the repository keeps the counts
        ([`OutcomeTracking`][flnotify.repository.OutcomeTracking]) or when the policy judges
        each outcome on its own.
        """
        return (
            self._outcomes is self.repository
            or self.on_failed is not Reaction.SET_ERROR
            or self.policy.decides_alone
        )

    def on_success(self, delivery: Delivery, /) -> Awaitable[None] | None:
        """Count the delivery where the policy needs it; log at debug level."""
        if logger.isEnabledFor(logging.DEBUG):  # its context is not built for nothing
            logger.debug("Delivered to %s.", delivery.receiver.id, extra=delivery.log_context())
        self._note(delivery)
        if self.policy.counts_deliveries and self.on_failed is Reaction.SET_ERROR:
            return self._judge(delivery)
        self._close(delivery)
        return None

    async def on_error(self, delivery: Delivery, /) -> None:
        """Apply the configured reaction, and the policy to a failure."""
        self._note(delivery)
        try:
            await self._react(delivery)
        finally:
            self._close(delivery)

    async def _react(self, delivery: Delivery) -> None:
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
            await _repository_call(
                self.repository.set_state, notification.training_uuid, TrainingState.ERROR
            )
        if self.on_failed is Reaction.SET_ERROR and (
            not rejected or self.policy.counts_deliveries
        ):  # the policy judges the send: failures always, the others where it counts them
            await self._judge(delivery)

    async def _judge(self, delivery: Delivery) -> None:
        """Count the outcome; remove a client failing too long; apply the send's verdict."""
        notification = delivery.notification
        assert isinstance(notification, TrainingNotification)  # noqa: S101 - callers check
        training_id: UUID = notification.training_uuid
        record: OutcomeRecord = await _repository_call(
            self._outcomes.record_outcome,
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
        tally = record.tally
        verdict = policy.verdict(tally)
        if verdict is Verdict.OPEN:
            return
        if verdict is Verdict.ERROR:
            # before the claim, and idempotent: a callback tried again (busy repository)
            # or run again (after a crash) after the claim still applies it
            await _repository_call(self.repository.set_state, training_id, TrainingState.ERROR)
        if not await _repository_call(self._outcomes.claim_verdict, delivery.send_id):
            return  # decided already, here or on another worker
        notes = self._notes.get(delivery.send_id)
        why = ""
        if notes is not None:  # the shared counts may skip deliveries; this saw them all
            tally = notes.merged(tally)
            notes.decided = (verdict, tally.pending)
            why = notes.why()
        self._say(delivery, verdict, tally, tally.pending, why)

    def _say(
        self,
        delivery: Delivery,
        verdict: Verdict,
        tally: SendTally,
        pending: int,
        why: str,
    ) -> None:
        """The verdict line: the counts of the send, what was pending, and why it failed."""
        notification = delivery.notification
        assert isinstance(notification, TrainingNotification)  # noqa: S101 - callers check
        counts = (
            f"{tally.delivered} delivered, {tally.rejected} rejected, {tally.failed} failed"
            f" of {tally.total}"
        )
        wanted = self.policy.wanted()
        went = "went to ERROR" if verdict is Verdict.ERROR else "goes on"
        log = logger.error if verdict is Verdict.ERROR else logger.info
        if pending and tally.pending:  # said at once; the whole send is said when it is in
            line = (
                f"{counts} so far, {pending} still pending: that is certain to break the"
                f" policy ({wanted}), so the training {went}"
                if verdict is Verdict.ERROR
                else f"{counts} so far, {pending} still pending: the policy ({wanted}) is"
                " met whatever they do, the training goes on"
            )
        elif pending:  # the whole send, after an early verdict
            log = logger.info
            line = (
                f"{counts} in all; the verdict (the training {went}) was certain with"
                f" {pending} still pending ({wanted})"
            )
        elif verdict is Verdict.ERROR:
            line = f"{counts}: the policy asks {wanted}, so the training went to ERROR"
        else:
            line = f"{counts}: the policy ({wanted}) is met, the training goes on"
        if why and verdict is Verdict.ERROR:
            line += f"; {why}"
        log(
            "%s of training %s: %s.",
            notification.notification_type.value,
            notification.training_uuid,
            line,
            extra=delivery.log_context(),
        )

    def _note(self, delivery: Delivery) -> None:
        """Count the outcome for this send's line (every outcome, locally, no I/O)."""
        if self.on_failed is not Reaction.SET_ERROR or not isinstance(
            delivery.notification, TrainingNotification
        ):
            return
        notes = self._notes.get(delivery.send_id)
        if notes is None:
            notes = self._notes[delivery.send_id] = _SendNotes(max(delivery.send_size, 1))
        notes.add(delivery)

    def _close(self, delivery: Delivery) -> None:
        """Once every outcome of the send was seen here, say the verdict decided early."""
        notes = self._notes.get(delivery.send_id)
        if notes is None or notes.seen < notes.total:
            return
        del self._notes[delivery.send_id]
        if notes.decided is not None and notes.decided[1]:  # decided early: now all of it
            verdict, pending = notes.decided
            self._say(delivery, verdict, notes.tally(), pending, notes.why())

    async def _remove(self, delivery: Delivery, reason: str) -> None:
        """Tell the receiver (and the actor) it is removed, best effort; then remove it.

        Telling comes first, under message ids fixed by (training, client, round): a crash
        between the two tells again when the callbacks run again, and receivers drop the
        repeat by its ``webhook-id``; a crash after the removal finds the client gone, told.
        """
        notification = delivery.notification
        assert isinstance(notification, TrainingNotification)  # noqa: S101 - callers check
        training_id: UUID = notification.training_uuid
        client = delivery.receiver
        logger.warning(
            "Removing %s from training %s: %s.",
            client.id,
            training_id,
            reason,
            extra=delivery.log_context(),
        )
        tell = self.policy.tell_removed if self.tell_removed is None else self.tell_removed
        sender = self.sender if tell else None
        if sender is not None:
            snapshot = await _repository_call(self.repository.get_training, training_id)
            if any(p.id == client.id for p in snapshot.participants):
                await self._tell(sender, snapshot, delivery, reason)
        removed = await _repository_call(self.repository.remove_participant, training_id, client.id)
        if removed is False:  # removed already (another send, or these callbacks run again)
            logger.debug(
                "%s had left training %s already.",
                client.id,
                training_id,
                extra=delivery.log_context(),
            )
            return
        snapshot = await _repository_call(self.repository.get_training, training_id)
        left, needed = len(snapshot.participants), self.policy.min_participants
        if left < needed:
            logger.error(
                "Training %s has %d participant(s) left after removing %s (%s); the failure"
                " policy needs at least %d, so the training goes to ERROR.",
                training_id,
                left,
                client.id,
                reason,
                needed,
                extra=delivery.log_context(),
            )
            await _repository_call(self.repository.set_state, training_id, TrainingState.ERROR)

    async def _tell(
        self,
        sender: NotificationSender,
        snapshot: TrainingSnapshot,
        delivery: Delivery,
        reason: str,
    ) -> None:
        """Send CLIENT_REMOVED once per (training, client, round) from these callbacks."""
        client = delivery.receiver
        key = (snapshot.id, client.id, snapshot.round)
        if key in self._told:  # told already here (a busy repository's retry, say)
            return
        self._told.add(key)
        try:
            notice = ClientRemovedNotification.from_training(snapshot, client=client, reason=reason)
            ids = removal_message_ids(notice, snapshot.round)
            # cut at tell_timeout: a quiet polling client finds the notice in its mailbox
            # when it comes back (the engine tells the hooks that the send ended)
            sending = sender.asend(notice, _Quiet(), message_ids=ids)
            await asyncio.wait_for(sending, self.tell_timeout)
        except asyncio.TimeoutError:
            logger.info(
                "Telling %s it was removed took over %g s; not waited for.",
                client.id,
                self.tell_timeout,
                extra=delivery.log_context(),
            )
        except Exception:  # best effort: telling never changes the training
            logger.warning(
                "Could not tell %s it was removed.",
                client.id,
                exc_info=True,
                extra=delivery.log_context(),
            )


def removal_message_ids(notice: ClientRemovedNotification, round_: int) -> list[str]:
    """The ``webhook-id`` of a CLIENT_REMOVED notice to each of its receivers.

    Fixed by the training, the removed client, the round and the receiver: the notice sent
    again (the callbacks run again after a crash, or two sends remove the same client at
    once) carries the same ids, so each receiver acts on it once.
    """
    base = f"{notice.training_uuid}/{notice.body.client_uuid}/{round_}"
    return [f"msg_{uuid5(_REMOVAL_IDS, f'{base}/{r.id}').hex}" for r in notice.receivers]


_REMOVAL_IDS = UUID("5d0c7f0e-4b8e-4d55-9a44-5f1c2a6b7e31")
"""The namespace of the CLIENT_REMOVED notices' message ids (UUID version 5)."""


async def _repository_call(method: Callable[..., Any], *args: object) -> Any:
    """Call a repository's method: awaited if async, else in a worker thread (never on the loop)."""
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
    training: TrainingOptions = attrs.field(factory=lambda: TrainingOptions())
    """How its [`TrainingCallbacks`][flnotify.TrainingCallbacks] entries react."""

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

    def gives(self, factory: CallbackFactory) -> bool:
        """Whether some notification class gets ``factory``'s callbacks."""
        return factory in self._factories.values()

    def training_callbacks(
        self,
        repository: TrainingRepository | AsyncTrainingRepository,
        policy: FailurePolicy | None = None,
        sender: NotificationSender | None = None,
    ) -> TrainingCallbacks:
        """[`TrainingCallbacks`][flnotify.TrainingCallbacks] with this registry's options."""
        options = self.training
        return TrainingCallbacks(
            repository,
            on_rejected=options.on_rejected,
            on_failed=options.on_failed,
            policy=policy or FailurePolicy(),
            sender=sender,
            tell_removed=options.tell_removed,
            tell_timeout=options.tell_timeout,
        )

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
                return self.training_callbacks(repository, policy, sender)
            if factory is not None:
                return factory(repository)
        return None


def refuse_parts_unjudged(callbacks: Callbacks | None, driver: str) -> None:
    """Refuse callbacks that would never judge a send ``driver`` delivers in parts.

    Raises:
        ConfigurationError: Saying what to add.
    """
    if isinstance(callbacks, TrainingCallbacks) and not callbacks.judges_parts:
        msg = (
            f"{driver} delivers a send in parts (each a run of its own), and "
            f"{callbacks.policy!r} judges a send from the counts of all its receivers, "
            f"but {type(callbacks.repository).__name__} does not keep them across runs: "
            "give the repository OutcomeTracking (record_outcome and claim_verdict, as "
            "SQLiteTrainingRepository and DjangoTrackingRepository have) or use "
            "FailurePolicy.strict()"
        )
        raise ConfigurationError(msg)


def refuse_split_sends_unjudged(
    registry: CallbackRegistry,
    repository: TrainingRepository | AsyncTrainingRepository | None,
    policy: FailurePolicy,
    driver: str,
) -> None:
    """At a splitting driver's construction: refuse defaults that would never judge a send.

    Raises:
        ConfigurationError: The registry gives notifications
            [`TrainingCallbacks`][flnotify.TrainingCallbacks] that could not judge a send
            delivered in parts with ``repository`` and ``policy``.
    """
    if repository is not None and registry.gives(TrainingCallbacks):
        refuse_parts_unjudged(registry.training_callbacks(repository, policy), driver)


def _must_be(kind: type[Any]) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """An attrs validator refusing anything but a ``kind``, with a typed error."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            msg = f"{attribute.name} must be {kind.__qualname__}, not {value!r}"
            raise ConfigurationError(msg)

    return check


@attrs.frozen
class TrainingOptions:
    """The options of the default [`TrainingCallbacks`][flnotify.TrainingCallbacks].

    One value, read by every driver (the [`Notifier`][flnotify.Notifier], Celery, the
    dispatchers) through the settings' registry: see
    [`default_callback_registry`][flnotify.callbacks.default_callback_registry]. The
    failure policy and the sender come from the driver's settings.

    Raises:
        ConfigurationError: A value is of the wrong kind.
    """

    on_rejected: Reaction = attrs.field(
        default=Reaction.REMOVE_PARTICIPANT, validator=_must_be(Reaction)
    )
    on_failed: Reaction = attrs.field(default=Reaction.SET_ERROR, validator=_must_be(Reaction))
    tell_removed: bool | None = attrs.field(
        default=None, validator=attrs.validators.optional(_must_be(bool))
    )
    tell_timeout: float = attrs.field(default=10.0, validator=positive)


def default_callback_registry(
    *,
    on_rejected: Reaction = Reaction.REMOVE_PARTICIPANT,
    on_failed: Reaction = Reaction.SET_ERROR,
    tell_removed: bool | None = None,
    tell_timeout: float = 10.0,
) -> CallbackRegistry:
    """A new registry with the round-type notifications' defaults.

    Update round, SWAG round and model test get
    [`TrainingCallbacks`][flnotify.TrainingCallbacks] with these options; nothing else
    has defaults. Every driver takes the registry the same way, as the
    ``default_callbacks`` field of [`Settings`][flnotify.Settings]::

        quiet = default_callback_registry(tell_removed=False, on_rejected=Reaction.LOG)
        Notifier(default_callbacks=quiet)
        CeleryDelivery(app, default_callbacks=quiet)

    Args:
        on_rejected: What a rejection does (remove the client by default).
        on_failed: What a failure does (``SET_ERROR``: the failure policy decides).
        tell_removed: Whether removed clients are sent ``CLIENT_REMOVED``; ``None``: as
            the failure policy says (``FailurePolicy.tell_removed``: off for the strict
            default, on for ``tolerant()``).
        tell_timeout: Seconds telling a removed client may hold up its callback.

    Raises:
        ConfigurationError: An option is of the wrong kind.
    """
    options = TrainingOptions(on_rejected, on_failed, tell_removed, tell_timeout)
    return CallbackRegistry(
        {
            TrainingRoundStartNotification: TrainingCallbacks,
            TrainingSWAGRoundStartNotification: TrainingCallbacks,
            TrainingModelTestNotification: TrainingCallbacks,
        },
        training=options,
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
