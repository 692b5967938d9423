"""What every outbox store holds and offers: states, entries, claims, the store Protocol.

The stores ([`Outbox`][flnotify.outbox.Outbox] on SQLite,
[`PostgresOutbox`][flnotify.outbox.PostgresOutbox]) share these values and the helpers that
turn notifications and deliveries into rows, so both write exactly the same thing.
"""

from __future__ import annotations

import enum
import json
import math
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import attrs

from .._attempt import message_ids_for
from .._codec import Codec
from .._exceptions import (
    ConfigurationError,
    NoOutboxError,
    OutboxError,
    TransportError,
    TransportErrorKind,
)
from .._lease import Execute, LeaseQueue, LeaseTable
from .._notification import Notification
from .._report import Delivery
from .._schema import Schema
from .._types import Outcome, Receiver

__all__ = [
    "CLAIMS",
    "COLUMNS",
    "LEASES",
    "Claim",
    "NoOutboxError",
    "OutboxEntry",
    "OutboxError",
    "OutboxOperations",
    "OutboxQueue",
    "OutboxState",
    "OutboxStore",
    "batches_of",
    "check_claim_args",
    "claimed_columns",
    "claimed_entries",
    "columns",
    "counts_of",
    "entries_of",
    "new_batch",
    "next_claimable_of",
    "outcome_json",
    "outcome_rows",
    "requeue_failed",
    "schema",
    "storable",
]


class OutboxState(enum.Enum):
    """Where one delivery stands in the outbox."""

    PENDING = "pending"
    """Stored, not claimed yet."""
    CLAIMED = "claimed"
    """Held by a dispatcher until ``lease_until``; ``outcome`` is set once recorded."""
    DONE = "done"
    """Outcome recorded and callbacks run; never touched again (unless re-driven)."""


@attrs.frozen
class OutboxEntry:
    """One delivery (one receiver of one stored notification) as the outbox holds it.

    Args:
        batch_id: The `put` call it belongs to.
        receiver: Who it is for (id and endpoint as stored).
        message_id: Its ``webhook-id``, the same on every (re)delivery.
        state: Pending, claimed or done.
        outcome: The recorded outcome, once there is one.
        attempts: POSTs made by the claim that recorded the outcome.
        claims: How often the delivery was claimed (above 1: it was resumed or re-driven).
        status_code: The last HTTP status, if the outcome came with one.
        error: Why it failed, as text, if it did without a final status.
        error_kind: The [`TransportErrorKind`][flnotify.errors.TransportErrorKind] of that error.
        elapsed: Seconds from first attempt to outcome in the recording claim.
        lease_until: When the current claim's lease ends (epoch seconds of the outbox clock).
        recorded_at: When the outcome was recorded (epoch seconds of the outbox clock).
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
    recorded_at: float | None = None


@attrs.frozen
class Claim:
    """Deliveries one dispatcher holds until ``lease_until`` (renewable), under ``token``.

    Args:
        token: The secret of this claim; only it may record outcomes of its entries.
        lease_until: When the lease ends unless renewed (epoch seconds, outbox clock).
        entries: The claimed deliveries, in the order they were put.
        payloads: The encoded notification of each batch among the entries.
        sizes: How many deliveries each batch among the entries holds (the size of
            its send, as [`batch_size`][flnotify.outbox.OutboxQueue.batch_size] says),
            read with the claim; a batch missing here is looked up with ``batch_size``.
    """

    token: str
    lease_until: float
    entries: tuple[OutboxEntry, ...]
    payloads: Mapping[str, str] = attrs.field(repr=False)
    sizes: Mapping[str, int] = attrs.field(factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.entries)


@runtime_checkable
class OutboxQueue(Protocol):
    """The queue operations of an outbox: what dispatchers and senders need.

    An [`OutboxDispatcher`][flnotify.outbox.OutboxDispatcher] needs no more. Every
    method is blocking; the dispatcher calls them from a worker thread.
    """

    @property
    def codec(self) -> Codec:
        """Encodes notifications on `put`; dispatchers decode with it."""
        ...

    def now(self) -> float:
        """The outbox clock (epoch seconds) that leases are measured by."""
        ...

    def put(
        self, notification: Notification[Any], *, message_ids: Sequence[str] | None = None
    ) -> str:
        """Store one row per receiver, committed on return; the batch id."""
        ...

    def claim(self, limit: int, lease_seconds: float) -> Claim:
        """Take up to ``limit`` claimable deliveries under a new lease."""
        ...

    def renew(self, claim: Claim, lease_seconds: float) -> int:
        """Extend the lease of the claim's unfinished entries; how many still belong to it."""
        ...

    def record(
        self, claim: Claim, deliveries: Iterable[Delivery], *, done: bool = False
    ) -> list[Delivery]:
        """Record outcomes once, while ``claim`` holds the rows; the ones recorded."""
        ...

    def finish(self, claim: Claim, message_ids: Iterable[str]) -> int:
        """Mark recorded deliveries done once their callbacks ran; how many were."""
        ...

    def release(self, claim: Claim) -> int:
        """Give the claim's unfinished entries back at once."""
        ...

    def batch_size(self, batch_id: str) -> int:
        """How many deliveries (receivers) one ``put`` stored: the size of that send."""
        ...

    def next_claimable(self) -> float | None:
        """When a delivery may next be claimed, or ``None`` if none is open."""
        ...

    def close(self) -> None:
        """Release the connection; idempotent."""
        ...


