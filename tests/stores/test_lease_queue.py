"""The lease queue every outbox and mailbox store is built on, against a model.

A hypothesis state machine takes, renews, releases, settles, finishes, re-drives and
prunes rows with an injected clock, on SQLite and on a real PostgreSQL (started by the
tests), and checks each answer and the whole table against a dictionary that does the same
by the rules: the model keeps a holder and a lease on every row, as the mailbox's column
layout does; the outbox's claims (runs of rows) must behave the same.
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

# the outbox's lease table, on tables of the test's own: its leases claims of runs of rows
# (as the outbox keeps them), or a column of every row (as the mailbox keeps them)
TABLE = attrs.evolve(
    OUTBOX, table="lq_rows", parent="lq_parents", take_index=None, claims="lq_claims"
)
LAYOUTS = {
    "claims": TABLE,
    "lease column": attrs.evolve(
        TABLE,
        claims=None,
        takeable="state = 'pending'",
        take_set="state = 'claimed', claims = claims + 1",
        done_set="state = 'done', lease_until = NULL",
    ),
}
CLAIMS_SCHEMA = (
    "CREATE TABLE lq_claims (token {text} NOT NULL, first_seq {int} NOT NULL, "
    "last_seq {int} NOT NULL, lease_until {real} NOT NULL, PRIMARY KEY (token, first_seq));"
)

_SQLITE_SCHEMA = """
CREATE TABLE lq_parents (id TEXT PRIMARY KEY);
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
        if self.table.claims is not None:  # a claim row per run taken, none else
            p = self.dialect.param
            sql = f"SELECT COUNT(*) FROM lq_claims WHERE token = {p('holder')}"  # noqa: S608
            ((n,),) = self.execute(sql, {"holder": holder}).fetchall()
            assert n == self._runs(takeable)
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

    @rule(holder=holders, pick=st.lists(st.integers(1, 40), max_size=5))
    def finish(self, holder: str, pick: list[int]) -> None:
        ids = [f"m{seq}" for seq in pick]
        finishable = [
            row
            for row in self.rows.values()
            if row.message_id in ids
            and row.holder == holder
            and row.state == "claimed"
            and row.outcome is not None
        ]
        got = self.queue.finish(self.execute, holder=holder, message_ids=ids)
        assert got == len(finishable)
        for row in finishable:
            row.state, row.lease_until = "done", None

    @rule(pick=st.lists(st.integers(1, 40), max_size=5))
    def redrive(self, pick: list[int]) -> None:
        """Done rows back to pending, as an operator's retry does; no claim holds them."""
        seqs = sorted({seq for seq in pick if seq in self.rows and self.rows[seq].state == "done"})
        if not seqs:
            return
        source = self.dialect.rows_source("seqs", (("seq", "bigint"),))
        self.execute(
            "UPDATE lq_rows SET state = 'pending', outcome = NULL, recorded_at = NULL, "  # noqa: S608
            f"claim_token = NULL, lease_until = NULL WHERE seq IN (SELECT v.seq FROM {source})",
            self.dialect.bind_rows("seqs", [(seq,) for seq in seqs], 1),
        )
        self.queue.free(self.execute, seqs)
        for seq in seqs:
            row = self.rows[seq]
            row.state, row.holder, row.lease_until = "pending", None, None
            row.outcome, row.settled_at = None, None

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

    def _runs(self, taken: list[int]) -> int:
        """How many runs ``taken`` is: a row another live lease holds ends a run."""
        held = [
            seq
            for seq, row in self.rows.items()
            if row.state == "claimed" and row.lease_until is not None and row.lease_until > self.now
        ]
        return sum(
            1
            for i, seq in enumerate(taken)
            if i == 0 or any(taken[i - 1] < other < seq for other in held)
        )

    def _held(self, holder: str) -> list[Row]:
        return [row for row in self.rows.values() if row.holder == holder and row.state != "done"]

    # -- the whole table ------------------------------------------------------------------

    @invariant()
    def table_is_the_model(self) -> None:
        if self.table.claims is None:
            state, holder, lease, claims = "state", "claim_token", "lease_until", "claims"
        else:  # a row's claim is the claim whose run it is in
            held = f"(state <> 'done' AND EXISTS {self.table.covering('token')})"
            state = f"CASE WHEN state = 'done' THEN 'done' WHEN {held} THEN 'claimed' "
            state += "ELSE 'pending' END"
            holder = self.table.covering("token")
            lease = self.table.covering("lease_until")
            claims = f"claims + CASE WHEN {held} THEN 1 ELSE 0 END"
        rows = self.execute(
            f"SELECT seq, message_id, batch_id, {state}, "  # noqa: S608
            f"CASE WHEN state <> 'done' THEN {holder} END, "
            f"CASE WHEN state <> 'done' THEN {lease} END, {claims}, outcome, recorded_at "
            "FROM lq_rows ORDER BY seq",
            {},
        ).fetchall()
        expected = [
            (
                seq,
                r.message_id,
                r.parent,
                r.state,
                r.holder if r.state != "done" else None,
                r.lease_until,
                r.claims,
                r.outcome,
                r.settled_at,
            )
            for seq, r in sorted(self.rows.items())
        ]
        assert [tuple(row) for row in rows] == expected
        if self.table.claims is not None:  # a claim row goes once its run holds no open row
            ((empty,),) = self.execute(
                "SELECT COUNT(*) FROM lq_claims AS c WHERE NOT EXISTS (SELECT 1 FROM lq_rows AS r"
                " WHERE r.state <> 'done' AND r.seq BETWEEN c.first_seq AND c.last_seq)",
                {},
            ).fetchall()
            assert empty == 0
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
        conn.executescript(
            _SQLITE_SCHEMA + CLAIMS_SCHEMA.format(text="TEXT", int="INTEGER", real="REAL")
        )
        return conn.execute, conn.close

    _run(SQLITE, LAYOUTS[layout], connect)


@pytest.fixture
def pg_connect(postgres_url: str) -> Iterator[Callable[[], tuple[Execute, Callable[[], None]]]]:
    psycopg = pytest.importorskip("psycopg")
    conn: Any = psycopg.connect(postgres_url, autocommit=True)

    def connect() -> tuple[Execute, Callable[[], None]]:
        cur = conn.cursor()
        claims = CLAIMS_SCHEMA.format(text="text", int="bigint", real="double precision")
        cur.execute(("DROP TABLE IF EXISTS lq_claims; " + _PG_SCHEMA + claims).encode())
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


def test_a_renewal_walks_an_index_on_the_holder() -> None:
    """Renewing a lease kept in a column finds the holder's rows by its index, not a scan."""
    from flnotify.mailbox._model import LEASES as MAILBOX

    conn = sqlite3.connect(":memory:")
    conn.executescript(
        "CREATE TABLE flnotify_mailbox (seq INTEGER PRIMARY KEY, owner TEXT, state TEXT,"
        " lease_until REAL);"
        "CREATE INDEX by_owner ON flnotify_mailbox (owner) WHERE state != 'done';"
    )
    queue = LeaseQueue(MAILBOX, SQLITE)
    params = {"holder": "a", "lease": 1.0, "now": 0.0}
    plan = conn.execute(f"EXPLAIN QUERY PLAN {queue.renew_statement}", params).fetchall()
    assert any("SEARCH" in row[-1] and "(owner=?)" in row[-1] for row in plan), plan
