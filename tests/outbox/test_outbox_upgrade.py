"""An outbox written by schema 1 (a lease on every delivery row) opens as schema 3.

Schema 2 keeps a claim's lease in one row of ``flnotify_outbox_claims``, schema 3 the size
of a send with its batch. The files and tables here are made the way schema 1 made them,
with a pending, a claimed (two rows under one claim) and a done delivery; opening them
keeps every delivery and every lease, and counts each batch's size.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flnotify.errors import OutboxError
from flnotify.outbox import Outbox, OutboxState, PostgresOutbox

NOW = 1_700_000_000.0
TOKEN = "a" * 32

_V1_TABLES = """
CREATE TABLE flnotify_outbox_meta (key {text} PRIMARY KEY, value {text} NOT NULL);
CREATE TABLE flnotify_outbox_batches (
    id {text} PRIMARY KEY, payload {text} NOT NULL, created_at {real} NOT NULL
);
CREATE TABLE flnotify_outbox (
    seq {serial} PRIMARY KEY {autoincrement},
    batch_id {text} NOT NULL REFERENCES flnotify_outbox_batches (id) ON DELETE CASCADE,
    receiver_id {text} NOT NULL,
    message_endpoint {text} NOT NULL,
    message_id {text} NOT NULL UNIQUE,
    state {text} NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'claimed', 'done')),
    claim_token {text},
    lease_until {real},
    claims INTEGER NOT NULL DEFAULT 0,
    outcome {text} CHECK (outcome IN ('delivered', 'rejected', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    error {text},
    error_kind {text},
    elapsed {real},
    recorded_at {real}
);
CREATE INDEX flnotify_outbox_open ON flnotify_outbox (seq) WHERE state <> 'done';
INSERT INTO flnotify_outbox_meta VALUES ('schema', '1');
INSERT INTO flnotify_outbox_batches VALUES ('b1', '{{}}', {now});
INSERT INTO flnotify_outbox
    (batch_id, receiver_id, message_endpoint, message_id, state, claim_token, lease_until,
     claims, outcome, attempts, status_code, recorded_at)
VALUES
    ('b1', '{rid}', 'http://c0.test/m', 'done', 'done', '{token}', NULL, 1, 'delivered', 1,
     202, {now}),
    ('b1', '{rid}', 'http://c1.test/m', 'held1', 'claimed', '{token}', {until}, 1, NULL, 0,
     NULL, NULL),
    ('b1', '{rid}', 'http://c2.test/m', 'held2', 'claimed', '{token}', {until}, 1, NULL, 0,
     NULL, NULL),
    ('b1', '{rid}', 'http://c3.test/m', 'pending', 'pending', NULL, NULL, 0, NULL, 0, NULL,
     NULL);
"""


def _v1(*, text: str, real: str, serial: str, autoincrement: str) -> str:
    return _V1_TABLES.format(
        text=text,
        real=real,
        serial=serial,
        autoincrement=autoincrement,
        now=NOW,
        until=NOW + 30,
        rid=uuid.UUID(int=1),
        token=TOKEN,
    )


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _check_upgraded(outbox: Any, clock: _Clock, columns: Callable[[], set[str]]) -> None:
    """Every delivery and its lease survived; the held rows stay held until the lease ends."""
    assert "lease_until" not in columns()
    entries = {e.message_id: e for e in outbox.entries()}
    assert [e.message_id for e in outbox.entries()] == ["done", "held1", "held2", "pending"]
    assert (entries["done"].state, entries["done"].lease_until) == (OutboxState.DONE, None)
    assert {entries[m].lease_until for m in ("held1", "held2")} == {NOW + 30}
    assert entries["pending"].lease_until is None
    assert outbox.next_claimable() == NOW
    assert [e.message_id for e in outbox.claim(10, lease_seconds=60).entries] == ["pending"]
    clock.now = NOW + 30
    again = outbox.claim(10, lease_seconds=30)  # the old claim's lease ended: taken over
    assert [(e.message_id, e.claims) for e in again.entries] == [("held1", 2), ("held2", 2)]
    # schema 3 keeps the size of each send with its batch: counted from its rows
    assert again.sizes == {"b1": 4}
    assert outbox.batch_size("b1") == 4


def test_an_sqlite_file_of_schema_1_opens_with_its_leases(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    script = _v1(text="TEXT", real="REAL", serial="INTEGER", autoincrement="AUTOINCREMENT")
    conn.executescript(script)
    conn.close()
    clock = _Clock()

    def columns() -> set[str]:
        with sqlite3.connect(path) as conn:
            return {row[1] for row in conn.execute("PRAGMA table_info(flnotify_outbox)")}

    with Outbox(path, clock=clock) as outbox:
        _check_upgraded(outbox, clock, columns)
    with Outbox(path, clock=clock) as outbox:  # opened again: already schema 3
        assert outbox.counts()[OutboxState.CLAIMED] == 3


def test_postgres_tables_of_schema_1_open_with_their_leases(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        script = _v1(text="text", real="double precision", serial="bigserial", autoincrement="")
        conn.execute(script.encode())
    clock = _Clock()

    def columns() -> set[str]:
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'flnotify_outbox'"
            ).fetchall()
        return {row[0] for row in rows}

    with PostgresOutbox(postgres_url, clock=clock) as outbox:
        _check_upgraded(outbox, clock, columns)
    with PostgresOutbox(postgres_url, clock=clock) as outbox:
        assert outbox.counts()[OutboxState.CLAIMED] == 3


def test_an_unknown_schema_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with Outbox(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE flnotify_outbox_meta SET value = '9' WHERE key = 'schema'")
    conn.close()
    with pytest.raises(OutboxError, match="outbox schema 9 is not this flnotify's"):
        Outbox(path)
