"""Which event loop flnotify creates when it needs one of its own: uvloop if installed.

flnotify runs its own loop in a few places: the sync bridge behind ``Notifier.send`` (and
the dispatchers' and Celery's blocking calls), ``MailboxPoller.run`` and ``flnotify listen``.
Those loops are uvloop's when ``uvloop`` is importable (``pip install flnotify[uvloop]``),
unless the ``FLNOTIFY_EVENT_LOOP`` environment variable says otherwise:

* ``auto`` (or unset): uvloop if installed, else asyncio's default loop;
* ``asyncio``: always asyncio's default loop (the opt-out);
* ``uvloop``: uvloop, and a [`ConfigurationError`][flnotify.errors.ConfigurationError] if it is
  not installed.

Loops the host application runs (``asyncio.run``, an ASGI server, ``Notifier.asend``)
are the host's choice; flnotify never installs a loop policy.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from ._exceptions import ConfigurationError

__all__ = ["EVENT_LOOP_ENV", "loop_factory", "new_event_loop", "run"]

T = TypeVar("T")

EVENT_LOOP_ENV: Final = "FLNOTIFY_EVENT_LOOP"
"""The environment variable choosing flnotify's own loops: ``auto``, ``asyncio`` or ``uvloop``."""

_CHOICES: Final = ("auto", "asyncio", "uvloop")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes flnotify's own loops, as ``FLNOTIFY_EVENT_LOOP`` chooses (read each call).

    Raises:
        ConfigurationError: The variable has another value, or asks for uvloop and it is
            not installed.
    """
    choice = os.environ.get(EVENT_LOOP_ENV, "").strip().lower() or "auto"
    if choice not in _CHOICES:
        msg = f"{EVENT_LOOP_ENV}={choice!r}: expected one of {', '.join(_CHOICES)}"
        raise ConfigurationError(msg)
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if choice == "uvloop":
            msg = f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed (flnotify[uvloop])"
            raise ConfigurationError(msg) from exc
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the chosen kind (see [`loop_factory`][])."""
    return loop_factory()()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a loop of the chosen kind."""
    try:
        factory = loop_factory()
    except BaseException:
        coroutine.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coroutine)
    if factory is asyncio.new_event_loop:  # pragma: no cover - Python 3.10
        return asyncio.run(coroutine)
    uvloop_run: Callable[[Coroutine[Any, Any, T]], T] = importlib.import_module("uvloop").run
    return uvloop_run(coroutine)  # pragma: no cover - Python 3.10
