"""The embedded outbox store: one SQLite file, shared by the processes of one machine."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import attrs

from .._closing import Closing
from .._codec import Codec
from .._lease import SQLITE, LeaseQueue
from .._notification import Notification
from .._report import Delivery
from .._sqlite import SQLiteConnection, fspath, set_up_durable_schema
from .._validators import is_callable, of_type, positive
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
    outcome_json,
    outcome_rows,
    requeue_failed,
    schema,
)

__all__ = ["Outbox"]

_QUEUE = LeaseQueue(LEASES, SQLITE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flnotify_outbox_batches (
    id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS flnotify_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL REFERENCES flnotify_outbox_batches (id) ON DELETE CASCADE,
    receiver_id TEXT NOT NULL,
    message_endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'claimed', 'done')),
    claim_token TEXT,
    claims INTEGER NOT NULL DEFAULT 0,
    outcome TEXT CHECK (outcome IN ('delivered', 'rejected', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    error TEXT,
    error_kind TEXT,
    elapsed REAL,
    recorded_at REAL
);
CREATE TABLE IF NOT EXISTS flnotify_outbox_claims (
    token TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    lease_until REAL NOT NULL,
    PRIMARY KEY (token, first_seq)
);
CREATE INDEX IF NOT EXISTS flnotify_outbox_batch ON flnotify_outbox (batch_id);
DROP INDEX IF EXISTS flnotify_outbox_open;
CREATE INDEX IF NOT EXISTS flnotify_outbox_undone ON flnotify_outbox (seq) WHERE state != 'done';
DROP INDEX IF EXISTS flnotify_outbox_token;
"""
# A claim is a row of flnotify_outbox_claims per run of deliveries it holds (its token,
# the run's first and last seq, its lease): claiming, renewing and releasing write those
# rows only. (claim_token, and the state 'claimed', are schema 3's, no longer written.)
# The open rows in claim order: an outcome (-> done) takes the row out of this index.

# Every hot statement takes or returns a whole batch in one step (rows as one JSON array):
# sqlite3 gives up the GIL around each step, and a step per row made the database thread
# queue for the GIL behind the event loop once per row.
_CLAIMED = f"""
SELECT
    (SELECT json_group_array(json_array({claimed_columns(":until")})) FROM flnotify_outbox
        WHERE seq IN (SELECT value FROM json_each(:seqs))),
    (SELECT json_group_object(id, json_array(payload, size)) FROM flnotify_outbox_batches
        WHERE id IN (SELECT batch_id FROM flnotify_outbox
            WHERE seq IN (SELECT value FROM json_each(:seqs))))
"""  # noqa: S608 - constants only

_PUT = """
INSERT INTO flnotify_outbox (batch_id, receiver_id, message_endpoint, message_id)
SELECT :batch, json_extract(value, '$[0]'), json_extract(value, '$[1]'),
    json_extract(value, '$[2]')
FROM json_each(:rows) ORDER BY key
"""


