"""The shared mailbox store: PostgreSQL, for mailbox apps and senders on several hosts.

Needs psycopg 3 (``pip install 'flnotify[postgres]'``). Fetches and adoptions take rows
with ``FOR UPDATE SKIP LOCKED``: app processes and dispatchers on any number of hosts
never hand one message out twice at once and never wait for each other. Deadlines,
visibility, leases and request nonces are measured by the database server's clock, so the
hosts' clocks need not agree. Every psycopg error is translated here, at one edge, into
[`MailboxError`][flnotify.errors.MailboxError]. It may share a database with a
[`PostgresOutbox`][flnotify.outbox.PostgresOutbox]: its tables are ``flnotify_mailbox*``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

from .._closing import Closing
from .._codec import Codec
from .._lease import POSTGRES, LeaseQueue
from .._postgres import NOW as _NOW
from .._postgres import PostgresConnection, prepared, redacted, set_up_schema
from .._report import Delivery
from .._validators import callable_or_none, of_type, positive
from ..outbox._model import outcome_rows
from ._model import (
    LEASES,
    REPOST,
    STATES,
    MailboxError,
    check_lease,
    check_limit,
    check_post,
    check_reposted,
    fetchable_sql,
    first_nonces,
    first_per_id,
    fresh_flags,
    taken_counts,
    unique_answers,
)
from ._store import Adopted, Answer, Letter, MailboxSignals

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresMailbox"]

_SCHEMA_VERSION = "1"
_QUEUE = LeaseQueue(LEASES, POSTGRES)
_SCHEMA_LOCK = zlib.crc32(b"flnotify_mailbox schema")  # serialises concurrent set-ups

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flnotify_mailbox_sends (
    id text PRIMARY KEY,
    size integer NOT NULL,
    payload bytea NOT NULL,
    posted_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS flnotify_mailbox (
    seq bigserial PRIMARY KEY,
    send_id text NOT NULL REFERENCES flnotify_mailbox_sends (id) ON DELETE CASCADE,
    client_id uuid NOT NULL,
    message_id text NOT NULL UNIQUE,
    state text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'offered', 'answered', 'done')),
    available_at double precision NOT NULL,
    offered_until double precision,
    deadline_at double precision NOT NULL,
    fetches integer NOT NULL DEFAULT 0,
    status integer,
    owner text NOT NULL,
    lease_until double precision NOT NULL,
    outcome text CHECK (outcome IN ('delivered', 'rejected', 'failed')),
    attempts integer,
    status_code integer,
    error text,
    error_kind text,
    elapsed double precision,
    settled_at double precision
);
CREATE INDEX IF NOT EXISTS flnotify_mailbox_waiting
    ON flnotify_mailbox (client_id, seq) WHERE state IN ('queued', 'offered');
DROP INDEX IF EXISTS flnotify_mailbox_owner;
CREATE INDEX IF NOT EXISTS flnotify_mailbox_judge
    ON flnotify_mailbox (owner, state, deadline_at) WHERE state <> 'done';
CREATE INDEX IF NOT EXISTS flnotify_mailbox_lease
    ON flnotify_mailbox (lease_until) WHERE state <> 'done';
CREATE TABLE IF NOT EXISTS flnotify_mailbox_nonces (
    nonce text PRIMARY KEY,
    until double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS flnotify_mailbox_nonces_until ON flnotify_mailbox_nonces (until);
"""

# Every hot call is one statement, sent as one round trip in its own (autocommit)
# transaction. The clock is read once per statement (the ``clock`` CTE): %(now)s is NULL
# unless the mailbox has a clock of its own, and then the server's clock is read.
# Batches are bound as binary arrays (``%(name)b``) and rows read back in binary: psycopg
# writes a binary array several times faster than its text form, and the server reads
# it without parsing text (bytea is not hex-encoded either way).
_CLOCK = f"clock AS (SELECT {_NOW} AS now)"
_T = "(SELECT now FROM clock)"

