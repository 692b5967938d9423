"""HTTP details both sides read the same way: the ``Retry-After`` header (RFC 9110)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping

__all__ = ["parse_retry_after"]

_MAX_DIGITS = 12  # about 31,000 years of seconds; anything longer is nonsense, not a delay


def parse_retry_after(
    headers: Mapping[str, str], now: Callable[[], float] | None = None
) -> float | None:
    """Seconds asked for by a ``Retry-After`` header, or ``None`` if absent or invalid.

    RFC 9110 section 10.2.3: either delay-seconds (ASCII digits only) or an HTTP-date.
    Anything else (signs, fractions, other scripts' digits, a date without a zone) counts
    as absent, never as an error.
    """
    value = headers.get("retry-after")
    if not isinstance(value, str):
        return None
    value = value.strip(" \t")
    if not value or not value.isascii():
        return None
    if value.isdigit():
        return float(value) if len(value) <= _MAX_DIGITS else None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            return None
        current = (now or time.time)()
        return max(0.0, when.timestamp() - current)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