@runtime_checkable
class OutboxOperations(Protocol):
    """The operator commands of an outbox (``flnotify outbox ...``): look, re-drive, prune.

    Kept apart from the queue operations: a tool that only reports needs none of those.
    """

    def entries(self, batch_id: str | None = None) -> list[OutboxEntry]:
        """Every delivery (of one batch, if given), in the order they were put."""
        ...

    def counts(self) -> dict[OutboxState, int]:
        """How many deliveries are in each state (every state present)."""
        ...

    def failed(self, limit: int | None = None) -> list[OutboxEntry]:
        """Done deliveries whose outcome is failed, oldest first."""
        ...

    def retry_failed(self, message_ids: Iterable[str] | None = None) -> int:
        """Make failed deliveries (all, or these) pending again, same ids; how many."""
        ...

    def prune(self, before: float) -> int:
        """Delete done deliveries recorded before ``before``; how many."""
        ...


@runtime_checkable
class OutboxStore(OutboxQueue, OutboxOperations, Protocol):
    """A whole outbox store: its queue and its operator commands.

    [`OutboxQueue`][flnotify.outbox.OutboxQueue] and
    [`OutboxOperations`][flnotify.outbox.OutboxOperations] in one.

    Implemented by [`Outbox`][flnotify.outbox.Outbox] (SQLite) and
    [`PostgresOutbox`][flnotify.outbox.PostgresOutbox]; every implementation must pass
    [`OutboxStoreContract`][flnotify.testing.OutboxStoreContract].
    """


# -- shared by the stores ---------------------------------------------------------------

CLAIMS = "flnotify_outbox_claims"
"""The table of claims: one row per run of deliveries a claim holds (its token, the run's
first and last ``seq``, its lease). A claim writes no row of the deliveries it holds."""


_FROM_2 = (
    # schema 2 counted a batch's deliveries on every claim: the count is kept with it
    "ALTER TABLE flnotify_outbox_batches ADD COLUMN size integer NOT NULL DEFAULT 0",
    "UPDATE flnotify_outbox_batches SET size = (SELECT COUNT(*) FROM flnotify_outbox AS o "
    "WHERE o.batch_id = flnotify_outbox_batches.id)",
)
"""What makes tables of schema 2 schema 3's (the same statements on SQLite and PostgreSQL)."""


