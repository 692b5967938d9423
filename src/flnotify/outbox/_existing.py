"""Whether a target holds an outbox, found without creating or changing anything.

Operators' commands (``flnotify outbox status|list|...``) look at an outbox that must
already exist: a mistyped path or an application's own database must not be given the
outbox's tables by a look. [`open_outbox`][flnotify.outbox.open_outbox] with
``create=False`` asks here first.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from ._model import NoOutboxError

__all__ = ["TABLES", "require_outbox", "sqlite_tables"]

TABLES = ("flnotify_outbox_meta", "flnotify_outbox_batches", "flnotify_outbox")
"""The tables both stores create (their schemas say the same names)."""


def sqlite_tables(path: str, looking_for: str = "outbox") -> set[str]:
    """The tables an existing SQLite file has, read without changing the file.

    Raises:
        NoOutboxError: There is no such file, or it is not an SQLite database.
    """
    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "no such file"
        msg = f"no {looking_for} at {path}: {what} (nothing is created by looking at it)"
        raise NoOutboxError(msg)
    try:
        with contextlib.closing(
            sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.DatabaseError as exc:
        msg = f"{path} is not an SQLite database ({exc})"
        raise NoOutboxError(msg) from None
    return {str(name) for (name,) in rows}


def _postgres_tables(url: str) -> set[str] | None:
    """The outbox tables the database has; ``None`` if that cannot be told here.

    Without psycopg, or with the database unreachable, opening the store says what is
    wrong (what to install, or an ``OutboxError``).
    """
    try:
        import psycopg
    except ImportError:
        return None
    try:
        with psycopg.connect(url, autocommit=True) as db:
            found = db.execute(
                "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL",
                (list(TABLES),),
            ).fetchall()
    except psycopg.Error:
        return None
    return {str(name) for (name,) in found}


def require_outbox(target: str, *, postgres: bool) -> None:
    """Refuse a target without an outbox, so nothing is created or added to by a look.

    Raises:
        NoOutboxError: The file is missing or not SQLite, or the database lacks the
            outbox's tables (the message names the target and the tables).
    """
    if postgres:
        tables = _postgres_tables(target)
        where = "the PostgreSQL database at --url"
    else:
        tables = sqlite_tables(target)
        where = target
    if tables is None:
        return
    missing = [name for name in TABLES if name not in tables]
    if missing:
        msg = (
            f"{where} holds no flnotify outbox (no table {', '.join(missing)}); "
            "nothing was created or changed"
        )
        raise NoOutboxError(msg)
