"""Deduplication by ``webhook-id``: the store protocols, the claim states, the memory store.

A message id goes through three states in a store:

* absent: never seen, or forgotten (its expiry passed);
* in flight: claimed by one request whose handler is running; the claim expires after
  ``lease_seconds`` so a process that died mid-handler does not block the id forever;
* handled: the handler answered 2xx; kept for ``window_seconds``.

[`IdStore.claim`][flnotify.receiving.IdStore.claim] moves absent to in flight atomically (an
insert-if-absent with expiry) and says which state the id was in otherwise;
``complete`` moves in flight to handled, ``release`` drops a claim whose handler failed
(so the sender's retry runs it again). Backend errors of the stores are translated here,
in one table, into [`IdStoreError`][flnotify.errors.IdStoreError].
"""

from __future__ import annotations

import contextlib
import enum
import functools
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import attrs

from .._exceptions import IdStoreError
from .._validators import at_least_one, positive

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_WINDOW_SECONDS",
    "AsyncIdStore",
    "IdClaim",
    "IdStore",
    "InMemoryIdStore",
]

DEFAULT_WINDOW_SECONDS = 24 * 3600.0
"""How long a handled id is remembered: keep it longer than the sender's retry deadline."""

DEFAULT_LEASE_SECONDS = 60.0
"""How long a claim holds without an answer (a crashed worker's claim lapses after it)."""


class IdClaim(enum.Enum):
    """What [`IdStore.claim`][flnotify.receiving.IdStore.claim] found."""

    CLAIMED = "claimed"
    """The id was absent: it is now in flight, and this request runs the handler."""

    IN_FLIGHT = "in_flight"
    """Another request (maybe in another process) is handling the id right now."""

    HANDLED = "handled"
    """The id was handled already (its handler answered 2xx)."""


@runtime_checkable
class IdStore(Protocol):
    """Where a router claims message ids; share one between all of a client's processes.

    Implementations must make ``claim`` atomic across every process that shares the store:
    of concurrent claims of one absent id, exactly one returns
    [`IdClaim.CLAIMED`][flnotify.receiving.IdClaim.CLAIMED].
    """

    def claim(self, message_id: str) -> IdClaim:
        """Mark ``message_id`` in flight if it is absent (or expired); say what it was."""
        ...

    def complete(self, message_id: str) -> None:
        """The handler of a claimed id answered 2xx: remember it as handled."""
        ...

    def release(self, message_id: str) -> None:
        """The handler of a claimed id failed: forget the claim so a retry runs it again."""
        ...


@runtime_checkable
class AsyncIdStore(Protocol):
    """The async twin of [`IdStore`][flnotify.receiving.IdStore], used by `ahandle` when offered.

    A store offering only the sync methods is called in a worker thread under ASGI.
    """

    async def aclaim(self, message_id: str) -> IdClaim:
        """See [`IdStore.claim`][flnotify.receiving.IdStore.claim]."""
        ...

    async def acomplete(self, message_id: str) -> None:
        """See [`IdStore.complete`][flnotify.receiving.IdStore.complete]."""
        ...

    async def arelease(self, message_id: str) -> None:
        """See [`IdStore.release`][flnotify.receiving.IdStore.release]."""
        ...


# --------------------------------------------------------------------------- backend errors


@functools.cache
def _backend_errors() -> tuple[tuple[type[BaseException], str], ...]:
    """``(backend error type, store name)``: the one table of translated errors."""
    table: list[tuple[type[BaseException], str]] = [(sqlite3.Error, "sqlite")]
    try:
        import redis.exceptions
    except ImportError:  # the redis extra is not installed: no redis store in use
        pass
    else:
        table.append((redis.exceptions.RedisError, "redis"))
    return tuple(table)


@contextlib.contextmanager
def map_backend_errors() -> Iterator[None]:
    """Translate a store backend's error into [`IdStoreError`][flnotify.errors.IdStoreError]."""
    try:
        yield
    except IdStoreError:
        raise
    except Exception as exc:
        for kind, store in _backend_errors():
            if isinstance(exc, kind):
                raise IdStoreError(store, f"{type(exc).__name__}: {exc}") from exc
        raise


# --------------------------------------------------------------------------- memory


@attrs.define
class InMemoryIdStore:
    """A bounded, thread-safe id store in one process's memory; for one process and tests.

    It is private to its process and forgotten on exit: with several worker processes or
    restarts, use [`SQLiteIdStore`][flnotify.receiving.SQLiteIdStore] (one host) or
    [`RedisIdStore`][flnotify.receiving.RedisIdStore] (several hosts).

    Args:
        max_entries: At most this many ids are kept; the oldest are forgotten first.
        window_seconds: Handled ids are forgotten this long after their handler answered.
        lease_seconds: A claim lapses this long after it was made without an answer.
        clock: A monotonic clock in seconds; inject one in tests.
    """

    max_entries: int = attrs.field(default=10_000, validator=at_least_one)
    window_seconds: float = attrs.field(default=DEFAULT_WINDOW_SECONDS, validator=positive)
    lease_seconds: float = attrs.field(default=DEFAULT_LEASE_SECONDS, validator=positive)
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[str, tuple[IdClaim, float]] = attrs.field(init=False, factory=OrderedDict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            _, expires = next(iter(entries.values()))
            if expires > now:
                break
            entries.popitem(last=False)

    def _put(self, message_id: str, state: IdClaim, expires: float) -> None:
        self._entries[message_id] = (state, expires)
        self._entries.move_to_end(message_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def claim(self, message_id: str) -> IdClaim:
        """See [`IdStore.claim`][flnotify.receiving.IdStore.claim]."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            found = self._entries.get(message_id)
            if found is not None and found[1] > now:
                return found[0]
            self._put(message_id, IdClaim.IN_FLIGHT, now + self.lease_seconds)
            return IdClaim.CLAIMED

    def complete(self, message_id: str) -> None:
        """See [`IdStore.complete`][flnotify.receiving.IdStore.complete]."""
        with self._lock:
            self._put(message_id, IdClaim.HANDLED, self.clock() + self.window_seconds)

    def release(self, message_id: str) -> None:
        """See [`IdStore.release`][flnotify.receiving.IdStore.release]."""
        with self._lock:
            found = self._entries.get(message_id)
            if found is not None and found[0] is IdClaim.IN_FLIGHT:
                del self._entries[message_id]

    async def aclaim(self, message_id: str) -> IdClaim:
        """See [`IdStore.claim`][flnotify.receiving.IdStore.claim] (memory never blocks)."""
        return self.claim(message_id)

    async def acomplete(self, message_id: str) -> None:
        """See [`IdStore.complete`][flnotify.receiving.IdStore.complete]."""
        self.complete(message_id)

    async def arelease(self, message_id: str) -> None:
        """See [`IdStore.release`][flnotify.receiving.IdStore.release]."""
        self.release(message_id)

    def __len__(self) -> int:
        return len(self._entries)
