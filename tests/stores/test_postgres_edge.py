"""The one PostgreSQL edge both stores share: errors, passwords, schema versions."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from flnotify.errors import MailboxError, OutboxError
from flnotify.mailbox import PostgresMailbox
from flnotify.outbox import PostgresOutbox

STORES = [
    pytest.param(PostgresOutbox, OutboxError, "outbox", id="outbox"),
    pytest.param(PostgresMailbox, MailboxError, "mailbox", id="mailbox"),
]


@pytest.mark.parametrize(("store", "error", "label"), STORES)
def test_an_unreachable_server_is_the_stores_error_without_the_password(
    store: Any, error: type[Exception], label: str
) -> None:
    with pytest.raises(error, match=f"cannot open {label}") as info:
        store("postgresql://someone:s3cret@127.0.0.1:1/db", connect_timeout=2)
    assert "s3cret" not in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.Error)


@pytest.mark.parametrize(("store", "error", "label"), STORES)
def test_the_repr_hides_the_password(
    postgres_url: str, store: Any, error: type[Exception], label: str
) -> None:
    url = postgres_url.replace("flnotify@", "flnotify:hunter2@")
    with store(url) as opened:  # trust authentication ignores the password
        assert "hunter2" not in repr(opened)
        assert "***" in repr(opened)


@pytest.mark.parametrize(("store", "error", "label"), STORES)
def test_another_schema_version_is_refused(
    postgres_url: str, store: Any, error: type[Exception], label: str
) -> None:
    store(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"UPDATE flnotify_{label}_meta SET value = '99' WHERE key = 'schema'")  # noqa: S608 - a fixed table name
    with pytest.raises(error, match=f"{label} schema 99"):
        store(postgres_url)
