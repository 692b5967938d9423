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

from ..._exceptions import ConfigurationError, RepositoryError

__all__ = ["database_call"]


@contextlib.contextmanager
def database_call(alias: str, what: str) -> Iterator[None]:
    """Run one call against ``alias``; close the connection if the call opened it.

    A connection that was open before (a request's, a test's, an open transaction's) is
    left as it is. Django's ``DatabaseError`` becomes
    [`RepositoryError`][flnotify.errors.RepositoryError] and a wrong field path
    [`ConfigurationError`][flnotify.errors.ConfigurationError], each naming ``what`` was
    being done.
    """
    try:
        connection = connections[alias]
    except ConnectionDoesNotExist as exc:
        msg = f"{what}: no database {alias!r} in DATABASES"
        raise ConfigurationError(msg) from exc
    opened_here = connection.connection is None and not connection.in_atomic_block
    try:
        yield
    except (FieldError, FieldDoesNotExist) as exc:
        msg = f"{what}: {exc}"
        raise ConfigurationError(msg) from exc
    except DatabaseError as exc:
        msg = f"{what} failed on database {alias!r}: {type(exc).__name__}: {exc}"
        raise RepositoryError(msg) from exc
    finally:
        if opened_here and not connection.in_atomic_block:
            connection.close()
