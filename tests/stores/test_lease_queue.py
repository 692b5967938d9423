"""The lease queue every outbox and mailbox store is built on, against a model.

A hypothesis state machine takes, renews, releases, settles and prunes rows with an
injected clock, on SQLite and on a real PostgreSQL (started by the tests), and checks each
answer and the whole table against a dictionary that does the same by the rules.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from flnotify._lease import (
    OUTCOME_COLUMNS,
    POSTGRES,
    SQLITE,
    Dialect,
    Execute,
    LeaseQueue,
    LeaseTable,
)
from flnotify._postgres import prepared
from flnotify.outbox._model import LEASES as OUTBOX

# the outbox's lease table, on tables of the test's own: its leases one row a holder (the
# outbox's claims), or a column of every row (as the mailbox keeps them)
TABLE = attrs.evolve(
    OUTBOX, table="lq_rows", parent="lq_parents", take_index=None, leases="lq_claims"
)
LAYOUTS = {
    "lease table": TABLE,
    "lease column": attrs.evolve(TABLE, leases=None, done_set="state = 'done', lease_until = NULL"),
}

_SQLITE_SCHEMA = """
CREATE TABLE lq_parents (id TEXT PRIMARY KEY);
CREATE TABLE lq_claims (token TEXT PRIMARY KEY, lease_until REAL NOT NULL);
CREATE TABLE lq_rows (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL REFERENCES lq_parents (id),
    message_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'pending',
    claim_token TEXT, lease_until REAL, claims INTEGER NOT NULL DEFAULT 0,
    outcome TEXT, attempts INTEGER, status_code INTEGER, error TEXT, error_kind TEXT,
    elapsed REAL, recorded_at REAL
);
"""

_PG_SCHEMA = """
DROP TABLE IF EXISTS lq_rows; DROP TABLE IF EXISTS lq_parents; DROP TABLE IF EXISTS lq_claims;
CREATE TABLE lq_parents (id text PRIMARY KEY);
CREATE TABLE lq_claims (token text PRIMARY KEY, lease_until double precision NOT NULL);
CREATE TABLE lq_rows (
    seq bigserial PRIMARY KEY,
    batch_id text NOT NULL REFERENCES lq_parents (id),
    message_id text NOT NULL UNIQUE,
    state text NOT NULL DEFAULT 'pending',
    claim_token text, lease_until double precision, claims integer NOT NULL DEFAULT 0,
    outcome text, attempts integer, status_code integer, error text, error_kind text,
    elapsed double precision, recorded_at double precision
);
"""

START = 1_700_000_000.0


@attrs.define
class Row:
    """What the model knows of one row."""

    message_id: str
    parent: str
    state: str = "pending"
    # its lease (who holds it, until when, how often it was taken) and its outcome
    holder: str | None = attrs.field(default=None)
    lease_until: float | None = attrs.field(default=None)
    claims: int = attrs.field(default=0)
    outcome: str | None = attrs.field(default=None)
    settled_at: float | None = attrs.field(default=None)


class LeaseMachine(RuleBasedStateMachine):
    """The queue on a real database and the model, step by step."""

    holders = Bundle("holders")
    dialect: Dialect
    table: LeaseTable
    execute: Execute

    def __init__(self) -> None:
        super().__init__()
        self.queue = LeaseQueue(self.table, self.dialect)
        self.now = START
        self.rows: dict[int, Row] = {}
        self.next_seq = 1  # both databases count from 1 in a fresh table
        self.puts = 0

    # -- the clock -------------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.5, 1, 5, 30, 61]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    # -- rows arrive -------------------------------------------------------------------------

    @initialize(n=st.integers(1, 4))
    def first_put(self, n: int) -> None:
        self.put(n)

    @rule(n=st.integers(1, 4))
    def put(self, n: int) -> None:
        self.puts += 1
        parent = f"p{self.puts}"
        p = self.dialect.param
        self.execute(f"INSERT INTO lq_parents (id) VALUES ({p('id')})", {"id": parent})  # noqa: S608
        for _ in range(n):
            mid = f"m{self.next_seq}"
            sql = f"INSERT INTO lq_rows (batch_id, message_id) VALUES ({p('par')}, {p('mid')})"  # noqa: S608
            self.execute(sql, {"par": parent, "mid": mid})
            self.rows[self.next_seq] = Row(mid, parent)
            self.next_seq += 1

    # -- the queue ---------------------------------------------------------------------------

    @rule(target=holders, limit=st.integers(1, 5), lease=st.sampled_from([1.0, 10.0, 60.0]))
    def take(self, limit: int, lease: float) -> str:
        holder = uuid.uuid4().hex
        got = self.queue.take(self.execute, holder=holder, lease=lease, limit=limit, now=self.now)
        takeable = [
            seq
            for seq, row in sorted(self.rows.items())
            if row.state != "done"
            and (
                row.state == "pending"
                or (row.lease_until is not None and row.lease_until <= self.now)
            )
        ][:limit]
        assert got == takeable
        if self.table.leases is not None:  # one lease row a take that took rows, none else
            p = self.dialect.param
            sql = f"SELECT COUNT(*) FROM lq_claims WHERE token = {p('holder')}"  # noqa: S608
            ((n,),) = self.execute(sql, {"holder": holder}).fetchall()
            assert n == (1 if takeable else 0)
        for seq in takeable:
            row = self.rows[seq]
            row.state, row.holder, row.lease_until = "claimed", holder, self.now + lease
            row.claims += 1
        return holder

    @rule(holder=holders, lease=st.sampled_from([1.0, 10.0, 60.0]))
    def renew(self, holder: str, lease: float) -> None:
        held = self._held(holder)
        assert self.queue.renew(self.execute, holder=holder, lease=lease, now=self.now) == len(held)
        for row in held:
            row.lease_until = self.now + lease

    @rule(holder=holders)
    def release(self, holder: str) -> None:
        held = self._held(holder)
        assert self.queue.release(self.execute, holder=holder, now=self.now) == len(held)
        for row in held:
            row.lease_until = self.now

    # a list, not a set: the same id twice in one batch is settled once
    @rule(holder=holders, pick=st.lists(st.integers(1, 40), max_size=5), done=st.booleans())
    def settle(self, holder: str, pick: list[int], done: bool) -> None:
        ids = [f"m{seq}" for seq in pick]
        outcome_rows = [(mid, "delivered", 1, 200, None, None, 0.25) for mid in ids]
        got = self.queue.settle(
            self.execute, holder=holder, rows=outcome_rows, now=self.now, done=done
        )
        settleable = {
            row.message_id
            for row in self.rows.values()
            if row.message_id in ids
            and row.holder == holder
            and row.state == "claimed"
            and row.outcome is None
        }
        assert got == settleable
        for row in self.rows.values():
            if row.message_id in settleable:
                row.outcome, row.settled_at = "delivered", self.now
                if done:
                    row.state, row.lease_until = "done", None

    @rule(back=st.sampled_from([0.0, 1.0, 30.0]))
    def prune(self, back: float) -> None:
        before = self.now - back
        gone = [
            seq
            for seq, row in self.rows.items()
            if row.state == "done" and row.settled_at is not None and row.settled_at < before
        ]
        assert self.queue.prune(self.execute, before=before) == len(gone)
        for seq in gone:
            del self.rows[seq]

    def _held(self, holder: str) -> list[Row]:
        return [row for row in self.rows.values() if row.holder == holder and row.state != "done"]

    # -- the whole table ------------------------------------------------------------------

    @invariant()
    def table_is_the_model(self) -> None:
        lease = (
            "lease_until"
            if self.table.leases is None
            else "(SELECT c.lease_until FROM lq_claims AS c WHERE c.token = claim_token"
            " AND state <> 'done')"
        )
        rows = self.execute(
            f"SELECT seq, message_id, batch_id, state, claim_token, {lease}, claims, outcome,"  # noqa: S608
            " recorded_at FROM lq_rows ORDER BY seq",
            {},
        ).fetchall()
        expected = [
            (
                seq,
                r.message_id,
                r.parent,
                r.state,
                r.holder,
                r.lease_until,
                r.claims,
                r.outcome,
                r.settled_at,
            )
            for seq, r in sorted(self.rows.items())
        ]
        assert [tuple(row) for row in rows] == expected
        parents = {row[0] for row in self.execute("SELECT id FROM lq_parents", {}).fetchall()}
        assert {r.parent for r in self.rows.values()} <= parents
        if self.puts:
            # a parent goes once no row refers to it, at the first prune after that
            assert parents <= {f"p{i}" for i in range(1, self.puts + 1)}


def _run(
    dialect: Dialect,
    table: LeaseTable,
    connect: Callable[[], tuple[Execute, Callable[[], None]]],
) -> None:
    class Machine(LeaseMachine):
        def __init__(self) -> None:
            self.dialect = dialect
            self.table = table
            self.execute, self.close = connect()
            super().__init__()

        def teardown(self) -> None:
            self.close()

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_lease_queue_on_sqlite_is_the_model(layout: str) -> None:
    def connect() -> tuple[Execute, Callable[[], None]]:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.executescript(_SQLITE_SCHEMA)
        return conn.execute, conn.close

    _run(SQLITE, LAYOUTS[layout], connect)


@pytest.fixture
def pg_connect(postgres_url: str) -> Iterator[Callable[[], tuple[Execute, Callable[[], None]]]]:
    psycopg = pytest.importorskip("psycopg")
    conn: Any = psycopg.connect(postgres_url, autocommit=True)

    def connect() -> tuple[Execute, Callable[[], None]]:
        cur = conn.cursor()
        cur.execute(_PG_SCHEMA)
        return prepared(cur), cur.close

    yield connect
    conn.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_lease_queue_on_postgres_is_the_model(
    layout: str, pg_connect: Callable[[], tuple[Execute, Callable[[], None]]]
) -> None:
    _run(POSTGRES, LAYOUTS[layout], pg_connect)


def test_outcome_columns_are_what_the_stores_record() -> None:
    """The queue binds a settled row's columns in the order the stores' rows come in."""
    assert [name for name, _ in OUTCOME_COLUMNS] == [
        "message_id",
        "outcome",
        "attempts",
        "status_code",
        "error",
        "error_kind",
        "elapsed",
    ]


# -- one clock per store: the host's clock is never asked -----------------------------------


def test_postgres_leases_are_judged_by_the_server_clock_whatever_the_hosts_say(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two handles on hosts an hour apart: the leases they write and judge are the server's."""
    import time

    import flnotify
    from flnotify import Receiver
    from flnotify.mailbox import PostgresMailbox
    from flnotify.outbox import PostgresOutbox

    real = time.time
    model = uuid.UUID(int=9)
    notification = flnotify.TrainingStartNotification(
        receivers=[Receiver(uuid.UUID(int=i + 1), f"http://c{i}.test/m") for i in range(3)],
        body=flnotify.GlobalModelBody(global_model_uuid=model),
        training_uuid=model,
    )
    with PostgresOutbox(postgres_url) as here, PostgresOutbox(postgres_url) as there:
        here.put(notification)
        claim = here.claim(2, lease_seconds=30)
        assert abs(claim.lease_until - (here.now() + 30)) < 5
        monkeypatch.setattr(time, "time", lambda: real() + 3600)  # the other host, an hour on
        assert [e.message_id for e in there.claim(10, lease_seconds=30).entries] == [
            e.message_id for e in here.entries()
        ][2:]  # only the row nobody held: the lease still runs on the server's clock
        assert there.renew(claim, 30) == 2
    with PostgresMailbox(postgres_url) as mailbox:
        monkeypatch.setattr(time, "time", real)
        mailbox.post("snd", 1, b"{}", [(uuid.UUID(int=1), "m1")], owner="a", lease_seconds=30)
        monkeypatch.setattr(time, "time", lambda: real() + 3600)
        assert mailbox.adopt("b", 30, 10) == []  # a's lease has not ended on the server
        monkeypatch.setattr(time, "time", lambda: real() - 3600)
        assert mailbox.release("a") == 1
        assert [m.message_id for m in mailbox.adopt("b", 30, 10)] == ["m1"]
