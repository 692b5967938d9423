"""The shared outbox store: PostgreSQL, for several server replicas and dispatcher hosts.

Needs psycopg 3 (``pip install 'flnotify[postgres]'``). Claims are taken one at a time
under an advisory lock (a claim is a few statements that write claim rows only), so
dispatchers on any number of hosts claim disjoint rows. Leases are measured by the
database server's clock, so the hosts' clocks need not agree. Every psycopg error is
translated here, at one edge, into [`OutboxError`][flnotify.errors.OutboxError].
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import attrs

from .._closing import Closing
from .._codec import Codec
from .._lease import POSTGRES, LeaseQueue
from .._notification import Notification
from .._postgres import NOW, PostgresConnection, prepared, redacted, set_up_schema
from .._report import Delivery
from .._validators import callable_or_none, of_type, positive
from ._model import (
    COLUMNS,
    LEASES,
    Claim,
    OutboxEntry,
    OutboxError,
    OutboxState,
    batches_of,
    check_claim_args,
    claimed_columns,
    claimed_entries,
    counts_of,
    entries_of,
    new_batch,
    next_claimable_of,
    outcome_rows,
    requeue_failed,
    schema,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresOutbox"]

_QUEUE = LeaseQueue(LEASES, POSTGRES)
_SCHEMA_LOCK = zlib.crc32(b"flnotify_outbox schema")  # serialises concurrent set-ups

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flnotify_outbox_batches (
    id text PRIMARY KEY,
    payload text NOT NULL,
    created_at double precision NOT NULL,
    size integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS flnotify_outbox (
    seq bigserial PRIMARY KEY,
    batch_id text NOT NULL REFERENCES flnotify_outbox_batches (id) ON DELETE CASCADE,
    receiver_id text NOT NULL,
    message_endpoint text NOT NULL,
    message_id text NOT NULL UNIQUE,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'claimed', 'done')),
    claim_token text,
    claims integer NOT NULL DEFAULT 0,
    outcome text CHECK (outcome IN ('delivered', 'rejected', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    status_code integer,
    error text,
    error_kind text,
    elapsed double precision,
    recorded_at double precision
);
CREATE TABLE IF NOT EXISTS flnotify_outbox_claims (
    token text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    lease_until double precision NOT NULL,
    PRIMARY KEY (token, first_seq)
);
CREATE INDEX IF NOT EXISTS flnotify_outbox_open ON flnotify_outbox (seq) WHERE state <> 'done';
"""
# A claim is a row of flnotify_outbox_claims per run of deliveries it holds (its token,
# the run's first and last seq, its lease): claiming, renewing and releasing write those
# rows only. (claim_token, and the state 'claimed', are schema 3's, no longer written.)
# Few indexes on purpose: every outcome changes ``state``, which the partial index's
# predicate reads, so no outcome is a HOT update and each writes one entry into every
# index of the table. Claims walk flnotify_outbox_open; outcomes find rows by message_id
# within the seq range of the claim's runs.

# Every hot call is one statement, sent as one round trip in its own (autocommit)
# transaction; %(now)s is NULL unless the outbox has a clock of its own, and then the
# server's clock is read inside the statement.
_NOW = NOW

# The rows a claim took, and their batches' payloads and sizes.
_CLAIMED = (
    "SELECT (SELECT json_agg(json_build_array("  # noqa: S608 - constants only
    f"{claimed_columns('%(until)s::double precision')}) ORDER BY seq) "
    "FROM flnotify_outbox WHERE seq = ANY(%(seqs)s::bigint[])), "
    "(SELECT json_object_agg(b.id, json_build_array(b.payload, b.size)) "
    "FROM flnotify_outbox_batches AS b WHERE b.id IN "
    "(SELECT batch_id FROM flnotify_outbox WHERE seq = ANY(%(seqs)s::bigint[])))"
)


def _prepare_outcomes(conn: psycopg.Connection[Any]) -> None:
    # A fresh outbox has no statistics yet, and the planner then joins a batch of outcomes
    # to its rows by a nested loop over both (rows x batch comparisons, 0.2 s for 500
    # outcomes); hash joins are right for every statement here. The setting belongs to
    # this connection only.
    conn.execute("SET enable_nestloop = off")
    # A statement that still needs a nested loop (a row's claim is a range of seqs) then
    # costs more than jit_above_cost, and compiling it took 40-220 ms of a statement that
    # runs in 1-2 ms: no statement here gains from JIT.
    conn.execute("SET jit = off")


def _prepare(conn: psycopg.Connection[Any]) -> None:
    _prepare_outcomes(conn)
    set_up_schema(conn, lock=_SCHEMA_LOCK, **schema(_SCHEMA))