# The send row is written once (a send may be posted in several calls); both inserts are
# one statement, so a taken message id leaves nothing behind.
_POST = f"""
WITH {_CLOCK},
send AS (
    INSERT INTO flnotify_mailbox_sends (id, size, payload, posted_at)
    VALUES (%(send)s, %(size)s, %(body)b, {_T})
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO flnotify_mailbox
    (send_id, client_id, message_id, available_at, deadline_at, owner, lease_until)
SELECT %(send)s, v.client_id, v.message_id, {_T}, {_T} + %(deadline)s, %(owner)s,
    {_T} + %(lease)s
FROM unnest(%(clients)b::uuid[], %(ids)b::text[]) WITH ORDINALITY AS v (client_id, message_id, i)
ORDER BY v.i
{REPOST}"""  # noqa: S608 - constants only

# Each client's letters due now, oldest first, up to its limit: one statement for every
# waiting poll a wake-up answers. Every step is a loop over the batch whatever the plan
# (see `_by_message_id`): a lookup per client, the rows by ``seq``, a payload per row.
_FETCH = f"""
WITH {_CLOCK},
picked AS (
    SELECT p.seq FROM unnest(%(clients)b::uuid[], %(limits)b::integer[]) AS r (client_id, most)
    CROSS JOIN LATERAL (
        SELECT seq FROM flnotify_mailbox
        WHERE client_id = r.client_id AND {fetchable_sql(_T)}
        ORDER BY seq LIMIT r.most
        FOR UPDATE SKIP LOCKED
    ) AS p
),
offered AS (
    UPDATE flnotify_mailbox AS m
    SET state = 'offered', offered_until = {_T} + %(visibility)s, fetches = m.fetches + 1
    WHERE m.seq = ANY(ARRAY(SELECT seq FROM picked))
    RETURNING m.seq, m.client_id, m.message_id, m.fetches, m.send_id
)
SELECT o.client_id, o.message_id, o.fetches,
    (SELECT s.payload FROM flnotify_mailbox_sends AS s WHERE s.id = o.send_id)
FROM offered AS o
ORDER BY o.seq
"""  # noqa: S608 - constants only

_FETCHABLE = f"""
WITH {_CLOCK}
SELECT DISTINCT client_id FROM flnotify_mailbox
WHERE client_id = ANY(%(clients)b::uuid[]) AND {fetchable_sql(_T)}
"""  # noqa: S608 - constants only


def _by_message_id(rows: str, columns: str, value: str, condition: str) -> str:
    """A one-row CTE ``found``: the rows of the batch ``rows`` that the table holds, locked.

    ``rows`` is bound arrays unnested, as ``v (columns)``, ``condition`` picks the row of
    ``v.message_id``; ``found.seqs`` are the rows' ``seq``s, ascending, and ``found.vals``
    each one's ``value``, in the same order.

    The statement is prepared, and a generic plan guesses every bound array at ten rows:
    a join of ``v`` with the table may then read ``v`` again for each row of the table
    (time square in the batch). Here no plan can: each message id is looked up alone
    (``LIMIT 1`` keeps the lookup inside the loop over ``v``) and its row locked (checked
    again if it changed meanwhile, so the ``UPDATE`` need not repeat ``condition``; in
    message id order, so two batches never wait for each other in a circle); the result is
    one row, computed once; the ``UPDATE`` finds its rows by primary key (`_FOUND`) and
    each one's value by binary search (`_VAL`).
    """
    return f"""found AS MATERIALIZED (
    SELECT array_agg(m.seq ORDER BY m.seq) AS seqs, array_agg({value} ORDER BY m.seq) AS vals
    FROM (SELECT * FROM {rows} AS u ({columns}) ORDER BY message_id) AS v
    CROSS JOIN LATERAL (
        SELECT seq FROM flnotify_mailbox
        WHERE message_id = v.message_id AND {condition}
        LIMIT 1
        FOR UPDATE
    ) AS m
)"""  # noqa: S608 - constants only


_FOUND = "m.seq = ANY(ARRAY(SELECT unnest(seqs) FROM found))"
"""The rows `_by_message_id` found, by their primary key."""
_VAL = "f.vals[width_bucket(m.seq, f.seqs)]"
"""The value of row ``m`` (``found`` as ``f``): ``width_bucket`` finds ``m.seq`` in the
sorted ``seqs`` by binary search (the bucket whose lower bound it is)."""

