"""The sync bridge: a private event loop in a daemon thread that runs coroutines for sync callers.

``Notifier.send``, the dispatchers' blocking ``run`` and the Celery task all reach the async
engine through one [`Portal`][flnotify._portal.Portal], so blocking calls work from plain
sync code and from inside a running event loop alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._exceptions import ConfigurationError
from ._loops import new_event_loop

__all__ = ["Portal"]

T = TypeVar("T")


class Portal:
    """A private event loop in a daemon thread that runs coroutines for sync callers.

    The loop is uvloop's when it is installed, unless ``FLNOTIFY_EVENT_LOOP=asyncio``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = new_event_loop()  # uvloop's if installed (FLNOTIFY_EVENT_LOOP)
                thread = threading.Thread(
                    target=loop.run_forever, name="flnotify-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the portal's loop and wait for its result.

        Raises:
            ConfigurationError: Called from the portal's own loop (it would wait for itself).
        """
        loop = self._start()
        if threading.current_thread() is self._thread:
            coroutine.close()
            msg = (
                "a blocking flnotify call (e.g. Notifier.send) was made on flnotify's own"
                " event loop (from a callback); await its async twin (asend) instead"
            )
            raise ConfigurationError(msg)
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coroutine`` on the portal's loop and return at once with its future."""
        loop = self._start()
        return asyncio.run_coroutine_threadsafe(coroutine, loop)

    @property
    def thread(self) -> threading.Thread | None:
        """The loop's thread, once started."""
        return self._thread

    def close(self) -> None:
        """Stop the loop and join its thread (a no-op if it never started)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