def _runs(lease: str, join: str = "") -> str:
    """Schema 1 or 3 to 4: the claim rows of the runs of open rows each claim named.

    A run is a claim's rows with no other open row between them, in ``seq`` order.
    """
    kept = "" if join else "lease_until, "
    return (
        f"SELECT r.claim_token, MIN(r.seq), MAX(r.seq), MAX({lease}) FROM (SELECT seq, "  # noqa: S608
        f"claim_token, {kept}ROW_NUMBER() OVER (ORDER BY seq) - ROW_NUMBER() OVER "
        "(PARTITION BY claim_token ORDER BY seq) AS run "
        f"FROM flnotify_outbox WHERE state <> 'done') AS r {join} "
        "WHERE r.claim_token IS NOT NULL GROUP BY r.claim_token, r.run"
    )


_CLAIM_NAMES = "(token, first_seq, last_seq, lease_until)"


def _unheld(claims: str) -> tuple[str, ...]:
    """Schema 1 or 3 to 4: held rows pending again, not counting the claim that holds them.

    It is counted on reading; ``claims`` is the new claims table.
    """
    return (
        f"UPDATE flnotify_outbox SET claims = claims - 1 WHERE state = 'claimed' "  # noqa: S608
        f"AND EXISTS (SELECT 1 FROM {claims} AS c WHERE c.token = claim_token)",
        "UPDATE flnotify_outbox SET state = 'pending', claim_token = NULL WHERE state = 'claimed'",
    )


_FROM_1 = (
    # schema 1 kept the lease on every delivery row
    f"INSERT INTO {CLAIMS} {_CLAIM_NAMES} {_runs('r.lease_until')}",
    *_unheld(CLAIMS),
    "ALTER TABLE flnotify_outbox DROP COLUMN lease_until",
)
"""What makes tables of schema 1 schema 2's (and the claims schema 4's: the set-up made
the claims table, which schema 1 had not)."""

_FROM_3 = (
    # schema 3 named its claim on every claimed row, and kept one lease row per claim
    f"CREATE TABLE {CLAIMS}_4 (token text NOT NULL, first_seq bigint NOT NULL, "
    "last_seq bigint NOT NULL, lease_until double precision NOT NULL, "
    "PRIMARY KEY (token, first_seq))",
    f"INSERT INTO {CLAIMS}_4 {_CLAIM_NAMES} "
    + _runs("c.lease_until", f"JOIN {CLAIMS} AS c ON c.token = r.claim_token"),
    *_unheld(f"{CLAIMS}_4"),
    f"DROP TABLE {CLAIMS}",
    f"ALTER TABLE {CLAIMS}_4 RENAME TO {CLAIMS}",
)
"""What makes tables of schema 3 schema 4's (claims as runs of rows)."""


def schema(tables: str) -> Schema:
    """The outbox's [`Schema`][flnotify._schema.Schema] (version 4) on one database.

    Args:
        tables: The statements creating its tables in that database's dialect.
    """
    return Schema(
        schema=tables,
        meta_table="flnotify_outbox_meta",
        version="4",
        label="outbox",
        error=OutboxError,
        upgrades={"1": (*_FROM_1, *_FROM_2), "2": (*_FROM_2, *_FROM_3), "3": _FROM_3},
    )


def batches_of(read: Mapping[str, Sequence[Any]]) -> tuple[dict[str, str], dict[str, int]]:
    """A claim's payloads and sizes from what its statement read: id -> [payload, size]."""
    return (
        {batch: payload for batch, (payload, _) in read.items()},
        {batch: int(size) for batch, (_, size) in read.items()},
    )


LEASES = LeaseTable(
    "flnotify_outbox",
    "claim_token",
    "flnotify_outbox_batches",
    "batch_id",
    settleable="{hint}{table}.state <> 'done' AND {table}.outcome IS NULL",
    settled_at="recorded_at",
    done_set="state = 'done', claims = claims + 1",
    take_index="flnotify_outbox_undone",
    claims=CLAIMS,
    adopt_set="claims = claims + 1",
    recorded="outcome IS NOT NULL",
)
"""The outbox as a lease queue: a claim holds runs of rows, one row of
[`CLAIMS`][flnotify.outbox._model.CLAIMS] each. A delivery row holds ``pending`` or
``done`` and the claims that ended (adopted from, or settled by); a claim that holds it
is read from the claims."""

