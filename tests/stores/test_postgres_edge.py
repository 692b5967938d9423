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


def test_a_cursor_waits_for_the_wal_unless_told_not_to(postgres_url: str) -> None:
    """``synced=False`` commits with ``synchronous_commit`` off, and only those cursors.

    The test server runs with it off; this database's sessions start with it on.
    """
    from psycopg import sql

    from flnotify._postgres import PostgresConnection

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(sql.Identifier(name))
        )
    db = PostgresConnection.open(
        postgres_url,
        who="test",
        label="test",
        error=OutboxError,
        prepare=lambda conn: None,
        connect_timeout=5,
    )

    def level(*, synced: bool, single: bool) -> str:
        with db.cursor(None, single=single, synced=synced) as cur:
            row = cur.execute("SHOW synchronous_commit").fetchone()
        assert row is not None
        return str(row[0])

    try:
        assert level(synced=True, single=True) == "on"
        assert level(synced=False, single=True) == "off"
        assert level(synced=False, single=False) == "off"
        assert level(synced=True, single=False) == "on"
        assert level(synced=True, single=True) == "on"
    finally:
        db.close()


def test_the_outbox_waits_for_the_wal_where_a_lost_commit_would_cost_more_than_a_resend(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims, leases and outcomes with no callbacks to follow do not wait; put, outcomes
    followed by callbacks and their finishing do (as on SQLite)."""
    import uuid

    import flnotify
    from flnotify._postgres import PostgresConnection
    from flnotify._report import Delivery

    seen: list[bool] = []
    cursor = PostgresConnection.cursor

    def spy(self: Any, owner: object, *, single: bool, synced: bool = True) -> Any:
        seen.append(synced)
        return cursor(self, owner, single=single, synced=synced)

    notification = flnotify.TrainingStartNotification(
        receivers=[
            flnotify.Receiver(uuid.UUID(int=i + 1), f"http://c{i}.test/m") for i in range(2)
        ],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.UUID(int=9)),
        training_uuid=uuid.UUID(int=9),
    )
    with PostgresOutbox(postgres_url) as outbox:
        monkeypatch.setattr(PostgresConnection, "cursor", spy)
        calls: dict[str, bool] = {}

        def durable(name: str, call: Any) -> Any:
            seen.clear()
            result = call()
            calls[name] = all(seen)
            return result

        durable("put", lambda: outbox.put(notification))
        claim = durable("claim", lambda: outbox.claim(10, lease_seconds=30))
        a, b = (
            Delivery(e.receiver, notification, flnotify.Outcome.DELIVERED, e.message_id, 1, 0.1)
            for e in claim.entries
        )
        durable("renew", lambda: outbox.renew(claim, 30))
        durable("record with callbacks", lambda: outbox.record(claim, [a]))
        durable("finish", lambda: outbox.finish(claim, [a.message_id]))
        durable("record done", lambda: outbox.record(claim, [b], done=True))
        durable("release", lambda: outbox.release(claim))
    assert calls == {
        "put": True,
        "claim": False,
        "renew": False,
        "record with callbacks": True,
        "finish": True,
        "record done": False,
        "release": False,
    }
