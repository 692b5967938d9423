"""A durable outbox on SQLite: store every delivery first, send it later, lose none in a crash.

[`Outbox.put`][] commits one row per receiver (receiver, endpoint, ``webhook-id``) before
anything is sent. An [`OutboxDispatcher`][] claims open rows under a lease, sends them
with a [`Notifier`][] (each row keeps its ``webhook-id`` on every redelivery),
records each outcome once, then runs the callbacks. A row goes::

    pending --claim--> claimed --outcome recorded--> claimed + outcome --callbacks--> done
                         |                             |
                         +-- lease expired: claimable again (an outcome already recorded
                             is kept: only its callbacks run again, nothing is resent)

Delivery is at least once: a dispatcher that dies after a POST but before recording its
outcome leaves a claim whose lease expires, and the next claim sends the same message id
again. Outcomes are recorded exactly once (only the live claim may write them), and the
callbacks of a recorded outcome run at least once. See ``docs/scaling-out.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any
from uuid import UUID

import attrs

from ._attempt import Course, build_delivery, message_ids_for
from ._closing import Closing
from ._codec import Codec
from ._delivery import Notifier
from ._exceptions import (
    ConfigurationError,
    FlnotifyError,
    InternalError,
    TransportError,
    TransportErrorKind,
)
from ._hooks import NullHook
from ._notification import Notification
from ._report import Delivery
from ._sqlite import SQLiteConnection
from ._types import Outcome, Receiver
from ._validators import at_least_one, positive
from .callbacks import Callbacks, run_callbacks

__all__ = ["Claim", "Outbox", "OutboxDispatcher", "OutboxEntry", "OutboxError", "OutboxState"]

logger = logging.getLogger("flnotify")


class OutboxError(FlnotifyError):
    """The outbox's database could not be opened, read or written."""


class OutboxState(enum.Enum):
    """Where one delivery stands in the outbox."""

    PENDING = "pending"
    """Stored, not claimed yet."""
    CLAIMED = "claimed"
    """Held by a dispatcher until ``lease_until``; ``outcome`` is set once recorded."""
    DONE = "done"
    """Outcome recorded and callbacks run; never touched again."""


@attrs.frozen
class OutboxEntry:
    """One delivery (one receiver of one stored notification) as the outbox holds it.

    Args:
        batch_id: The [`Outbox.put`][] call it belongs to.
        receiver: Who it is for (id and endpoint as stored).
        message_id: Its ``webhook-id``, the same on every (re)delivery.
        state: Pending, claimed or done.
        outcome: The recorded outcome, once there is one.
        attempts: POSTs made by the claim that recorded the outcome.
        claims: How often the delivery was claimed (above 1: it was resumed).
        status_code: The last HTTP status, if the outcome came with one.
        error: Why it failed, as text, if it did without a final status.
        error_kind: The [`TransportErrorKind`][] of that error.
        elapsed: Seconds from first attempt to outcome in the recording claim.
        lease_until: When the current claim's lease ends (epoch seconds of the outbox clock).
    """

    batch_id: str
    receiver: Receiver
    message_id: str
    state: OutboxState
    outcome: Outcome | None = None
    attempts: int = 0
    claims: int = 0
    status_code: int | None = None
    error: str | None = None
    error_kind: TransportErrorKind | None = None
    elapsed: float | None = None
    lease_until: float | None = None


@attrs.frozen
class Claim:
    """Deliveries one dispatcher holds until ``lease_until`` (renewable), under ``token``.

    Args:
        token: The secret of this claim; only it may record outcomes of its entries.
        lease_until: When the lease ends unless renewed (epoch seconds, outbox clock).
        entries: The claimed deliveries, in the order they were put.
        payloads: The encoded notification of each batch among the entries.
    """

    token: str
    lease_until: float
    entries: tuple[OutboxEntry, ...]
    payloads: Mapping[str, str] = attrs.field(repr=False)

    def __len__(self) -> int:
        return len(self.entries)


_SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flnotify_outbox_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS flnotify_outbox_batches (
    id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS flnotify_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL REFERENCES flnotify_outbox_batches (id) ON DELETE CASCADE,
    receiver_id TEXT NOT NULL,
    message_endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'claimed', 'done')),
    claim_token TEXT,
    lease_until REAL,
    claims INTEGER NOT NULL DEFAULT 0,
    outcome TEXT CHECK (outcome IN ('delivered', 'rejected', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    error TEXT,
    error_kind TEXT,
    elapsed REAL,
    recorded_at REAL
);
CREATE INDEX IF NOT EXISTS flnotify_outbox_open ON flnotify_outbox (state, lease_until);
CREATE INDEX IF NOT EXISTS flnotify_outbox_batch ON flnotify_outbox (batch_id);
"""

_COLUMNS = (
    "batch_id, receiver_id, message_endpoint, message_id, state, outcome, attempts, claims, "
    "status_code, error, error_kind, elapsed, lease_until"
)

_CLAIM = f"""
UPDATE flnotify_outbox
SET state = 'claimed', claim_token = :token, lease_until = :until, claims = claims + 1
WHERE seq IN (
    SELECT seq FROM flnotify_outbox
    WHERE state = 'pending' OR (state = 'claimed' AND lease_until <= :now)
    ORDER BY seq LIMIT :limit
)
RETURNING seq, {_COLUMNS}
"""  # noqa: S608 - constants only

_RECORD = """
UPDATE flnotify_outbox
SET outcome = ?, attempts = ?, status_code = ?, error = ?, error_kind = ?, elapsed = ?,
    recorded_at = ?, state = ?, lease_until = CASE WHEN ? = 'done' THEN NULL ELSE lease_until END
WHERE message_id = ? AND claim_token = ? AND state = 'claimed' AND outcome IS NULL
"""

_FINISH = """
UPDATE flnotify_outbox SET state = 'done', lease_until = NULL
WHERE message_id = ? AND claim_token = ? AND state = 'claimed' AND outcome IS NOT NULL
"""


def _entry(row: Sequence[Any]) -> OutboxEntry:
    (batch, rid, endpoint, mid, state, outcome, attempts, claims, status, error, kind) = row[:11]
    elapsed, lease = row[11:13]
    return OutboxEntry(
        batch_id=batch,
        receiver=Receiver(UUID(rid), endpoint),
        message_id=mid,
        state=OutboxState(state),
        outcome=None if outcome is None else Outcome(outcome),
        attempts=attempts,
        claims=claims,
        status_code=status,
        error=error,
        error_kind=None if kind is None else TransportErrorKind(kind),
        elapsed=elapsed,
        lease_until=lease,
    )


def _storable(text: str) -> str:
    """Text SQLite can store: an error message may carry lone surrogates from a peer."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _fspath(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


@attrs.define(eq=False)
class Outbox(Closing):
    """Notifications waiting to be delivered, one row per receiver, in an SQLite file.

    Several processes may share the file (WAL mode; claims are made in ``BEGIN IMMEDIATE``
    transactions, so two never take the same row). Commits are synchronous (``FULL``):
    what [`put`][] returned is on disk. Use it as a context manager or call [`close`][].

    Args:
        path: The database file (it may also hold other tables, e.g. a
            [`SQLiteTrainingRepository`][flnotify.SQLiteTrainingRepository]'s).
        codec: Encodes notifications on [`put`][] (dispatchers decode with it too); its
            registry must know every notification class that is put.
        clock: Epoch seconds for leases; shared by all processes, so a wall clock.
        busy_timeout: Seconds to wait for another process's write lock.

    Raises:
        OutboxError: The file cannot be opened or is not an SQLite database.
    """

    path: str = attrs.field(converter=_fspath)
    codec: Codec = attrs.field(factory=Codec, repr=False)
    clock: Callable[[], float] = attrs.field(default=time.time, repr=False)
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
        conn.execute("PRAGMA foreign_keys = ON")
        if self.path not in {"", ":memory:"}:
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}")
        row = conn.execute("SELECT value FROM flnotify_outbox_meta WHERE key = 'schema'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO flnotify_outbox_meta VALUES ('schema', ?)", (_SCHEMA_VERSION,)
            )
        elif row[0] != _SCHEMA_VERSION:
            msg = f"outbox schema {row[0]} is not this flnotify's ({_SCHEMA_VERSION})"
            raise OutboxError(msg)
        conn.execute("COMMIT")

    # -- life cycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; idempotent."""
        self._db.close()

    def _transaction(self, *, write: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction (``BEGIN IMMEDIATE`` to write); sqlite3 errors become OutboxError."""
        return self._db.transaction(self, write=write)

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
            The batch id, to look the deliveries up with [`entries`][].

        Raises:
            ConfigurationError: ``message_ids`` does not match the receivers, or a
                receiver's id is not a UUID.
            DecodeError: The codec cannot read the notification back (e.g. its class is
                not in the codec's registry), so no dispatcher could.
            OutboxError: The database refused the write (e.g. a message id is taken).
        """
        payload = self.codec.encode(notification)
        self.codec.decode(payload)  # fail here, not in a dispatcher later
        receivers = notification.receivers
        message_ids = list(message_ids_for(notification, message_ids))
        rows = []
        for receiver, message_id in zip(receivers, message_ids, strict=True):
            if not isinstance(receiver.id, UUID):
                msg = f"receiver id {receiver.id!r} is not a UUID"
                raise ConfigurationError(msg)
            rows.append((str(receiver.id), receiver.message_endpoint, message_id))
        batch_id = "ob_" + secrets.token_hex(12)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO flnotify_outbox_batches (id, payload, created_at) VALUES (?, ?, ?)",
                (batch_id, payload.decode(), self.clock()),
            )
            conn.executemany(
                "INSERT INTO flnotify_outbox (batch_id, receiver_id, message_endpoint, "
                "message_id) VALUES (?, ?, ?, ?)",
                ((batch_id, *row) for row in rows),
            )
        return batch_id

    async def aput(
        self, notification: Notification[Any], *, message_ids: Sequence[str] | None = None
    ) -> str:
        """[`put`][] from async code (the write runs in a worker thread)."""
        return await asyncio.to_thread(self.put, notification, message_ids=message_ids)

    # -- claiming and recording (what dispatchers do) ------------------------------------

    def claim(self, limit: int, lease_seconds: float) -> Claim:
        """Take up to ``limit`` claimable deliveries (pending, or with an expired lease).

        One ``BEGIN IMMEDIATE`` transaction: no two claims ever hold the same row at once.
        A claim with no entries means nothing is claimable now.
        """
        if limit < 1 or lease_seconds <= 0:
            msg = f"limit must be >= 1 and lease_seconds > 0, got {limit!r}, {lease_seconds!r}"
            raise ConfigurationError(msg)
        token = secrets.token_hex(16)
        with self._transaction() as conn:
            now = self.clock()
            until = now + lease_seconds
            rows = conn.execute(
                _CLAIM, {"token": token, "until": until, "now": now, "limit": limit}
            ).fetchall()
            rows.sort(key=lambda row: row[0])
            entries = tuple(_entry(row[1:]) for row in rows)
            batches = sorted({e.batch_id for e in entries})
            payloads: dict[str, str] = {}
            if batches:
                marks = ",".join("?" * len(batches))
                payloads.update(
                    conn.execute(
                        f"SELECT id, payload FROM flnotify_outbox_batches WHERE id IN ({marks})",  # noqa: S608 - placeholders only
                        batches,
                    ).fetchall()
                )
        return Claim(token, until, entries, payloads)

    def renew(self, claim: Claim, lease_seconds: float) -> int:
        """Extend the lease of the claim's unfinished entries; how many still belong to it."""
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE flnotify_outbox SET lease_until = ? "
                "WHERE claim_token = ? AND state = 'claimed'",
                (self.clock() + lease_seconds, claim.token),
            ).rowcount

    def record(
        self, claim: Claim, deliveries: Iterable[Delivery], *, done: bool = False
    ) -> list[Delivery]:
        """Record outcomes, each at most once, and only while ``claim`` still holds the row.

        Args:
            claim: The claim the deliveries were sent under.
            deliveries: Final deliveries, matched to rows by ``message_id``.
            done: Mark them done at once (no callbacks to run); otherwise call
                [`finish`][] after the callbacks.

        Returns:
            The deliveries whose outcome this call recorded (others were recorded already,
            or their row was claimed again after this claim's lease expired).
        """
        recorded: list[Delivery] = []
        state = OutboxState.DONE.value if done else OutboxState.CLAIMED.value
        with self._transaction() as conn:
            now = self.clock()
            for d in deliveries:
                error = d.error
                kind = error.kind.value if isinstance(error, TransportError) else None
                cursor = conn.execute(
                    _RECORD,
                    (
                        d.outcome.value,
                        d.attempts,
                        d.status_code,
                        None if error is None else _storable(str(error)),
                        kind,
                        d.elapsed,
                        now,
                        state,
                        state,
                        d.message_id,
                        claim.token,
                    ),
                )
                if cursor.rowcount == 1:
                    recorded.append(d)
        return recorded

    def finish(self, claim: Claim, message_ids: Iterable[str]) -> int:
        """Mark recorded deliveries done once their callbacks ran; how many were."""
        with self._transaction() as conn:
            return sum(
                conn.execute(_FINISH, (message_id, claim.token)).rowcount
                for message_id in message_ids
            )

    def release(self, claim: Claim) -> int:
        """Give back the claim's unfinished entries without waiting for the lease to end."""
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE flnotify_outbox SET lease_until = ? "
                "WHERE claim_token = ? AND state = 'claimed'",
                (self.clock(), claim.token),
            ).rowcount

    # -- reading -----------------------------------------------------------------------

    def entries(self, batch_id: str | None = None) -> list[OutboxEntry]:
        """Every delivery (of one batch, if given), in the order they were put."""
        where, args = ("WHERE batch_id = ?", (batch_id,)) if batch_id is not None else ("", ())
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM flnotify_outbox {where} ORDER BY seq",  # noqa: S608 - constants only
                args,
            ).fetchall()
        return [_entry(row) for row in rows]

    def batch_size(self, batch_id: str) -> int:
        """How many deliveries (receivers) one [`put`][flnotify.outbox.Outbox.put] stored."""
        with self._transaction(write=False) as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM flnotify_outbox WHERE batch_id = ?", (batch_id,)
            ).fetchone()
        return int(n)

    def counts(self) -> dict[OutboxState, int]:
        """How many deliveries are in each state (every state present)."""
        counts = dict.fromkeys(OutboxState, 0)
        with self._transaction(write=False) as conn:
            for state, n in conn.execute(
                "SELECT state, COUNT(*) FROM flnotify_outbox GROUP BY state"
            ):
                counts[OutboxState(state)] = n
        return counts

    def next_claimable(self) -> float | None:
        """When a delivery may next be claimed: ``None`` if none is open, else epoch seconds.

        A pending delivery is claimable now (the current time is returned); a claimed one
        when its lease ends.
        """
        with self._transaction(write=False) as conn:
            now = self.clock()
            (when,) = conn.execute(
                "SELECT MIN(CASE state WHEN 'pending' THEN ? ELSE lease_until END) "
                "FROM flnotify_outbox WHERE state != 'done'",
                (now,),
            ).fetchone()
        return None if when is None else float(when)

    def prune(self, before: float) -> int:
        """Delete done deliveries recorded before ``before`` (epoch seconds); how many.

        Batches left without deliveries go too.
        """
        with self._transaction() as conn:
            n = conn.execute(
                "DELETE FROM flnotify_outbox WHERE state = 'done' AND recorded_at < ?", (before,)
            ).rowcount
            conn.execute(
                "DELETE FROM flnotify_outbox_batches WHERE NOT EXISTS "
                "(SELECT 1 FROM flnotify_outbox o WHERE o.batch_id = flnotify_outbox_batches.id)"
            )
        return n


