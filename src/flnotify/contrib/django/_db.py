"""The edge between flnotify and Django's database layer: connections and errors.

Every call of the repository and the secret lookup runs in ``database_call``: a
connection the call opened is closed when it ends (flnotify calls a sync repository from
worker threads, which Django's request cycle never cleans up), and Django's database
errors come out as flnotify's typed errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.core.exceptions import FieldDoesNotExist, FieldError
from django.db import DatabaseError, connections
from django.utils.connection import ConnectionDoesNotExist

from ..._exceptions import ConfigurationError, RepositoryBusyError, RepositoryError
from ..._sqlite import is_busy

__all__ = ["database_call", "is_transient"]

_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
"""PostgreSQL: serialization failure, deadlock detected, lock not available."""


def is_transient(exc: DatabaseError) -> bool:
    """Whether a database error says "busy for now": trying the call again may succeed.

    SQLite's "database is locked"/busy, PostgreSQL's serialization failures, deadlocks
    and lock timeouts (their SQLSTATE, from psycopg 3 or psycopg2).
    """
    cause = exc.__cause__
    if cause is None:
        return False
    if is_busy(cause):
        return True
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return state in _TRANSIENT_SQLSTATES


@contextlib.contextmanager
def database_call(alias: str, what: str) -> Iterator[None]:
    """Run one call against ``alias``; close the connection if the call opened it.

    A connection that was open before (a request's, a test's, an open transaction's) is
    left as it is. Django's ``DatabaseError`` becomes
    [`RepositoryError`][flnotify.errors.RepositoryError]
    ([`RepositoryBusyError`][flnotify.errors.RepositoryBusyError] when it `is_transient` and
    the call ran in no transaction of the host's, so that trying it again can succeed) and a
    wrong field path [`ConfigurationError`][flnotify.errors.ConfigurationError], each naming
    ``what`` was being done.
    """
    try:
        connection = connections[alias]
    except ConnectionDoesNotExist as exc:
        msg = f"{what}: no database {alias!r} in DATABASES"
        raise ConfigurationError(msg) from exc
    outer = connection.in_atomic_block  # the host's transaction: not ours to try again
    opened_here = connection.connection is None and not outer
    try:
        yield
    except (FieldError, FieldDoesNotExist) as exc:
        msg = f"{what}: {exc}"
        raise ConfigurationError(msg) from exc
    except DatabaseError as exc:
        msg = f"{what} failed on database {alias!r}: {type(exc).__name__}: {exc}"
        if not outer and is_transient(exc):
            raise RepositoryBusyError(msg) from exc
        raise RepositoryError(msg) from exc
    finally:
        if opened_here and not connection.in_atomic_block:
            connection.close()