_HELD = f"(flnotify_outbox.state <> 'done' AND EXISTS {LEASES.covering('token')})"


def columns(
    lease: str = f"CASE WHEN {_HELD} THEN {LEASES.covering('lease_until')} END",
    state: str = f"CASE WHEN state = 'done' THEN 'done' WHEN {_HELD} THEN 'claimed' "
    "ELSE 'pending' END",
    claims: str = f"claims + CASE WHEN {_HELD} THEN 1 ELSE 0 END",
) -> str:
    """The columns `entries_of` reads, in order: ``seq`` first.

    By default as any row is seen; a claim reads its rows with ``lease`` its lease,
    ``state`` ``'claimed'`` and ``claims`` one more than the row counts.
    """
    return (
        f"seq, batch_id, receiver_id, message_endpoint, message_id, {state}, outcome, attempts, "
        f"{claims}, status_code, error, error_kind, elapsed, {lease}, recorded_at"
    )


COLUMNS = columns()
"""The columns [`entries_of`][flnotify.outbox._model.entries_of] reads, in order."""


def claimed_columns(until: str) -> str:
    """The columns of the rows a claim took: claimed by it, until ``until``."""
    return columns(until, "'claimed'", "claims + 1")


def counts_of(stored: Mapping[str, int], held: int) -> dict[OutboxState, int]:
    """The count of each state: rows by their stored state, ``held`` of them by claims."""
    counts = dict.fromkeys(OutboxState, 0)
    counts[OutboxState.PENDING] = stored.get("pending", 0) - held
    counts[OutboxState.CLAIMED] = held
    counts[OutboxState.DONE] = stored.get("done", 0)
    return counts


def next_claimable_of(tally: tuple[int, int, float | None, float]) -> float | None:
    """When a delivery may next be claimed, from the lease queue's tally."""
    open_, held, first_lease, now = tally
    if not open_:
        return None
    if held < open_:  # a pending delivery: now (or a lease that ended before now)
        return now if first_lease is None else min(now, first_lease)
    return first_lease


_RETRY = (
    "state = 'pending', outcome = NULL, attempts = 0, status_code = NULL, error = NULL, "
    "error_kind = NULL, elapsed = NULL, recorded_at = NULL"
)


def requeue_failed(execute: Execute, queue: LeaseQueue, message_ids: Sequence[str] | None) -> int:
    """Make failed deliveries (all, or these) pending again; how many.

    Each keeps its place, ``webhook-id`` and count of claims; no claim (live or ended)
    holds it any more.
    """
    dialect = queue.dialect
    where = "state = 'done' AND outcome = 'failed'"
    params: dict[str, Any] = {}
    if message_ids is not None:
        ids = dialect.rows_source("ids", (("message_id", "text"),))
        where += f" AND message_id IN (SELECT v.message_id FROM {ids})"  # noqa: S608
        params = dialect.bind_rows("ids", [(m,) for m in message_ids], 1)
    select = f"SELECT seq FROM flnotify_outbox WHERE {where}"  # noqa: S608 - constants only
    ((got,),) = execute(dialect.collect(select), params).fetchall()
    seqs = dialect.collected(got)
    if not seqs:
        return 0
    source = dialect.rows_source("seqs", (("seq", "bigint"),))
    execute(
        f"UPDATE flnotify_outbox SET {_RETRY} WHERE seq IN (SELECT v.seq FROM {source})",  # noqa: S608
        dialect.bind_rows("seqs", [(seq,) for seq in seqs], 1),
    )
    queue.free(execute, seqs)
    return len(seqs)


_STATES = {state.value: state for state in OutboxState}
_OUTCOMES: dict[str | None, Outcome | None] = {None: None, **{o.value: o for o in Outcome}}
_KINDS: dict[str | None, TransportErrorKind | None] = {
    None: None,
    **{k.value: k for k in TransportErrorKind},
}