def _stored_delivery(entry: OutboxEntry, notification: Notification[Any], size: int) -> Delivery:
    """The delivery of an outcome recorded by an earlier claim, rebuilt from its row."""
    assert entry.outcome is not None  # noqa: S101 - only called for recorded entries
    error: TransportError | None = None
    if entry.error is not None:
        kind = entry.error_kind or TransportErrorKind.INTERNAL
        url = entry.receiver.message_endpoint
        error = (
            InternalError(entry.error, url=url)
            if kind is TransportErrorKind.INTERNAL
            else TransportError(entry.error, url=url, kind=kind)
        )
    course = Course(0, entry.receiver, entry.message_id, entry.attempts)
    return build_delivery(
        notification,
        course,
        entry.outcome,
        entry.elapsed or 0.0,
        entry.status_code,
        error,
        send_id=entry.batch_id,
        send_size=size,
    )


class _Recorder(NullHook):
    """A delivery hook that queues each final delivery for the recording task."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()

    def on_outcome(self, delivery: Delivery, /) -> None:
        self.queue.put_nowait(delivery)


@attrs.define(eq=False)
class OutboxDispatcher:
    """Delivers what an [`Outbox`][] holds with a [`Notifier`][].

    Each round claims up to ``batch_size`` deliveries, sends them (one ``asend`` per stored
    notification, with the stored message ids), records each outcome as it arrives and then
    runs the callbacks for it. While a claim is being worked on its lease is renewed every
    third of ``lease_seconds``, so a slow send is never claimed twice; a dispatcher that
    dies stops renewing, and its unfinished deliveries become claimable when the lease ends.

    Args:
        outbox: Where the deliveries are stored.
        notifier: Sends them (its transport, retry policy, signer, endpoint policy,
            deadline); its ``repository`` builds the notification classes' default
            callbacks.
        callbacks: Called once per recorded outcome instead of the class's defaults.
        lease_seconds: How long a claim is held without renewal; a crashed dispatcher's
            deliveries resume this long after its last renewal.
        batch_size: Deliveries per claim.
        poll_interval: Longest wait of [`arun`][] between looks at other dispatchers'
            leases.
        sleep: Awaited by [`arun`][] while waiting for leases; inject a fake in tests.
    """

    outbox: Outbox
    notifier: Notifier
    callbacks: Callbacks | None = None
    lease_seconds: float = attrs.field(default=60.0, validator=positive)
    batch_size: int = attrs.field(default=100, validator=at_least_one)
    poll_interval: float = attrs.field(default=1.0, validator=positive)
    sleep: Callable[[float], Awaitable[object]] = attrs.field(default=asyncio.sleep, repr=False)

    async def arun_once(self) -> int:
        """Claim one batch of deliveries and see each to its outcome and callbacks.

        Returns:
            How many deliveries were claimed (0: nothing was claimable).

        Raises:
            DecodeError: A stored notification's class is unknown to the outbox's codec;
                the claim is released (so are claims interrupted by any other error).
        """
        claim = await asyncio.to_thread(self.outbox.claim, self.batch_size, self.lease_seconds)
        if not claim.entries:
            return 0
        resumed = sum(1 for e in claim.entries if e.claims > 1)
        if resumed:
            logger.info("outbox: resuming %d delivery(ies) of an expired claim", resumed)
        heartbeat = asyncio.create_task(self._heartbeat(claim))
        try:
            groups: dict[str, list[OutboxEntry]] = {}
            for entry in claim.entries:
                groups.setdefault(entry.batch_id, []).append(entry)
            for batch_id, entries in groups.items():
                notification = self.outbox.codec.decode(claim.payloads[batch_id])
                await self._deliver(claim, notification, entries)
        except BaseException:
            # Give back what is unfinished now rather than when the lease ends; whatever
            # was sent already goes again, with the same message ids (at least once).
            with contextlib.suppress(FlnotifyError):
                self.outbox.release(claim)
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        return len(claim.entries)

    async def arun(self) -> int:
        """Dispatch until every delivery in the outbox is done.

        Deliveries claimed by another dispatcher are waited for: finished by it, or
        claimed here once its lease ends (it crashed).

        Returns:
            How many deliveries this dispatcher claimed.
        """
        total = 0
        while True:
            claimed = await self.arun_once()
            total += claimed
            if claimed:
                continue
            when = await asyncio.to_thread(self.outbox.next_claimable)
            if when is None:
                return total
            wait = min(self.poll_interval, max(0.0, when - self.outbox.clock()))
            await self.sleep(wait)

    def run_once(self) -> int:
        """Blocking [`arun_once`][] (runs on the Notifier's event loop thread)."""
        return self.notifier._run_sync(self.arun_once())

    def run(self) -> int:
        """Blocking [`arun`][]."""
        return self.notifier._run_sync(self.arun())

    # -- one claim ---------------------------------------------------------------------

    async def _heartbeat(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await asyncio.to_thread(self.outbox.renew, claim, self.lease_seconds)
            except FlnotifyError:  # e.g. the file stayed locked: try again next time
                logger.warning("outbox: could not renew a lease", exc_info=True)

    async def _deliver(
        self, claim: Claim, notification: Notification[Any], entries: list[OutboxEntry]
    ) -> None:
        callbacks = self.callbacks
        if callbacks is None:
            callbacks = self.notifier._default_callbacks(notification)
        send = (
            entries[0].batch_id,
            await asyncio.to_thread(self.outbox.batch_size, entries[0].batch_id),
        )
        recovered = [e for e in entries if e.outcome is not None]
        if recovered:  # recorded by a claim that ended before its callbacks ran
            stored = notification.with_receivers([e.receiver for e in recovered])
            stored_deliveries = [_stored_delivery(e, stored, send[1]) for e in recovered]
            await self._settle(claim, stored_deliveries, callbacks)
        todo = [e for e in entries if e.outcome is None]
        if not todo:
            return
        outgoing = notification.with_receivers([e.receiver for e in todo])
        notifier = self.notifier
        body = notifier.codec.encode(outgoing)
        refused: FlnotifyError | None = None
        try:
            notifier.policy.check_body_size(body)
        except ConfigurationError as exc:  # the payload is over the policy's limit
            refused = exc
        recorder = _Recorder()
        writer = asyncio.create_task(self._write(claim, recorder, len(todo), callbacks))
        try:
            await notifier._deliver(
                outgoing,
                body,
                [e.message_id for e in todo],
                None,  # callbacks run here, after each outcome is recorded
                hooks=(recorder,),
                refused=refused,
                send=send,
            )
        except BaseException:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            raise
        await writer

    async def _write(
        self, claim: Claim, recorder: _Recorder, expected: int, callbacks: Callbacks | None
    ) -> None:
        """Record deliveries as they arrive, as many per transaction as have queued up."""
        queue = recorder.queue
        while expected:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            expected -= len(batch)
            await self._settle(claim, batch, callbacks, new=True)

    async def _settle(
        self,
        claim: Claim,
        deliveries: list[Delivery],
        callbacks: Callbacks | None,
        *,
        new: bool = False,
    ) -> None:
        """Record (if ``new``) then run callbacks, then mark done: in this order, for a crash."""
        outbox = self.outbox
        if new:
            deliveries = await asyncio.to_thread(
                outbox.record, claim, deliveries, done=callbacks is None
            )
        if callbacks is None:
            if not new:
                await asyncio.to_thread(outbox.finish, claim, [d.message_id for d in deliveries])
            return
        for delivery in deliveries:
            await run_callbacks(callbacks, delivery)  # a failure is logged at ERROR there
        await asyncio.to_thread(outbox.finish, claim, [d.message_id for d in deliveries])
