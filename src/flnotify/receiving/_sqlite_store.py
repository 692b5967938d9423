"""Message ids in an SQLite file: every worker process on one host, across restarts.

[`SQLiteIdStore`][flnotify.receiving.SQLiteIdStore] needs only the standard library.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from .._closing import Closing
from .._sqlite import connect
from .._validators import positive
from ._dedupe import DEFAULT_LEASE_SECONDS, DEFAULT_WINDOW_SECONDS, IdClaim, map_backend_errors

__all__ = ["SQLiteIdStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flnotify_message_ids (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS flnotify_message_ids_expiry ON flnotify_message_ids (expires_at);
"""
_STATES = {IdClaim.IN_FLIGHT.value: IdClaim.IN_FLIGHT, IdClaim.HANDLED.value: IdClaim.HANDLED}
_PURGE_EVERY = 256


@attrs.define
class SQLiteIdStore(Closing):
    """Message ids in one SQLite database file: several processes on one host, restarts.

    Each claim is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock, taken before
    reading), so of concurrent claims in any number of processes exactly one wins. The
    database runs in WAL mode and waits up to ``busy_timeout`` for the lock. Each process
    opens its own connection (also after a fork), used under a lock by its threads;
    expired rows are purged every few hundred completions.

    Args:
        path: The database file (created if missing); every worker process passes the same.
        window_seconds: Handled ids are remembered this long (wall-clock seconds).
        lease_seconds: A claim lapses this long after it was made without an answer.
        busy_timeout: How long (seconds) to wait for another process's write lock.
        clock: The wall clock (seconds since the epoch), shared by all processes.

    Raises:
        ConfigurationError: A duration is not positive.

    Store methods raise [`IdStoreError`][flnotify.errors.IdStoreError] when SQLite fails.
    """

    path: Path = attrs.field(converter=Path)
    window_seconds: float = attrs.field(
        default=DEFAULT_WINDOW_SECONDS, validator=positive, kw_only=True
    )
    lease_seconds: float = attrs.field(
        default=DEFAULT_LEASE_SECONDS, validator=positive, kw_only=True
    )
    busy_timeout: float = attrs.field(default=5.0, validator=positive, kw_only=True)
    clock: Callable[[], float] = attrs.field(default=time.time, kw_only=True)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _db: sqlite3.Connection | None = attrs.field(init=False, default=None)
    _pid: int = attrs.field(init=False, default=0)
    _completions: int = attrs.field(init=False, default=0)

    def __repr__(self) -> str:
        return f"SQLiteIdStore({str(self.path)!r})"

    def _connection(self) -> sqlite3.Connection:
        """The connection of this process, opened on first use (and again after a fork)."""
        if self._db is None or self._pid != os.getpid():
            # a handled id lost to a power cut is only handled again (at least once)
            db = connect(self.path, timeout=self.busy_timeout, synchronous="NORMAL")
            try:
                db.executescript(_SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db, self._pid = db, os.getpid()
        return self._db

    def claim(self, message_id: str) -> IdClaim:
        """See [`IdStore.claim`][flnotify.receiving.IdStore.claim]; atomic across processes."""
        with self._lock, map_backend_errors():
            db = self._connection()
            now = self.clock()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT state, expires_at FROM flnotify_message_ids WHERE id = ?",
                    (message_id,),
                ).fetchone()
                if row is not None and row[1] > now:
                    db.execute("COMMIT")
                    return _STATES.get(row[0], IdClaim.HANDLED)
                db.execute(
                    "INSERT OR REPLACE INTO flnotify_message_ids (id, state, expires_at) "
                    "VALUES (?, ?, ?)",
                    (message_id, IdClaim.IN_FLIGHT.value, now + self.lease_seconds),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return IdClaim.CLAIMED

    def complete(self, message_id: str) -> None:
        """See [`IdStore.complete`][flnotify.receiving.IdStore.complete]."""
        with self._lock, map_backend_errors():
            db = self._connection()
            now = self.clock()
            db.execute(
                "INSERT OR REPLACE INTO flnotify_message_ids (id, state, expires_at) "
                "VALUES (?, ?, ?)",
                (message_id, IdClaim.HANDLED.value, now + self.window_seconds),
            )
            self._completions += 1
            if self._completions % _PURGE_EVERY == 0:
                db.execute("DELETE FROM flnotify_message_ids WHERE expires_at <= ?", (now,))

    def release(self, message_id: str) -> None:
        """See [`IdStore.release`][flnotify.receiving.IdStore.release]."""
        with self._lock, map_backend_errors():
            self._connection().execute(
                "DELETE FROM flnotify_message_ids WHERE id = ? AND state = ?",
                (message_id, IdClaim.IN_FLIGHT.value),
            )

    async def aclaim(self, message_id: str) -> IdClaim:
        """[`claim`][flnotify.receiving.SQLiteIdStore.claim] in a worker thread."""
        return await asyncio.to_thread(self.claim, message_id)

    async def acomplete(self, message_id: str) -> None:
        """[`complete`][flnotify.receiving.SQLiteIdStore.complete] in a worker thread."""
        await asyncio.to_thread(self.complete, message_id)

    async def arelease(self, message_id: str) -> None:
        """[`release`][flnotify.receiving.SQLiteIdStore.release] in a worker thread."""
        await asyncio.to_thread(self.release, message_id)

    def close(self) -> None:
        """Close this process's connection (a later call opens a new one)."""
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None
