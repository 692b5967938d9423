"""The one SQLite connection behind `SQLiteTrainingRepository` and the outbox."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator

import attrs
from typing_extensions import Self, Unpack

from ._exceptions import ConfigurationError, FlnotifyError
from ._schema import Schema, set_up

__all__ = [
    "SQLiteConnection",
    "configure",
    "connect",
    "fspath",
    "is_busy",
    "set_up_durable_schema",
]

_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)
_BUSY_MESSAGES = ("database is locked", "database table is locked", "database is busy")


def is_busy(exc: BaseException) -> bool:
    """Whether an `sqlite3` error says the database is busy or locked (worth trying again)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF in _BUSY_CODES
    return str(exc).startswith(_BUSY_MESSAGES)


def fspath(path: str | os.PathLike[str]) -> str:
    """A store's ``path`` argument as text: every SQLite store's converter.

    Raises:
        TypeError: ``path`` is neither a string nor a path-like object.
    """
    if not isinstance(path, (str, os.PathLike)):
        msg = f"path must be a str or os.PathLike, not {type(path).__name__}"
        raise TypeError(msg)
    return os.fspath(path)


def connect(
    path: str | os.PathLike[str], *, timeout: float, synchronous: str = "FULL"
) -> sqlite3.Connection:
    """Every SQLite store's connection, set up one way (see `configure`).

    Autocommit mode (the stores say ``BEGIN``), usable from any thread (each store keeps
    it behind a lock).

    Raises:
        sqlite3.Error: The file cannot be opened or set up (the connection is closed).
    """
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        configure(conn, path, synchronous)
    except BaseException:
        conn.close()
        raise
    return conn


def configure(conn: sqlite3.Connection, path: str | os.PathLike[str], synchronous: str) -> None:
    """Foreign keys on, WAL for a file (several processes), and ``synchronous``.

    ``FULL`` where a commit must be on disk when the call returns, ``NORMAL`` where losing
    the last commits to a power cut costs only work done again.
    """
    conn.execute("PRAGMA foreign_keys = ON")
    if os.fspath(path) not in {"", ":memory:"}:
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute(f"PRAGMA synchronous = {synchronous}")


@attrs.define(eq=False)
class SQLiteConnection:
    """One `sqlite3` connection shared by all threads behind a lock.

    Made by `open`; every use is one `transaction`, one at a time.

    Args:
        path: The database file, as given to `sqlite3.connect`.
        label: What the file is, in error messages (``"cannot open {label} {path!r}"``).
        error: Makes the error raised for a database that cannot be opened or used.
        wrap_errors: Whether `sqlite3` errors inside a transaction become ``error``
            too (``"{label} {path!r}: ..."``) instead of passing through.
        busy: Makes the error raised instead, when wrapping, for a database that stayed
            busy or locked (see `is_busy`); ``error`` makes it if ``None``.
        synchronous: The commit durability it was opened with (see `connect`).
    """

    path: str
    label: str
    error: Callable[[str], FlnotifyError] = attrs.field(repr=False)
    wrap_errors: bool = attrs.field(repr=False)
    _conn: sqlite3.Connection | None = attrs.field(alias="conn", repr=False)
    busy: Callable[[str], FlnotifyError] | None = attrs.field(default=None, repr=False)
    synchronous: str = attrs.field(default="FULL", repr=False)
    _level: str = attrs.field(init=False, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls,
        path: str,
        *,
        label: str,
        error: Callable[[str], FlnotifyError],
        prepare: Callable[[sqlite3.Connection], None],
        timeout: float = 5.0,
        wrap_errors: bool = False,
        busy: Callable[[str], FlnotifyError] | None = None,
        synchronous: str = "FULL",
    ) -> Self:
        """Connect (autocommit mode, usable from any thread) and run ``prepare`` once.

        Args:
            path: The database file, or ``":memory:"``.
            label: What the file is, in error messages.
            error: Makes the error raised when the file cannot be opened or used.
            prepare: Sets PRAGMAs and the schema up; the connection is closed if it raises.
            timeout: Seconds to wait for another connection's lock.
            wrap_errors: See the class.
            busy: See the class.
            synchronous: The commit durability; see [`connect`][flnotify._sqlite.connect].

        Raises:
            FlnotifyError: What ``error`` makes, if connecting or ``prepare`` fails with
                an `sqlite3` error; other errors of ``prepare`` pass through.
        """
        try:
            conn = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise error(f"cannot open {label} {path!r}: {exc}") from exc
        try:
            configure(conn, path, synchronous)
            prepare(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise error(f"cannot use {label} {path!r}: {exc}") from exc
            raise
        return cls(path, label, error, wrap_errors, conn=conn, busy=busy, synchronous=synchronous)

    def __attrs_post_init__(self) -> None:
        self._level = self.synchronous  # as `configure` set it

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def transaction(
        self, owner: object, *, write: bool, synced: bool = True
    ) -> Iterator[sqlite3.Connection]:
        """One transaction (``BEGIN IMMEDIATE`` to write), committed unless the body raises.

        Args:
            owner: Named in the error if the connection is closed.
            write: Take the write lock at once.
            synced: Commit as the connection was opened (``FULL``: on disk when this
                returns); ``False``: at ``NORMAL``, without waiting for the disk (WAL: a
                power cut or an OS crash may undo the last of such commits, a process
                crash does not). Later synced commits make earlier ones durable too. The
                level is set before ``BEGIN`` whenever it differs from the last one's.

        Raises:
            ConfigurationError: The connection is closed.
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                msg = f"{owner!r} is closed"
                raise ConfigurationError(msg)
            try:
                # set before each transaction that needs another level than the last one
                # (never restored after: a failed restore must not leave a later commit
                # less durable than it asked for)
                level = self.synchronous if synced else "NORMAL"
                if level != self._level:
                    conn.execute(f"PRAGMA synchronous = {level}")
                    self._level = level
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
                conn.commit()
            except (sqlite3.Error, UnicodeEncodeError, OverflowError) as exc:
                # OverflowError: an integer beyond 64 bits; UnicodeEncodeError: a lone
                # surrogate in a string. Both are refused by sqlite3 while binding.
                if not self.wrap_errors:
                    raise
                make = self.busy if self.busy is not None and is_busy(exc) else self.error
                raise make(f"{self.label} {self.path!r}: {exc}") from exc


def set_up_durable_schema(conn: sqlite3.Connection, path: str, **spec: Unpack[Schema]) -> None:
    """Set up a store whose commits are durable: the outbox's and the mailbox's.

    The connection is [`connect`][flnotify._sqlite.connect]'s (``FULL``: what a call
    returned is on disk); the tables created in one ``BEGIN IMMEDIATE`` transaction (two
    processes opening a new file at once), and the schema version kept in ``meta_table``
    (see [`set_up`][flnotify._schema.set_up]; ``path`` is the file's, for messages).

    Raises:
        FlnotifyError: What ``error`` makes, if the file holds another schema version.
    """

    def tables(script: str) -> None:
        conn.executescript(f"BEGIN IMMEDIATE;{script}")

    try:
        set_up(conn.execute, tables, param="?", **spec)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
