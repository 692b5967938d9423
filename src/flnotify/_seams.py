"""Time and chance as the engine sees them: real by default, replaceable in tests.

The engine never calls ``time.monotonic``, ``time.time``, ``asyncio.sleep`` or
``random.random`` itself: it takes one [`Seams`][flnotify._seams.Seams] value when it is
built. Users never pass one; tests switch fakes on with
[`flnotify.testing.seams`][flnotify.testing.seams], a context manager that restores the
real ones on the way out (stamina's ``set_testing`` is the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
from collections.abc import Awaitable, Callable, Iterator

import attrs

__all__ = ["REAL", "Seams", "current_seams", "using_seams"]


@attrs.frozen
class Seams:
    """The clocks, sleeper and random source an engine uses.

    Args:
        clock: Monotonic seconds, for ``elapsed`` and attempt durations.
        wall_clock: Epoch seconds, for ``webhook-timestamp`` and ``Retry-After`` dates.
        sleep: Awaited for each backoff.
        rng: Jitter source returning floats in [0, 1).
    """

    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
    rng: Callable[[], float] = random.random


REAL = Seams()
"""The real clocks, ``asyncio.sleep`` and ``random.random``."""

_CURRENT: contextvars.ContextVar[Seams] = contextvars.ContextVar("flnotify_seams", default=REAL)


def current_seams() -> Seams:
    """The seams an engine built now takes: the real ones unless a test switched fakes on."""
    return _CURRENT.get()


@contextlib.contextmanager
def using_seams(seams: Seams) -> Iterator[Seams]:
    """Engines built inside the ``with`` block take ``seams``; restored on the way out."""
    token = _CURRENT.set(seams)
    try:
        yield seams
    finally:
        _CURRENT.reset(token)
