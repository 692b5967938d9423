"""Retry decisions, written once and used by the delivery core that every driver runs.

Nothing here does I/O or sleeps: [`RetryPolicy.decide`][flnotify.RetryPolicy.decide] looks
at one attempt's result and says "this is final" or "try again after so many seconds".
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from ._exceptions import TransportError
from ._http import parse_retry_after
from ._types import HttpResponse, Outcome
from ._validators import at_least_one, fraction, non_negative

__all__ = ["Decision", "RetryPolicy", "parse_retry_after"]


@attrs.frozen
class Decision:
    """What to do after one attempt: stop with ``outcome``, or retry after ``delay`` seconds."""

    outcome: Outcome | None
    delay: float = 0.0


_DELIVERED = Decision(Outcome.DELIVERED)
_REJECTED = Decision(Outcome.REJECTED)
_FAILED = Decision(Outcome.FAILED)


@attrs.frozen
class RetryPolicy:
    """When and how soon a delivery is tried again.

    The delay before attempt ``n + 1`` is ``initial_backoff * multiplier ** (n - 1)``, capped at
    ``max_backoff``, then reduced by up to ``jitter`` of itself at random (so that thousands of
    retries do not arrive together). A ``Retry-After`` answer (seconds or an HTTP date) raises
    the delay to what the client asked, capped at ``max_retry_after``.

    Args:
        max_attempts: Attempts in all, the first included (6: the original's 1 + 5 retries).
        initial_backoff: Delay after the first failed attempt, in seconds.
        multiplier: Growth of the delay per attempt.
        max_backoff: Upper bound of a computed delay.
        jitter: Fraction of the delay that is randomised away (0 = none, 1 = full jitter).
        retry_statuses: Statuses that are retried; any other non-2xx is a rejection.
        max_retry_after: Upper bound for a delay asked for by ``Retry-After``.
    """

    max_attempts: int = attrs.field(default=6, validator=at_least_one)
    initial_backoff: float = attrs.field(default=0.5, validator=non_negative)
    multiplier: float = attrs.field(default=2.0, validator=non_negative)
    max_backoff: float = attrs.field(default=30.0, validator=non_negative)
    jitter: float = attrs.field(default=0.5, validator=fraction)
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({429, 502, 503, 504}), converter=frozenset
    )
    max_retry_after: float = attrs.field(default=60.0, validator=non_negative)

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
            if status not in self.retry_statuses:
                return _REJECTED
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