@attrs.define(eq=False)
class PostgresOutbox(Closing):
    """The [`Outbox`][flnotify.outbox.Outbox] semantics on a PostgreSQL database.

    Any number of processes on any number of hosts may share the database: claims are
    taken one at a time under an advisory lock (a millisecond or two each), so two
    dispatchers never hold the same row. Every write is one transaction, committed when
    the call returns: durable as the server's settings make it, except claims, leases and
    outcomes with no callbacks to follow, committed with ``synchronous_commit`` off (a
    crash of the server may undo the last of them: a resend with the same ``webhook-id``).
    One connection per instance, used by one thread at a time, and a second one for outcomes
    ([`record`][flnotify.outbox.PostgresOutbox.record],
    [`finish`][flnotify.outbox.PostgresOutbox.finish]), opened when the first is recorded,
    so that a dispatcher's outcomes are written while its next claim runs; each is
    reopened after the server dropped it.

    Args:
        url: A libpq connection string or URL, e.g.
            ``"postgresql://flnotify@db.internal/fl"``.
        codec: Encodes notifications on `put` (dispatchers decode with it too); its
            registry must know every notification class that is put.
        clock: Epoch seconds for leases; by default the database server's clock, shared
            by every host.
        connect_timeout: Seconds to wait for a connection.

    Raises:
        OutboxError: The database cannot be reached or holds another outbox schema.
        ConfigurationError: psycopg is not installed.
    """

    url: str = attrs.field(validator=of_type(str, "str (a connection string)"), repr=redacted)
    codec: Codec = attrs.field(factory=Codec, validator=of_type(Codec), repr=False)
    clock: Callable[[], float] | None = attrs.field(
        default=None, validator=callable_or_none, repr=False
    )
    connect_timeout: float = attrs.field(default=10.0, validator=positive, repr=False)
    _db: PostgresConnection = attrs.field(init=False, repr=False)
    _outcomes: PostgresConnection | None = attrs.field(init=False, default=None, repr=False)
    _opening: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def __attrs_post_init__(self) -> None:
        self._db = self._connect(_prepare)

    def _connect(self, prepare: Callable[[psycopg.Connection[Any]], None]) -> PostgresConnection:
        return PostgresConnection.open(
            self.url,
            who="PostgresOutbox",
            label="outbox",
            error=OutboxError,
            prepare=prepare,
            connect_timeout=self.connect_timeout,
        )

    def _transaction(
        self, *, single: bool = False, synced: bool = True
    ) -> AbstractContextManager[psycopg.Cursor[Any]]:
        """One transaction on the connection; psycopg errors become OutboxError.

        ``single``: the body runs one statement, its own transaction (no BEGIN/COMMIT
        round trips). ``synced=False`` for what a crash of the server may undo at the cost
        of a resend with the same ``webhook-id`` only (claims, leases, outcomes with no
        callbacks to follow).
        """
        return self._db.cursor(self, single=single, synced=synced)

    def _outcome_statement(self, *, synced: bool) -> AbstractContextManager[psycopg.Cursor[Any]]:
        """A cursor for one statement on the outcomes' connection (opened on first use)."""
        with self._opening:
            if self._outcomes is None and not self._db.closed:
                self._outcomes = self._connect(_prepare_outcomes)
            db = self._db if self._outcomes is None else self._outcomes
        return db.cursor(self, single=True, synced=synced)

    def _clock(self) -> float | None:
        """The ``now`` parameter of the statements: ``None`` reads the server's clock."""
        return None if self.clock is None else self.clock()

    def _now(self, cur: psycopg.Cursor[Any]) -> float:
        cur.execute(f"SELECT {_NOW}", {"now": self._clock()}, prepare=True)
        row = cur.fetchone()
        assert row is not None  # noqa: S101 - SELECT without FROM returns one row
        return float(row[0])

    def now(self) -> float:
        """The outbox clock: ``clock()``, or the database server's time."""
        if self.clock is not None:
            return self.clock()
        with self._transaction(single=True) as cur:
            return self._now(cur)

    def close(self) -> None:
        """Close the connections; idempotent."""
        with self._opening:
            self._db.close()
            if self._outcomes is not None:
                self._outcomes.close()

    # -- writing -----------------------------------------------------------------------

    def put(
        self, notification: Notification[Any], *, message_ids: Sequence[str] | None = None
    ) -> str:
        """Store ``notification`` for each of its receivers; committed when this returns.

        The rows go in with one ``COPY``. Same arguments, result and errors as
        [`Outbox.put`][flnotify.outbox.Outbox.put].
        """
        batch_id, payload, rows = new_batch(self.codec, notification, message_ids)
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO flnotify_outbox_batches (id, payload, created_at, size) "
                "VALUES (%s, %s, %s, %s)",
                (batch_id, payload, self._now(cur), len(rows)),
            )
            with cur.copy(
                "COPY flnotify_outbox (batch_id, receiver_id, message_endpoint, message_id) "
                "FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row((batch_id, *row))
        return batch_id

    async def aput(
        self, notification: Notification[Any], *, message_ids: Sequence[str] | None = None
    ) -> str:
        """[`put`][flnotify.outbox.PostgresOutbox.put] from async code (in a worker thread)."""
        return await asyncio.to_thread(self.put, notification, message_ids=message_ids)

    # -- claiming and recording (what dispatchers do) ------------------------------------

    def claim(self, limit: int, lease_seconds: float) -> Claim:
        """Take up to ``limit`` claimable deliveries (pending, or with an expired lease).

        A claim taken at the same moment by another dispatcher is waited for.
        """
        check_claim_args(limit, lease_seconds)
        token = secrets.token_hex(16)
        with self._transaction(synced=False) as cur:
            seqs, until = _QUEUE.claim(
                prepared(cur), holder=token, lease=lease_seconds, limit=limit, now=self._clock()
            )
            if not seqs:
                return Claim(token, until, (), {})
            cur.execute(_CLAIMED, {"seqs": seqs, "until": until}, prepare=True)
            row = cur.fetchone()
        assert row is not None  # noqa: S101 - a SELECT of aggregates returns one row
        rows, payloads = row
        entries = claimed_entries(rows or ())  # by seq: put order
        return Claim(token, until, entries, *batches_of(payloads or {}))

    def renew(self, claim: Claim, lease_seconds: float) -> int:
        """Extend the lease of the claim's unfinished entries; how many still belong to it."""
        with self._transaction(single=True, synced=False) as cur:
            return _QUEUE.renew(
                prepared(cur), holder=claim.token, lease=lease_seconds, now=self._clock()
            )

    def record(
        self, claim: Claim, deliveries: Iterable[Delivery], *, done: bool = False
    ) -> list[Delivery]:
        """Record outcomes, each at most once, and only while ``claim`` still holds the row.

        All of them in one statement; see [`Outbox.record`][flnotify.outbox.Outbox.record].
        """
        deliveries = list(deliveries)
        if not deliveries:
            return []
        with self._outcome_statement(synced=not done) as cur:
            recorded = _QUEUE.settle(
                prepared(cur),
                holder=claim.token,
                rows=outcome_rows(deliveries),
                now=self._clock(),
                done=done,
            )
        return [d for d in deliveries if d.message_id in recorded]

    def finish(self, claim: Claim, message_ids: Iterable[str]) -> int:
        """Mark recorded deliveries done once their callbacks ran; how many were."""
        ids = list(message_ids)
        with self._outcome_statement(synced=True) as cur:
            return _QUEUE.finish(prepared(cur), holder=claim.token, message_ids=ids)

    def release(self, claim: Claim) -> int:
        """Give back the claim's unfinished entries without waiting for the lease to end."""
        with self._transaction(single=True, synced=False) as cur:
            return _QUEUE.release(prepared(cur), holder=claim.token, now=self._clock())

    # -- reading and operating ---------------------------------------------------------

    def entries(self, batch_id: str | None = None) -> list[OutboxEntry]:
        """Every delivery (of one batch, if given), in the order they were put."""
        with self._transaction() as cur:
            if batch_id is None:
                cur.execute(f"SELECT {COLUMNS} FROM flnotify_outbox ORDER BY seq")  # noqa: S608 - constants only
            else:
                cur.execute(
                    f"SELECT {COLUMNS} FROM flnotify_outbox WHERE batch_id = %s ORDER BY seq",  # noqa: S608 - constants only
                    (batch_id,),
                )
            return entries_of(cur.fetchall())

    def batch_size(self, batch_id: str) -> int:
        """How many deliveries (receivers) one ``put`` stored: the size of that send."""
        with self._transaction() as cur:
            cur.execute("SELECT size FROM flnotify_outbox_batches WHERE id = %s", (batch_id,))
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def counts(self) -> dict[OutboxState, int]:
        """How many deliveries are in each state (every state present)."""
        with self._transaction() as cur:
            cur.execute("SELECT state, COUNT(*) FROM flnotify_outbox GROUP BY state")
            stored = dict(cur.fetchall())
            _, held, _, _ = _QUEUE.tally(prepared(cur), now=self._clock())
        return counts_of(stored, held)

    def failed(self, limit: int | None = None) -> list[OutboxEntry]:
        """Done deliveries whose outcome is failed, in the order they were put."""
        with self._transaction() as cur:
            cur.execute(
                f"SELECT {COLUMNS} FROM flnotify_outbox "  # noqa: S608 - constants only
                "WHERE state = 'done' AND outcome = 'failed' ORDER BY seq LIMIT %s",
                (limit,),
            )
            return entries_of(cur.fetchall())

    def retry_failed(self, message_ids: Iterable[str] | None = None) -> int:
        """Make failed deliveries pending again, with the same ``webhook-id``; how many.

        Args:
            message_ids: Only these; every failed delivery by default.
        """
        ids = None if message_ids is None else list(message_ids)
        with self._transaction() as cur:
            return requeue_failed(prepared(cur), _QUEUE, ids)

    def next_claimable(self) -> float | None:
        """When a delivery may next be claimed: ``None`` if none is open, else epoch seconds."""
        with self._transaction(single=True) as cur:
            return next_claimable_of(_QUEUE.tally(prepared(cur), now=self._clock()))

    def prune(self, before: float) -> int:
        """Delete done deliveries recorded before ``before`` (epoch seconds); how many.

        Batches left without deliveries go too.
        """
        with self._transaction() as cur:
            return _QUEUE.prune(prepared(cur), before=before)
