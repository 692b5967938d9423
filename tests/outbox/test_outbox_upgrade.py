"""Outboxes written by schema 1 (a lease on every delivery row) and 3 open as schema 4.

Schema 2 keeps a claim's lease in one row of ``flnotify_outbox_claims``, schema 3 the size
of a send with its batch, schema 4 a claim as runs of rows (no claim written on a
delivery row). The files and tables here are made the way schemas 1 and 3 made them, with
pending, claimed and done deliveries; opening them keeps every delivery and every lease,
and counts each batch's size.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flnotify import Outcome
from flnotify.errors import OutboxError
from flnotify.outbox import Outbox, OutboxState, PostgresOutbox

NOW = 1_700_000_000.0
TOKEN = "a" * 32

_ROWS_TABLE = """
CREATE TABLE flnotify_outbox_meta (key {text} PRIMARY KEY, value {text} NOT NULL);
CREATE TABLE flnotify_outbox_batches (
    id {text} PRIMARY KEY, payload {text} NOT NULL, created_at {real} NOT NULL{batch_size}
);
CREATE TABLE flnotify_outbox (
    seq {serial} PRIMARY KEY {autoincrement},
    batch_id {text} NOT NULL REFERENCES flnotify_outbox_batches (id) ON DELETE CASCADE,
    receiver_id {text} NOT NULL,
    message_endpoint {text} NOT NULL,
    message_id {text} NOT NULL UNIQUE,
    state {text} NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'claimed', 'done')),
    claim_token {text},{lease_column}
    claims INTEGER NOT NULL DEFAULT 0,
    outcome {text} CHECK (outcome IN ('delivered', 'rejected', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    error {text},
    error_kind {text},
    elapsed {real},
    recorded_at {real}
);
"""
"""The tables of schemas 1 to 3 (1: ``lease_until`` on every row; 3: a batch's size)."""

_V1_TABLES = """
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


_SQLITE = {"text": "TEXT", "real": "REAL", "serial": "INTEGER", "autoincrement": "AUTOINCREMENT"}
_POSTGRES = {"text": "text", "real": "double precision", "serial": "bigserial", "autoincrement": ""}


def _tables(schema: int, types: dict[str, str]) -> str:
    """The tables of schema 1 or 3 in one database's types, with their rows."""
    one = schema == 1
    return (_ROWS_TABLE + (_V1_TABLES if one else _V3_TABLES)).format(
        lease_column=f"\n    lease_until {types['real']}," if one else "",
        batch_size="" if one else ",\n    size INTEGER NOT NULL DEFAULT 0",
        now=NOW,
        until=NOW + 30,
        rid=uuid.UUID(int=1),
        token=TOKEN,
        **types,
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
    script = _tables(1, _SQLITE)
    conn.executescript(script)
    conn.close()
    clock = _Clock()

    def columns() -> set[str]:
        with sqlite3.connect(path) as conn:
            return {row[1] for row in conn.execute("PRAGMA table_info(flnotify_outbox)")}

    with Outbox(path, clock=clock) as outbox:
        _check_upgraded(outbox, clock, columns)
    with Outbox(path, clock=clock) as outbox:  # opened again: already schema 4
        assert outbox.counts()[OutboxState.CLAIMED] == 3


def test_postgres_tables_of_schema_1_open_with_their_leases(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        script = _tables(1, _POSTGRES)
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


_V3_TABLES = """
CREATE TABLE flnotify_outbox_claims (token {text} PRIMARY KEY, lease_until {real} NOT NULL);
INSERT INTO flnotify_outbox_meta VALUES ('schema', '3');
INSERT INTO flnotify_outbox_batches VALUES ('b1', '{{}}', {now}, 6);
INSERT INTO flnotify_outbox_claims VALUES ('a', {now} + 30), ('b', {now} + 10);
INSERT INTO flnotify_outbox
    (batch_id, receiver_id, message_endpoint, message_id, state, claim_token, claims, outcome)
VALUES
    ('b1', '{rid}', 'http://c0.test/m', 'done', 'done', 'a', 1, 'delivered'),
    ('b1', '{rid}', 'http://c1.test/m', 'a1', 'claimed', 'a', 1, NULL),
    ('b1', '{rid}', 'http://c2.test/m', 'pending', 'pending', NULL, 0, NULL),
    ('b1', '{rid}', 'http://c3.test/m', 'a2', 'claimed', 'a', 2, 'failed'),
    ('b1', '{rid}', 'http://c4.test/m', 'b1', 'claimed', 'b', 1, NULL),
    ('b1', '{rid}', 'http://c5.test/m', 'a3', 'claimed', 'a', 1, NULL);
"""


def _check_upgraded_from_3(outbox: Any, clock: _Clock) -> None:
    """Each claim's rows stay its own, with their leases, counts and recorded outcomes.

    Claim ``a`` holds three rows that a pending row and a row of claim ``b`` split into
    three runs.
    """
    entries = outbox.entries()
    assert [(e.message_id, e.state, e.lease_until, e.claims) for e in entries] == [
        ("done", OutboxState.DONE, None, 1),
        ("a1", OutboxState.CLAIMED, NOW + 30, 1),
        ("pending", OutboxState.PENDING, None, 0),
        ("a2", OutboxState.CLAIMED, NOW + 30, 2),
        ("b1", OutboxState.CLAIMED, NOW + 10, 1),
        ("a3", OutboxState.CLAIMED, NOW + 30, 1),
    ]
    assert outbox.counts() == {
        OutboxState.PENDING: 1,
        OutboxState.CLAIMED: 4,
        OutboxState.DONE: 1,
    }
    assert [e.message_id for e in outbox.claim(10, lease_seconds=60).entries] == ["pending"]
    clock.now = NOW + 10
    assert [(e.message_id, e.claims) for e in outbox.claim(10, 60).entries] == [("b1", 2)]
    clock.now = NOW + 30
    again = outbox.claim(10, lease_seconds=60)
    assert [(e.message_id, e.claims, e.outcome) for e in again.entries] == [
        ("a1", 2, None),
        ("a2", 3, Outcome.FAILED),  # recorded, its callbacks not run: they run again
        ("a3", 2, None),
    ]
    assert outbox.next_claimable() == NOW + 60


def test_an_sqlite_file_of_schema_3_opens_with_its_claims(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_tables(3, _SQLITE))
    conn.close()
    clock = _Clock()
    with Outbox(path, clock=clock) as outbox:
        _check_upgraded_from_3(outbox, clock)


def test_postgres_tables_of_schema_3_open_with_their_claims(postgres_url: str) -> None:
    script = _tables(3, _POSTGRES)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(script.encode())
    clock = _Clock()
    with PostgresOutbox(postgres_url, clock=clock) as outbox:
        _check_upgraded_from_3(outbox, clock)


def test_an_unknown_schema_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with Outbox(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE flnotify_outbox_meta SET value = '9' WHERE key = 'schema'")
    conn.close()
    with pytest.raises(OutboxError, match="outbox schema 9 is not this flnotify's"):
        Outbox(path)
