"""A durable store's schema version, checked and brought up to date: written once.

The SQLite and PostgreSQL stores keep their schema version in a ``meta`` table; opening a
store of an older version runs the statements that upgrade it, in the transaction that
created the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ._exceptions import FlnotifyError

__all__ = ["Upgrades", "bring_up_to_date"]

Upgrades = Mapping[str, Sequence[str]]
"""An older schema version -> the statements that make its tables the current version's."""


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...


class _Execute(Protocol):
    def __call__(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...


def bring_up_to_date(
    execute: _Execute,
    *,
    param: str,
    meta_table: str,
    version: str,
    upgrades: Upgrades | None,
    label: str,
    error: Callable[[str], FlnotifyError],
) -> None:
    """Record ``version`` in a new store, or upgrade an older one to it.

    Args:
        execute: Runs one statement in the set-up transaction (positional parameters).
        param: The database's positional placeholder (``?``, ``%s``).
        meta_table: The table holding the version (key ``schema``).
        version: This flnotify's schema version.
        upgrades: The upgrades known, by the version they start from.
        label: What the store is, in the error.
        error: Makes the store's error.

    Raises:
        FlnotifyError: What ``error`` makes, if the store holds a version with no upgrade.
    """
    row = execute(f"SELECT value FROM {meta_table} WHERE key = 'schema'").fetchone()  # noqa: S608 - a constant
    if row is None:
        execute(f"INSERT INTO {meta_table} VALUES ('schema', {param})", (version,))  # noqa: S608 - a constant
        return
    if row[0] == version:
        return
    upgrade = (upgrades or {}).get(row[0])
    if upgrade is None:
        raise error(f"{label} schema {row[0]} is not this flnotify's ({version})")
    for statement in upgrade:
        execute(statement)
    execute(f"UPDATE {meta_table} SET value = {param} WHERE key = 'schema'", (version,))  # noqa: S608 - a constant
