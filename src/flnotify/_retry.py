"""Retry decisions and the table of answers, written once and used by every driver's core.

Nothing here does I/O or sleeps: [`RetryPolicy.decide`][flnotify.RetryPolicy.decide] looks
at one attempt's result and says "this is final" or "try again after so many seconds"; the
[`Classification`][flnotify.Classification] it holds says what each status means.
"""

from __future__ import annotations

import enum
import random
import types
from collections.abc import Callable, Mapping

import attrs

from ._exceptions import (
    AnswerError,
    AnswerErrorKind,
    ConfigurationError,
    FlnotifyError,
    TransportError,
)
from ._http import parse_retry_after
from ._types import HttpResponse, Outcome
from ._validators import at_least_one, fraction, non_negative

__all__ = [
    "Classification",
    "Decision",
    "RetryPolicy",
    "StatusMeaning",
    "parse_retry_after",
]


@attrs.frozen
class Decision:
    """What to do after one attempt: stop with ``outcome``, or retry after ``delay`` seconds.

    ``error`` says why a final answer failed when the status says the sending side is wrong
    (an [`AnswerError`][flnotify.errors.AnswerError]).
    """

    outcome: Outcome | None
    delay: float = 0.0
    error: FlnotifyError | None = None


class StatusMeaning(enum.Enum):
    """What one answer status means, in a [`Classification`][flnotify.Classification]."""

    DELIVERED = "delivered"
    """2xx (only 2xx, always): the client took the notification."""
    REJECTED = "rejected"
    """The client said no to this notification (round types: the client is removed)."""
    RETRY = "retry"
    """Try again later (backoff, ``Retry-After`` honoured); failed when the budget is spent."""
    FAILED = "failed"
    """Failed at once, without naming a mistake."""
    SIGNATURE_REFUSED = "signature_refused"
    """Failed: the client could not verify the signature (check the signing secret)."""
    REDIRECTED = "redirected"
    """Failed: the endpoint redirects (never followed; the ``Location`` is named)."""
    WRONG_ENDPOINT = "wrong_endpoint"
    """Failed: nothing takes notifications at the endpoint."""


_MISTAKES = {
    StatusMeaning.SIGNATURE_REFUSED: AnswerErrorKind.SIGNATURE,
    StatusMeaning.REDIRECTED: AnswerErrorKind.REDIRECT,
    StatusMeaning.WRONG_ENDPOINT: AnswerErrorKind.ENDPOINT,
}


def _frozen_map(value: Mapping[int, StatusMeaning]) -> Mapping[int, StatusMeaning]:
    return types.MappingProxyType(dict(value))


