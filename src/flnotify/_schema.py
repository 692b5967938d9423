"""A durable store's schema version, checked and brought up to date: written once.

The SQLite and PostgreSQL stores keep their schema version in a ``meta`` table; opening a
store of an older version runs the statements that upgrade it, in the transaction that
created the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from typing_extensions import NotRequired, TypedDict, Unpack

from ._exceptions import FlnotifyError

__all__ = ["Schema", "Upgrades", "set_up"]

Upgrades = Mapping[str, Sequence[str]]
"""An older schema version -> the statements that make its tables the current version's."""


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...


class _Execute(Protocol):
    def __call__(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...


class Schema(TypedDict):
    """What a store's tables are, as its set-up takes it (keyword arguments).

    ``schema``: the statements creating the tables (``IF NOT EXISTS``); ``meta_table``: the
    table holding the version (key ``schema``), created here for every store alike;
    ``version``: this flnotify's schema
    version; ``label``: what the store is, in the error; ``error``: makes the store's
    error; ``upgrades``: the upgrades known, by the version they start from.
    """

    schema: str
    meta_table: str
    version: str
    label: str
    error: Callable[[str], FlnotifyError]
    upgrades: NotRequired[Upgrades | None]


def set_up(
    execute: _Execute, script: Callable[[str], object], *, param: str, **spec: Unpack[Schema]
) -> None:
    """Create the tables, then record ``version`` in a new store or upgrade an older one.

    Every SQLite and PostgreSQL store's set-up, in the transaction its caller holds.

    Args:
        execute: Runs one statement in the set-up transaction (positional parameters).
        script: Runs the ``schema`` statements (the transaction begins there for SQLite).
        param: The database's positional placeholder (``?``, ``%s``).
        **spec: The store's [`Schema`][flnotify._schema.Schema].

    Raises:
        FlnotifyError: What ``error`` makes, if the store holds a version with no upgrade.
    """
    meta_table, version, label = spec["meta_table"], spec["version"], spec["label"]
    script(
        f"CREATE TABLE IF NOT EXISTS {meta_table} (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
        + spec["schema"]
    )
    upgrades, error = spec.get("upgrades"), spec["error"]
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
