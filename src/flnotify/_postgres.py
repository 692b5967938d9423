"""The one PostgreSQL connection behind `PostgresOutbox` and `PostgresMailbox`.

Needs psycopg 3 (``pip install 'flnotify[postgres]'``). One connection per store, in
autocommit mode, used by one thread at a time behind a lock and reopened after the server
dropped it; its schema is set up on every (re)connection under an advisory lock, so
replicas starting together are safe. Every psycopg error is translated here, at this one
edge, into the store's own error, with the password redacted.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from typing_extensions import Self, Unpack

from ._exceptions import ConfigurationError, FlnotifyError
from ._schema import Schema, set_up

if TYPE_CHECKING:
    import psycopg

__all__ = ["NOW", "PostgresConnection", "prepared", "redacted", "set_up_schema"]

NOW = "COALESCE(%(now)s::double precision, extract(epoch FROM clock_timestamp()))"
"""The store clock in a statement: ``%(now)s`` if the store has a clock of its own (not
NULL), else the database server's, read inside the statement."""

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@|(password\s*=\s*)\S+", re.IGNORECASE)


def redacted(url: str) -> str:
    """The connection string without its password, for messages."""
    return _PASSWORD.sub(lambda m: f"{m.group(1)}***@" if m.group(1) else f"{m.group(2)}***", url)


def prepared(cur: psycopg.Cursor[Any]) -> Callable[[str, Mapping[str, Any]], Any]:
    """An ``execute`` on ``cur`` that prepares its statements (the lease queue's)."""

    def execute(sql: str, params: Mapping[str, Any], /) -> psycopg.Cursor[Any]:
        return cur.execute(sql, params, prepare=True)

    return execute


def _import_psycopg(who: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        msg = f"{who} needs psycopg 3: pip install 'flnotify[postgres]'"
        raise ConfigurationError(msg) from exc
    return psycopg


def set_up_schema(conn: psycopg.Connection[Any], *, lock: int, **spec: Unpack[Schema]) -> None:
    """Create the tables (once, under advisory lock ``lock``) and check the schema version.

    See [`set_up`][flnotify._schema.set_up].

    Raises:
        FlnotifyError: What ``error`` makes, if the database holds another version.
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        set_up(cur.execute, cur.execute, param="%s", **spec)


@attrs.define(eq=False)
class PostgresConnection:
    """One psycopg connection shared by all threads behind a lock; made by `open`.

    Args:
        url: The libpq connection string or URL.
        label: What the database holds, in error messages (``"cannot open {label} ..."``).
        error: Makes the store's error from a message.
        prepare: Sets a new connection up (its schema); run on every (re)connection.
        connect_timeout: Seconds to wait for a connection.
    """

    url: str = attrs.field(repr=redacted)
    label: str
    error: Callable[[str], FlnotifyError] = attrs.field(repr=False)
    prepare: Callable[[psycopg.Connection[Any]], None] = attrs.field(repr=False)
    connect_timeout: float = attrs.field(repr=False)
    _psycopg: Any = attrs.field(repr=False)
    _conn: psycopg.Connection[Any] | None = attrs.field(init=False, default=None, repr=False)
    _closed: bool = attrs.field(init=False, default=False, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    _synced: bool = attrs.field(init=False, default=True, repr=False)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        who: str,
        label: str,
        error: Callable[[str], FlnotifyError],
        prepare: Callable[[psycopg.Connection[Any]], None],
        connect_timeout: float,
    ) -> Self:
        """Connect and set up at once, so that a wrong URL fails here.

        Args:
            url: The libpq connection string or URL.
            who: The store class, for the message when psycopg is missing.
            label: See the class.
            error: See the class.
            prepare: See the class.
            connect_timeout: See the class.

        Raises:
            ConfigurationError: psycopg is not installed.
            FlnotifyError: What ``error`` makes, if the database cannot be used.
        """
        db = cls(url, label, error, prepare, connect_timeout, _import_psycopg(who))
        with db._lock:
            db._conn = db._connect()
        return db

    def _connect(self) -> psycopg.Connection[Any]:
        pg = self._psycopg
        stage = "open"
        try:
            conn: psycopg.Connection[Any] = pg.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
            )
            stage = "use"
            try:
                self.prepare(conn)
            except BaseException:
                conn.close()
                raise
        except pg.Error as exc:
            msg = f"cannot {stage} {self.label} {redacted(self.url)!r}: {exc}"
            raise self.error(msg) from exc
        return conn

    @contextlib.contextmanager
    def cursor(
        self, owner: object, *, single: bool, synced: bool = True
    ) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor for one statement (its own transaction) or, not ``single``, several.

        A dropped connection is reopened first; psycopg errors become the store's error.

        Args:
            owner: Named in the error if the store is closed.
            single: The body runs one statement, its own transaction (no BEGIN/COMMIT
                round trips).
            synced: Commit as the server is set up (``synchronous_commit``: on disk when
                this returns); ``False``: without waiting for the WAL to be flushed (a
                crash of the server may undo the last of such commits, never half of
                one). Set before the transaction whenever it differs from the last one's.

        Raises:
            ConfigurationError: The store is closed.
        """
        pg = self._psycopg
        with self._lock:
            if self._closed:
                msg = f"{owner!r} is closed"
                raise ConfigurationError(msg)
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    conn.close()
                conn = self._conn = self._connect()
                self._synced = True
            try:
                if synced != self._synced:
                    # the server's own setting back, or off (never restored after: a
                    # failed restore must not leave a later commit less durable)
                    conn.execute(
                        "RESET synchronous_commit" if synced else "SET synchronous_commit = off"
                    )
                    self._synced = synced
                with (
                    contextlib.nullcontext() if single else conn.transaction(),
                    conn.cursor() as cur,
                ):
                    yield cur
            except pg.Error as exc:
                msg = f"{self.label} {redacted(self.url)!r}: {exc}"
                raise self.error(msg) from exc

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