def _check_statuses(_: object, __: object, value: Mapping[int, StatusMeaning]) -> None:
    for status, meaning in value.items():
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            msg = f"Classification.statuses: {status!r} is not an HTTP status (100-599)"
            raise ConfigurationError(msg)
        _check_meaning(f"Classification.statuses[{status}]", status // 100, meaning)


def _check_families(_: object, __: object, value: Mapping[int, StatusMeaning]) -> None:
    for family, meaning in value.items():
        if family not in (1, 3, 4, 5):
            msg = (
                f"Classification.families: {family!r} is not a status family (1, 3, 4 or 5"
                " for 1xx, 3xx, 4xx, 5xx; 2xx is always delivered)"
            )
            raise ConfigurationError(msg)
        _check_meaning(f"Classification.families[{family}]", family, meaning)


def _check_meaning(where: str, family: int, meaning: object) -> None:
    if not isinstance(meaning, StatusMeaning):
        msg = f"{where} must be a StatusMeaning, got {meaning!r}"
        raise ConfigurationError(msg)
    if (family == 2) != (meaning is StatusMeaning.DELIVERED):
        msg = f"{where}: 2xx and only 2xx means DELIVERED, got {meaning.name}"
        raise ConfigurationError(msg)


_DEFAULT_STATUSES = {
    **dict.fromkeys((400, 409, 410, 422, 500), StatusMeaning.REJECTED),
    **dict.fromkeys((429, 502, 503, 504), StatusMeaning.RETRY),
    **dict.fromkeys((401, 403), StatusMeaning.SIGNATURE_REFUSED),
    **dict.fromkeys((404, 405), StatusMeaning.WRONG_ENDPOINT),
}
_DEFAULT_FAMILIES = {
    1: StatusMeaning.FAILED,
    3: StatusMeaning.REDIRECTED,
    4: StatusMeaning.REJECTED,
    5: StatusMeaning.REJECTED,
}


@attrs.frozen
class Classification:
    """What each answer status means: one value to read, and to replace.

    A status listed in ``statuses`` means what it says there; any other means what its
    family (``status // 100``) says in ``families``. 2xx is always delivered. The default,
    ``Classification()`` (docs/failures.md gives the reasons): 409, 410, 422, 400 and 500
    rejected (the client said no to this notification: 500 is what the reference client
    answers when its handler fails);
    429, 502, 503, 504 retried; 401 and 403 failed as a refused signature; 404 and 405
    failed as a wrong endpoint; every 3xx failed as a redirect; any other 4xx or 5xx
    rejected, as before.

    Args:
        statuses: Meanings of single statuses.
        families: Meanings of the families 1, 3, 4 and 5 for statuses not listed.
    """

    statuses: Mapping[int, StatusMeaning] = attrs.field(
        default=_DEFAULT_STATUSES, converter=_frozen_map, validator=_check_statuses, eq=False
    )
    families: Mapping[int, StatusMeaning] = attrs.field(
        default=_DEFAULT_FAMILIES, converter=_frozen_map, validator=_check_families, eq=False
    )
    _key: tuple[object, ...] = attrs.field(init=False, repr=False, eq=True)

    def __attrs_post_init__(self) -> None:
        key = (tuple(sorted(self.statuses.items())), tuple(sorted(self.families.items())))
        object.__setattr__(self, "_key", key)

    def meaning(self, status: int) -> StatusMeaning:
        """What ``status`` means."""
        if 200 <= status < 300:
            return StatusMeaning.DELIVERED
        meaning = self.statuses.get(status)
        if meaning is None:
            meaning = self.families.get(status // 100, StatusMeaning.REJECTED)
        return meaning

    @property
    def retryable(self) -> frozenset[int]:
        """The single statuses that are retried."""
        return frozenset(s for s, m in self.statuses.items() if m is StatusMeaning.RETRY)

    def with_statuses(self, statuses: Mapping[int, StatusMeaning]) -> Classification:
        """The table with the meanings of some statuses replaced (or added)."""
        return Classification({**self.statuses, **statuses}, self.families)


_DELIVERED = Decision(Outcome.DELIVERED)
_REJECTED = Decision(Outcome.REJECTED)
_FAILED = Decision(Outcome.FAILED)


@attrs.frozen
class RetryPolicy:
    """When and how soon a delivery is tried again.

    The defaults bound one receiver's way, whatever it does, to 90 s: 4 attempts of at
    most 15 s (``Timeouts.total``) and 3 waits of at most 10 s (docs/delivery.md).

    The delay before attempt ``n + 1`` is ``initial_backoff * multiplier ** (n - 1)``, capped at
    ``max_backoff``, then reduced by up to ``jitter`` of itself at random (so that thousands of
    retries do not arrive together). A ``Retry-After`` answer (seconds or an HTTP date) raises
    the delay to what the client asked, capped at ``max_retry_after``.

    Args:
        max_attempts: Attempts in all, the first included.
        initial_backoff: Delay after the first failed attempt, in seconds.
        multiplier: Growth of the delay per attempt.
        max_backoff: Upper bound of a computed delay.
        jitter: Fraction of the delay that is randomised away (0 = none, 1 = full jitter).
        max_retry_after: Upper bound for a delay asked for by ``Retry-After``.
        classification: What each answer status means (delivered, rejected, retried,
            failed); ``Classification()``, the table of docs/failures.md, by default.
    """

    max_attempts: int = attrs.field(default=4, validator=at_least_one)
    initial_backoff: float = attrs.field(default=1.0, validator=non_negative)
    multiplier: float = attrs.field(default=3.0, validator=non_negative)
    max_backoff: float = attrs.field(default=30.0, validator=non_negative)
    jitter: float = attrs.field(default=0.5, validator=fraction)
    max_retry_after: float = attrs.field(default=10.0, validator=non_negative)
    classification: Classification = attrs.field(
        factory=Classification,
        validator=attrs.validators.instance_of(Classification),
    )

    @property
    def retry_statuses(self) -> frozenset[int]:
        """The statuses that are retried (the classification's ``RETRY`` ones)."""
        return self.classification.retryable

    @classmethod
    def no_retries(cls) -> RetryPolicy:
        """One attempt only."""
        return cls(max_attempts=1)

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """The delay after failed attempt number ``attempt`` (1-based), jitter applied."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * rng())

    def decide(
        self,
        attempt: int,
        *,
        response: HttpResponse | None = None,
        error: TransportError | None = None,
        rng: Callable[[], float] = random.random,
        now: Callable[[], float] | None = None,
    ) -> Decision:
        """Classify attempt number ``attempt`` (1-based) from its response or its error.

        Args:
            attempt: Which attempt this was.
            response: The answer, when a status came back.
            error: The transport error, when none did.
            rng: Source of jitter in [0, 1).
            now: Wall clock (epoch seconds) for ``Retry-After`` HTTP dates.
        """
        if response is not None:
            status = response.status_code
            if 200 <= status < 300:
                return _DELIVERED
            meaning = self.classification.meaning(status)
            if meaning is not StatusMeaning.RETRY:
                return _final(meaning, response)
            if attempt >= self.max_attempts:
                return _FAILED
            delay = self.backoff(attempt, rng)
            asked = parse_retry_after(response.headers, now)
            if asked is not None:
                delay = max(delay, min(asked, self.max_retry_after))
            return Decision(None, delay)
        if error is None or not error.retryable or attempt >= self.max_attempts:
            return _FAILED
        return Decision(None, self.backoff(attempt, rng))


def _final(meaning: StatusMeaning, response: HttpResponse) -> Decision:
    """The decision of a status that is not retried."""
    if meaning is StatusMeaning.REJECTED:
        return _REJECTED
    kind = _MISTAKES.get(meaning)
    if kind is None:
        return _FAILED
    location = response.headers.get("location", "") if kind is AnswerErrorKind.REDIRECT else None
    return Decision(
        Outcome.FAILED, error=AnswerError(kind, response.status_code, location=location)
    )