@attrs.define(eq=False)
class Outbox(Closing):
    """Notifications waiting to be delivered, one row per receiver, in an SQLite file.

    Several processes of one machine may share the file (WAL mode; claims are made in
    ``BEGIN IMMEDIATE`` transactions, so two never take the same row). What
    [`put`][flnotify.outbox.Outbox.put] returned is on disk (``synchronous=FULL``), and so
    is an outcome recorded before its callbacks run, and their end. Claims, leases and
    outcomes with no callbacks to follow are committed without waiting for the disk
    (``NORMAL``): a power cut or an OS crash (not a process crash) may undo the last of
    them, which costs a resend with the same ``webhook-id``, as a crash does anyway.
    For several hosts use [`PostgresOutbox`][flnotify.outbox.PostgresOutbox]. Use it as a
    context manager or call [`close`][flnotify.outbox.Outbox.close].

    Args:
        path: The database file (it may also hold other tables, e.g. a
            [`SQLiteTrainingRepository`][flnotify.SQLiteTrainingRepository]'s).
        codec: Encodes notifications on `put` (dispatchers decode with it too); its
            registry must know every notification class that is put.
        clock: Epoch seconds for leases; shared by all processes, so a wall clock.
        busy_timeout: Seconds to wait for another process's write lock.

    Raises:
        OutboxError: The file cannot be opened or is not an SQLite database.
    """

    path: str = attrs.field(converter=fspath)
    codec: Codec = attrs.field(factory=Codec, validator=of_type(Codec), repr=False)
    clock: Callable[[], float] = attrs.field(default=time.time, validator=is_callable, repr=False)
    busy_timeout: float = attrs.field(default=30.0, validator=positive, repr=False)
    _db: SQLiteConnection = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._db = SQLiteConnection.open(
            self.path,
            label="outbox",
            error=OutboxError,
            prepare=self._prepare,
            timeout=self.busy_timeout,
            wrap_errors=True,
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        set_up_durable_schema(conn, self.path, **schema(_SCHEMA))

    def close(self) -> None:
        """Close the connection; idempotent."""
        self._db.close()

    def now(self) -> float:
        """The outbox clock: ``clock()``."""
        return self.clock()

    def _transaction(
        self, *, write: bool = True, synced: bool = True
    ) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction (``BEGIN IMMEDIATE`` to write); sqlite3 errors become OutboxError.

        ``synced=False`` for what a power cut may undo at the cost of a resend with the same
        ``webhook-id`` only (claims, leases, outcomes with no callbacks to follow).
        """
        return self._db.transaction(self, write=write, synced=synced)

    # -- writing -----------------------------------------------------------------------

    def put(
        self, notification: Notification[Any], *, message_ids: Sequence[str] | None = None
    ) -> str:
        """Store ``notification`` for each of its receivers; committed when this returns.

        Args:
            notification: What to deliver, and to whom; receivers are stored by id and
                endpoint only.
            message_ids: One ``webhook-id`` per receiver; fresh random ids by default.

        Returns:
            The batch id, to look the deliveries up with
            [`entries`][flnotify.outbox.Outbox.entries].

        Raises:
            ConfigurationError: ``message_ids`` does not match the receivers, or a
                receiver's id is not a UUID.
            DecodeError: The codec cannot read the notification back (e.g. its class is
                not in the codec's registry), so no dispatcher could.
            OutboxError: The database refused the write (e.g. a message id is taken).
        """
        batch_id, payload, rows = new_batch(self.codec, notification, message_ids)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO flnotify_outbox_batches (id, payload, created_at, size) "
                "VALUES (?, ?, ?, ?)",
                (batch_id, payload, self.clock(), len(rows)),
            )
            conn.execute(_PUT, {"batch": batch_id, "rows": outcome_json(rows)})
        return batch_id

    async def aput(
        self, notification: Notification[Any], *, message_ids: Sequence[str] | None = None
    ) -> str:
        """[`put`][flnotify.outbox.Outbox.put] from async code (in a worker thread)."""
        return await asyncio.to_thread(self.put, notification, message_ids=message_ids)

    # -- claiming and recording (what dispatchers do) ------------------------------------

    def claim(self, limit: int, lease_seconds: float) -> Claim:
        """Take up to ``limit`` claimable deliveries (pending, or with an expired lease).

        One ``BEGIN IMMEDIATE`` transaction: no two claims ever hold the same row at once.
        A claim with no entries means nothing is claimable now.
        """
        check_claim_args(limit, lease_seconds)
        token = secrets.token_hex(16)
        with self._transaction(synced=False) as conn:
            seqs, until = _QUEUE.claim(
                conn.execute, holder=token, lease=lease_seconds, limit=limit, now=self.clock()
            )
            if not seqs:
                return Claim(token, until, (), {})
            read = {"seqs": json.dumps(seqs), "until": until}
            rows, payloads = conn.execute(_CLAIMED, read).fetchone()
        entries = claimed_entries(json.loads(rows))  # by seq: put order
        return Claim(token, until, entries, *batches_of(json.loads(payloads)))

    def renew(self, claim: Claim, lease_seconds: float) -> int:
        """Extend the lease of the claim's unfinished entries; how many still belong to it."""
        with self._transaction(synced=False) as conn:
            return _QUEUE.renew(
                conn.execute, holder=claim.token, lease=lease_seconds, now=self.clock()
            )

    def record(
        self, claim: Claim, deliveries: Iterable[Delivery], *, done: bool = False
    ) -> list[Delivery]:
        """Record outcomes, each at most once, and only while ``claim`` still holds the row.

        All of them in one statement of one transaction.

        Args:
            claim: The claim the deliveries were sent under.
            deliveries: Final deliveries, matched to rows by ``message_id``.
            done: Mark them done at once (no callbacks to run); otherwise call
                [`finish`][flnotify.outbox.Outbox.finish] after the callbacks.

        Returns:
            The deliveries whose outcome this call recorded (others were recorded already,
            or their row was claimed again after this claim's lease expired).
        """
        deliveries = list(deliveries)
        if not deliveries:
            return []
        with self._transaction(synced=not done) as conn:
            recorded = _QUEUE.settle(
                conn.execute,
                holder=claim.token,
                rows=outcome_rows(deliveries),
                now=self.clock(),
                done=done,
            )
        if len(recorded) == len(deliveries):
            return deliveries
        return [d for d in deliveries if d.message_id in recorded]

    def finish(self, claim: Claim, message_ids: Iterable[str]) -> int:
        """Mark recorded deliveries done once their callbacks ran; how many were."""
        ids = list(message_ids)
        with self._transaction() as conn:
            return _QUEUE.finish(conn.execute, holder=claim.token, message_ids=ids)

    def release(self, claim: Claim) -> int:
        """Give back the claim's unfinished entries without waiting for the lease to end."""
        with self._transaction(synced=False) as conn:
            return _QUEUE.release(conn.execute, holder=claim.token, now=self.clock())

    # -- reading and operating ---------------------------------------------------------

    def entries(self, batch_id: str | None = None) -> list[OutboxEntry]:
        """Every delivery (of one batch, if given), in the order they were put."""
        where, args = ("WHERE batch_id = ?", (batch_id,)) if batch_id is not None else ("", ())
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM flnotify_outbox {where} ORDER BY seq",  # noqa: S608 - constants only
                args,
            ).fetchall()
        return entries_of(rows)

    def batch_size(self, batch_id: str) -> int:
        """How many deliveries (receivers) one ``put`` stored: the size of that send."""
        with self._transaction(write=False) as conn:
            row = conn.execute(
                "SELECT size FROM flnotify_outbox_batches WHERE id = ?", (batch_id,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def counts(self) -> dict[OutboxState, int]:
        """How many deliveries are in each state (every state present)."""
        with self._transaction(write=False) as conn:
            stored = dict(
                conn.execute("SELECT state, COUNT(*) FROM flnotify_outbox GROUP BY state")
            )
            _, held, _, _ = _QUEUE.tally(conn.execute, now=self.clock())
        return counts_of(stored, held)

    def failed(self, limit: int | None = None) -> list[OutboxEntry]:
        """Done deliveries whose outcome is failed, in the order they were put."""
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM flnotify_outbox "  # noqa: S608 - constants only
                "WHERE state = 'done' AND outcome = 'failed' ORDER BY seq LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return entries_of(rows)

    def retry_failed(self, message_ids: Iterable[str] | None = None) -> int:
        """Make failed deliveries pending again, with the same ``webhook-id``; how many.

        Args:
            message_ids: Only these; every failed delivery by default.
        """
        ids = None if message_ids is None else list(message_ids)
        with self._transaction() as conn:
            return requeue_failed(conn.execute, _QUEUE, ids)

    def next_claimable(self) -> float | None:
        """When a delivery may next be claimed: ``None`` if none is open, else epoch seconds.

        A pending delivery is claimable now (the current time is returned); a claimed one
        when its lease ends.
        """
        with self._transaction(write=False) as conn:
            return next_claimable_of(_QUEUE.tally(conn.execute, now=self.clock()))

    def prune(self, before: float) -> int:
        """Delete done deliveries recorded before ``before`` (epoch seconds); how many.

        Batches left without deliveries go too.
        """
        with self._transaction() as conn:
            return _QUEUE.prune(conn.execute, before=before)