# The answers of several clients in one statement: each counts for its own client only.
_ANSWERED = _by_message_id(
    "unnest(%(clients)b::uuid[], %(ids)b::text[], %(statuses)b::integer[])",
    "client_id, message_id, status",
    "v.status",
    f"client_id = v.client_id AND state = 'offered' AND deadline_at > {_T}",
)
_ACK = f"""
WITH {_CLOCK},
{_ANSWERED}
UPDATE flnotify_mailbox AS m SET state = 'answered', status = {_VAL}
FROM found AS f
WHERE {_FOUND}
RETURNING m.client_id, m.message_id
"""  # noqa: S608 - constants only

# The SELECT reads the rows as they were before the statement, so the ones the deadline
# answers now come from ``expired`` only.
_ANSWERS = f"""
WITH {_CLOCK},
expired AS (
    UPDATE flnotify_mailbox SET state = 'answered', status = NULL
    WHERE owner = %(owner)s AND state IN ('queued', 'offered') AND deadline_at <= {_T}
    RETURNING seq, message_id, client_id, status, fetches, send_id
)
SELECT message_id, client_id, status, fetches, send_id FROM (
    SELECT seq, message_id, client_id, status, fetches, send_id FROM flnotify_mailbox
    WHERE owner = %(owner)s AND state = 'answered'
    UNION ALL
    SELECT * FROM expired
) AS answered
ORDER BY seq
"""  # noqa: S608 - constants only

_RETRIED = _by_message_id(
    "unnest(%(ids)b::text[], %(delays)b::double precision[])",
    "message_id, delay",
    "v.delay",
    "owner = %(owner)s AND state = 'answered'",
)
_REQUEUE = f"""
WITH {_CLOCK},
{_RETRIED}
UPDATE flnotify_mailbox AS m SET state = 'queued', status = NULL, available_at = {_T} + {_VAL}
FROM found AS f
WHERE {_FOUND}
RETURNING m.client_id
"""  # noqa: S608 - constants only

# A send's payload comes once, with its first adopted message.
_ADOPTED = """
SELECT m.message_id, m.client_id, m.send_id, s.size,
    CASE WHEN row_number() OVER (PARTITION BY m.send_id ORDER BY m.seq) = 1
        THEN s.payload END,
    s.posted_at
FROM flnotify_mailbox AS m JOIN flnotify_mailbox_sends AS s ON s.id = m.send_id
WHERE m.seq = ANY(%(seqs)b::bigint[])
ORDER BY m.seq
"""

# Expired nonces are swept by whoever comes along; rows another sweep holds are skipped,
# so two sweeps never wait for (or deadlock on) each other. An expired copy of this very
# nonce is taken over by the insert instead.
_REMEMBER = f"""
WITH {_CLOCK},
swept AS (
    DELETE FROM flnotify_mailbox_nonces
    WHERE nonce IN (
        SELECT nonce FROM flnotify_mailbox_nonces
        WHERE until <= {_T} AND nonce <> ALL(%(nonces)b::text[])
        FOR UPDATE SKIP LOCKED
    )
)
INSERT INTO flnotify_mailbox_nonces AS n (nonce, until)
SELECT * FROM unnest(%(nonces)b::text[], %(untils)b::double precision[])
ON CONFLICT (nonce) DO UPDATE SET until = EXCLUDED.until WHERE n.until <= {_T}
RETURNING n.nonce
"""  # noqa: S608 - constants only

_ROWS = """
SELECT message_id, client_id::text AS client_id, send_id, state, fetches, status, outcome,
    attempts, error
FROM flnotify_mailbox ORDER BY seq
"""


def _planned(cur: psycopg.Cursor[Any]) -> Callable[[str, Mapping[str, Any]], Any]:
    """An ``execute`` on ``cur`` that plans each statement for its parameters.

    For the lease queue's settle: it joins its batch of outcomes with the table, and the
    generic plan of a prepared statement, which guesses the batch at ten rows, may read
    the whole batch again for every row it updates (time square in the batch).
    """

    def execute(sql: str, params: Mapping[str, Any], /) -> psycopg.Cursor[Any]:
        return cur.execute(sql, params, prepare=False)

    return execute


def _prepare(conn: psycopg.Connection[Any]) -> None:
    set_up_schema(
        conn,
        lock=_SCHEMA_LOCK,
        schema=_SCHEMA,
        meta_table="flnotify_mailbox_meta",
        version=_SCHEMA_VERSION,
        label="mailbox",
        error=MailboxError,
    )