def entries_of(rows: Iterable[Sequence[Any]]) -> list[OutboxEntry]:
    """The entries of rows of [`COLUMNS`][flnotify.outbox._model.COLUMNS].

    On the path of every claimed row: the enums are looked up in dictionaries and every
    name is bound once (2.4 µs a row).
    """
    entry, receiver, uuid = OutboxEntry, Receiver, UUID
    states, outcomes, kinds = _STATES, _OUTCOMES, _KINDS
    return [
        entry(
            b, receiver(uuid(r), e), m, states[s], outcomes[o], a, c, sc, er, kinds[k], el, lu, ra
        )
        for (_, b, r, e, m, s, o, a, c, sc, er, k, el, lu, ra) in rows
    ]


_SLICE = 256  # ~0.6 ms of Python; each time.sleep(0) costs ~70 µs here


def claimed_entries(rows: Sequence[Sequence[Any]]) -> tuple[OutboxEntry, ...]:
    """The entries of a claim's rows (of `COLUMNS`), in ``seq`` order.

    Built a slice of rows at a time, letting other threads run between slices: the entries
    of a claim of 1,000 take ~2.5 ms of Python in the store's thread, which would otherwise
    keep the event loop (sending the claim before) from the GIL for up to the interpreter's
    switch interval, 5 ms.
    """
    ordered = sorted(rows, key=_seq)
    entries: list[OutboxEntry] = []
    for start in range(0, len(ordered), _SLICE):
        entries += entries_of(ordered[start : start + _SLICE])
        time.sleep(0)  # gives up the GIL to a thread waiting for it
    return tuple(entries)


def _seq(row: Sequence[Any]) -> int:
    return int(row[0])


def storable(text: str) -> str:
    """Text every store keeps as given: no lone surrogates (SQLite), no NUL (PostgreSQL).

    An error message may carry either from a peer's bytes.
    """
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def new_batch(
    codec: Codec, notification: Notification[Any], message_ids: Sequence[str] | None
) -> tuple[str, str, list[tuple[str, str, str]]]:
    """What `put` writes: batch id, payload and (receiver id, endpoint, message id) rows.

    Raises:
        ConfigurationError: ``message_ids`` does not match the receivers, or a receiver's
            id is not a UUID.
        DecodeError: The codec cannot read the notification back.
    """
    payload = codec.encode(notification)
    codec.decode(payload)  # fail here, not in a dispatcher later
    rows = []
    for receiver, message_id in zip(
        notification.receivers, message_ids_for(notification, message_ids), strict=True
    ):
        if not isinstance(receiver.id, UUID):
            msg = f"receiver id {receiver.id!r} is not a UUID"
            raise ConfigurationError(msg)
        rows.append((str(receiver.id), receiver.message_endpoint, message_id))
    return "ob_" + secrets.token_hex(12), payload.decode(), rows


def outcome_rows(
    deliveries: Iterable[Delivery],
) -> list[tuple[str, str, int, int | None, str | None, str | None, float | None]]:
    """(message id, outcome, attempts, status, error, error kind, elapsed) per delivery."""
    rows = []
    for d in deliveries:
        error = d.error
        kind = error.kind.value if isinstance(error, TransportError) else None
        rows.append(
            (
                d.message_id,
                d.outcome.value,
                d.attempts,
                d.status_code,
                None if error is None else storable(str(error)),
                kind,
                d.elapsed if math.isfinite(d.elapsed) else None,
            )
        )
    return rows


def outcome_json(rows: Sequence[Any]) -> str:
    """Rows (or ids) as one JSON array, for stores that take a batch as one parameter."""
    return json.dumps(rows, ensure_ascii=False, allow_nan=False)


def check_claim_args(limit: int, lease_seconds: float) -> None:
    """Refuse a claim of nothing or a lease of no time."""
    if limit < 1 or lease_seconds <= 0:
        msg = f"limit must be >= 1 and lease_seconds > 0, got {limit!r}, {lease_seconds!r}"
        raise ConfigurationError(msg)
