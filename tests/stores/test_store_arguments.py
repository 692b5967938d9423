"""Every store refuses arguments of the wrong type at once, naming the argument."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flnotify import SQLiteTrainingRepository
from flnotify.health import SQLiteHealthStore
from flnotify.mailbox import Mailbox, PostgresMailbox
from flnotify.outbox import Outbox, PostgresOutbox

SQLITE_STORES: list[Any] = [Outbox, Mailbox]
POSTGRES_STORES: list[Any] = [PostgresOutbox, PostgresMailbox]


@pytest.mark.parametrize("store", [*SQLITE_STORES, SQLiteHealthStore, SQLiteTrainingRepository])
@pytest.mark.parametrize("path", [42, None, b"bytes.db"])
def test_a_path_that_is_no_path_is_a_type_error(store: Any, path: object) -> None:
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        store(path)


@pytest.mark.parametrize("store", SQLITE_STORES)
@pytest.mark.parametrize(("argument", "value"), [("codec", "json"), ("clock", 1700000000.0)])
def test_sqlite_stores_name_the_argument_of_the_wrong_type(
    store: Any, argument: str, value: object, tmp_path: Path
) -> None:
    with pytest.raises(TypeError, match=rf"{store.__name__}\.{argument} must be"):
        store(tmp_path / "db", **{argument: value})
    assert not (tmp_path / "db").exists()  # refused before anything was opened


@pytest.mark.parametrize("store", POSTGRES_STORES)
@pytest.mark.parametrize(
    ("argument", "value"),
    [("url", b"postgresql://x"), ("codec", object()), ("clock", "server")],
)
def test_postgres_stores_name_the_argument_of_the_wrong_type(
    store: Any, argument: str, value: object
) -> None:
    arguments: dict[str, Any] = {"url": "postgresql://127.0.0.1:1/none", argument: value}
    with pytest.raises(TypeError, match=rf"{store.__name__}\.{argument} must be"):
        store(**arguments)  # refused before any connection is tried