def _prepare_light(conn: psycopg.Connection[Any]) -> None:
    """The connection for what clients do: commits that do not wait for the WAL flush.

    Its lists are bound as binary arrays, the lease queue's batches (outcomes) too.
    """
    from psycopg.types.array import ListBinaryDumper

    conn.adapters.register_dumper(list, ListBinaryDumper)
    conn.execute("SET synchronous_commit = off")


@attrs.define(eq=False)
class PostgresMailbox(Closing):
    """The [`Mailbox`][flnotify.mailbox.Mailbox] semantics on a PostgreSQL database.

    Any number of processes on any number of hosts may share the database: the server's
    workers, its mailbox apps and [`MailboxDispatcher`][flnotify.mailbox.MailboxDispatcher]s.
    Every call is one transaction, committed when it returns: posts, leases and requeues
    durably (as the server's settings make it), what clients do and the outcomes without
    waiting for the disk (see `_run`). Two connections per instance (those two kinds),
    each used by one thread at a time and reopened after the server dropped it.

    Args:
        url: A libpq connection string or URL, e.g.
            ``"postgresql://flnotify@db.internal/fl"``.
        codec: Decodes stored notifications for a dispatcher that adopts them; its
            registry must know every notification class that is sent.
        ack_deadline: Seconds from posting after which an unacknowledged message fails.
        visibility: Seconds a fetched message waits for its acknowledgement before it is
            offered again (same ``webhook-id``).
        clock: Epoch seconds; by default the database server's clock, shared by every host.
        connect_timeout: Seconds to wait for a connection.

    Raises:
        MailboxError: The database cannot be reached or holds another mailbox schema.
        ConfigurationError: psycopg is not installed.
    """

    url: str = attrs.field(validator=of_type(str, "str (a connection string)"), repr=redacted)
    codec: Codec = attrs.field(factory=Codec, validator=of_type(Codec), repr=False)
    ack_deadline: float = attrs.field(default=300.0, validator=positive)
    visibility: float = attrs.field(default=30.0, validator=positive)
    clock: Callable[[], float] | None = attrs.field(
        default=None, validator=callable_or_none, repr=False
    )
    connect_timeout: float = attrs.field(default=10.0, validator=positive, repr=False)
    signals: MailboxSignals = attrs.field(init=False, factory=MailboxSignals, repr=False)
    _db: PostgresConnection = attrs.field(init=False, repr=False)
    _light: PostgresConnection = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._db = PostgresConnection.open(
            self.url,
            who="PostgresMailbox",
            label="mailbox",
            error=MailboxError,
            prepare=_prepare,
            connect_timeout=self.connect_timeout,
        )
        try:
            self._light = PostgresConnection.open(
                self.url,
                who="PostgresMailbox",
                label="mailbox",
                error=MailboxError,
                prepare=_prepare_light,
                connect_timeout=self.connect_timeout,
            )
        except BaseException:
            self._db.close()
            raise

    def _cursor(
        self, *, single: bool = True, light: bool = False
    ) -> AbstractContextManager[psycopg.Cursor[Any]]:
        """A cursor for one statement (its own transaction) or, not ``single``, several.

        ``light``: committed without waiting for the WAL flush (see `_run`).
        """
        return (self._light if light else self._db).cursor(self, single=single)

    def _run(
        self, sql: str, params: dict[str, Any], *, light: bool = False
    ) -> tuple[list[Any], int]:
        """Run one prepared hot statement with the clock parameter: its rows and rowcount.

        ``light``: what a client does (fetch, acknowledge, a nonce) and the outcomes,
        committed without waiting for the WAL flush; a crash of the database may lose the
        last of them, which costs at most an offer again with the same ``webhook-id``, or
        a message judged again by a dispatcher once its sender's lease ended (callbacks
        at least once). Posts, leases and requeues wait.
        """
        params["now"] = None if self.clock is None else self.clock()
        with (self._light if light else self._db).cursor(self, single=True) as cur:
            cur.execute(sql, params, prepare=True, binary=True)
            rows = cur.fetchall() if cur.description is not None else []
            return rows, cur.rowcount

    def _clock(self) -> float | None:
        """The ``now`` parameter of the statements: ``None`` reads the server's clock."""
        return None if self.clock is None else self.clock()

    def now(self) -> float:
        """The store clock: ``clock()``, or the database server's time."""
        if self.clock is not None:
            return self.clock()
        with self._cursor() as cur:
            cur.execute(f"SELECT {_NOW}", {"now": None}, prepare=True)
            row = cur.fetchone()
        assert row is not None  # noqa: S101 - SELECT without FROM returns one row
        return float(row[0])

    def close(self) -> None:
        """Close the connections; idempotent."""
        self._light.close()
        self._db.close()

    # -- the sender's side ---------------------------------------------------------------

    def post(
        self,
        send_id: str,
        send_size: int,
        body: bytes,
        letters: Sequence[tuple[UUID, str]],
        *,
        owner: str,
        lease_seconds: float,
    ) -> None:
        """Queue ``body`` for each (client id, message id), judged by ``owner``.

        One statement, committed when this returns; see
        [`Mailbox.post`][flnotify.mailbox.Mailbox.post].

        Raises:
            ConfigurationError: A client id is not a UUID, or a message id not a string.
            MailboxError: The database refused the write, or a message id is another
                client's or twice in the post.
        """
        rows = check_post(send_size, letters, lease_seconds)
        if not rows:
            return
        clients, ids = (list(column) for column in zip(*rows, strict=True))
        params = {
            "send": send_id,
            "size": send_size,
            "body": bytes(body),
            "clients": clients,
            "ids": ids,
            "deadline": self.ack_deadline,
            "owner": owner,
            "lease": lease_seconds,
            "now": self._clock(),
        }
        with self._cursor(single=False) as cur:  # a refused post is rolled back
            cur.execute(_POST, params, prepare=True)
            check_reposted(cur.rowcount, rows)
        self.signals.mail(client for client, _ in letters)

    def answers(self, owner: str) -> list[Answer]:
        """The owner's answered messages, oldest first; overdue ones are answered first."""
        rows = self._run(_ANSWERS, {"owner": owner})[0]
        return [Answer(mid, client, status, n, send) for mid, client, status, n, send in rows]

    def requeue(self, owner: str, retries: Sequence[tuple[str, float]]) -> int:
        """Queue the owner's answered messages again, each after its delay in seconds."""
        if not retries:
            return 0
        ids, delays = (list(column) for column in zip(*retries, strict=True))
        params = {"owner": owner, "ids": ids, "delays": delays}
        clients = [row[0] for row in self._run(_REQUEUE, params)[0]]
        if clients:
            self.signals.mail(clients)
        return len(clients)

    def settle(self, owner: str, deliveries: Iterable[Delivery]) -> list[Delivery]:
        """Record the final outcome of the owner's unsettled messages; the ones recorded.

        All of them in one statement; the first delivery of a message id counts.
        """
        deliveries = first_per_id(deliveries)
        if not deliveries:
            return []
        with self._cursor(light=True) as cur:  # see _run: at least once
            settled = _QUEUE.settle(
                _planned(cur),
                holder=owner,
                rows=outcome_rows(deliveries),
                now=self._clock(),
                done=True,
            )
        return [d for d in deliveries if d.message_id in settled]

    def renew(self, owner: str, lease_seconds: float) -> int:
        """Extend the owner's lease on its unsettled messages; how many it holds."""
        check_lease(lease_seconds)
        with self._cursor() as cur:
            return _QUEUE.renew(prepared(cur), holder=owner, lease=lease_seconds, now=self._clock())

    def release(self, owner: str) -> int:
        """End the owner's lease now; a dispatcher adopts its messages at its next look."""
        with self._cursor() as cur:
            return _QUEUE.release(prepared(cur), holder=owner, now=self._clock())

    def adopt(self, owner: str, lease_seconds: float, limit: int) -> list[Adopted]:
        """Take over up to ``limit`` unsettled messages whose judge's lease ended.

        Rows another adoption is taking at the same moment are skipped, not waited for.
        """
        check_lease(lease_seconds)
        check_limit(limit)
        with self._cursor(single=False) as cur:
            execute = prepared(cur)
            seqs = _QUEUE.take(
                execute, holder=owner, lease=lease_seconds, limit=limit, now=self._clock()
            )
            rows = execute(_ADOPTED, {"seqs": seqs}).fetchall() if seqs else []
        adopted = []
        payloads: dict[str, bytes] = {}
        for mid, client, send, size, payload, posted in rows:
            if payload is not None:
                payloads[send] = bytes(payload)
            adopted.append(Adopted(mid, client, send, size, payloads[send], posted))
        return adopted

    # -- the client's side (the mailbox app) ---------------------------------------------

    def fetch(self, client_id: UUID, limit: int) -> list[Letter]:
        """Offer up to ``limit`` of the client's messages, oldest first.

        See [`Mailbox.fetch`][flnotify.mailbox.Mailbox.fetch]; letters another fetch is
        taking at the same moment are skipped, not waited for.
        """
        return self.fetch_many({client_id: limit}).get(client_id, [])

    def fetch_many(self, limits: Mapping[UUID, int]) -> dict[UUID, list[Letter]]:
        """[`fetch`][flnotify.mailbox.PostgresMailbox.fetch] for several clients at once.

        One statement, committed without waiting for the WAL flush; the letters of the
        clients that got any.
        """
        for limit in limits.values():
            check_limit(limit)
        if not limits:
            return {}
        params = {
            "clients": list(limits),
            "limits": list(limits.values()),
            "visibility": self.visibility,
        }
        found: dict[UUID, list[Letter]] = {}
        for client, mid, n, payload in self._run(_FETCH, params, light=True)[0]:
            found.setdefault(client, []).append(Letter(mid, client, bytes(payload), n))
        return found

    def fetchable(self, client_ids: Iterable[UUID]) -> set[UUID]:
        """Which of these clients have a message that a fetch would offer now."""
        clients = list(client_ids)
        if not clients:
            return set()
        return {row[0] for row in self._run(_FETCHABLE, {"clients": clients}, light=True)[0]}

    def ack(self, client_id: UUID, acks: Sequence[tuple[str, int]]) -> int:
        """Take the client's answers (message id, status) of its offered messages.

        See [`Mailbox.ack`][flnotify.mailbox.Mailbox.ack]: the first answer of a message
        wins. Returns how many counted.
        """
        return self.ack_many([(client_id, acks)])[0]

    def ack_many(self, acks: Sequence[tuple[UUID, Sequence[tuple[str, int]]]]) -> list[int]:
        """[`ack`][flnotify.mailbox.PostgresMailbox.ack] of several clients, one statement."""
        whose, rows = unique_answers(acks)
        if not rows:
            return [0] * len(acks)
        clients, ids, statuses = (list(column) for column in zip(*rows, strict=True))
        params = {"clients": clients, "ids": ids, "statuses": statuses}
        returned = self._run(_ACK, params, light=True)[0]
        taken = taken_counts(len(acks), whose, ((c, m) for c, m in returned))
        if any(taken):
            self.signals.answered()
        return taken

    def remember(self, nonce: str, until: float) -> bool:
        """Record a request nonce until ``until``; ``False`` if it is known already."""
        return self.remember_many([(nonce, until)])[0]

    def remember_many(self, nonces: Sequence[tuple[str, float]]) -> list[bool]:
        """[`remember`][flnotify.mailbox.PostgresMailbox.remember] of several at once.

        One statement; a nonce twice in ``nonces`` is fresh the first time only.
        """
        first = first_nonces(nonces)
        if not first:
            return []
        params = {"nonces": list(first), "untils": list(first.values())}
        return fresh_flags(nonces, (row[0] for row in self._run(_REMEMBER, params, light=True)[0]))

    # -- operating -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """How many messages are in each state (every state present)."""
        counts = dict.fromkeys(STATES, 0)
        with self._cursor() as cur:
            cur.execute("SELECT state, COUNT(*) FROM flnotify_mailbox GROUP BY state")
            for state, n in cur.fetchall():
                counts[state] = n
        return counts

    def rows(self) -> list[dict[str, Any]]:
        """Every message with its state and outcome, in the order posted (for operators)."""
        with self._cursor() as cur:
            cur.execute(_ROWS)
            assert cur.description is not None  # noqa: S101 - a SELECT describes its columns
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def prune(self, before: float) -> int:
        """Delete done messages settled before ``before`` (and sends left empty)."""
        with self._cursor(single=False) as cur:
            return _QUEUE.prune(prepared(cur), before=before)
