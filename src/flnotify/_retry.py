"""Retry decisions, written once and shared by every way of delivering (in-process, Celery).

Nothing here does I/O or sleeps: [`RetryPolicy.decide`][] looks at one attempt's result
and says "this is final" or "try again after so many seconds".
"""

from __future__ import annotations

import email.utils
import enum
import random
import time
from collections.abc import Callable, Mapping

import attrs

from ._exceptions import TransportError
from ._validators import at_least_one, fraction, non_negative
from .transports._base import HttpResponse

__all__ = ["Decision", "Outcome", "RetryPolicy", "parse_retry_after"]


class Outcome(enum.Enum):
    """How a delivery to one receiver ended."""

    DELIVERED = "delivered"
    """Any 2xx answer."""
    REJECTED = "rejected"
    """A non-2xx answer that is not retryable: the client said no."""
    FAILED = "failed"
    """A transport error, or a retryable status still failing when the budget ran out."""


@attrs.frozen
class Decision:
    """What to do after one attempt: stop with ``outcome``, or retry after ``delay`` seconds."""

    outcome: Outcome | None
    delay: float = 0.0

    @property
    def retry(self) -> bool:
        """Whether another attempt should follow."""
        return self.outcome is None


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
                return Decision(Outcome.DELIVERED)
            if status not in self.retry_statuses:
                return Decision(Outcome.REJECTED)
            if attempt >= self.max_attempts:
                return Decision(Outcome.FAILED)
            delay = self.backoff(attempt, rng)
            asked = parse_retry_after(response.headers, now)
            if asked is not None:
                delay = max(delay, min(asked, self.max_retry_after))
            return Decision(None, delay)
        if error is None or not error.retryable or attempt >= self.max_attempts:
            return Decision(Outcome.FAILED)
        return Decision(None, self.backoff(attempt, rng))


def parse_retry_after(
    headers: Mapping[str, str], now: Callable[[], float] | None = None
) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or HTTP date), if any."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    current = (now or time.time)()
    return max(0.0, when.timestamp() - current)
