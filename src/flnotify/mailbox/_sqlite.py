"""The embedded mailbox store: one SQLite file, shared by the processes of one machine."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any
from uuid import UUID

import attrs

from .._closing import Closing
from .._codec import Codec
from .._lease import SQLITE, LeaseQueue
from .._report import Delivery
from .._sqlite import SQLiteConnection, fspath, set_up_durable_schema
from .._validators import is_callable, of_type, positive
from ..outbox._model import outcome_json, outcome_rows
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

__all__ = ["Mailbox"]

_SCHEMA_VERSION = "1"
_QUEUE = LeaseQueue(LEASES, SQLITE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flnotify_mailbox_sends (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL,
    posted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS flnotify_mailbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    send_id TEXT NOT NULL REFERENCES flnotify_mailbox_sends (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'offered', 'answered', 'done')),
    available_at REAL NOT NULL,
    offered_until REAL,
    deadline_at REAL NOT NULL,
    fetches INTEGER NOT NULL DEFAULT 0,
    status INTEGER,
    owner TEXT NOT NULL,
    lease_until REAL NOT NULL,
    outcome TEXT CHECK (outcome IN ('delivered', 'rejected', 'failed')),
    attempts INTEGER,
    status_code INTEGER,
    error TEXT,
    error_kind TEXT,
    elapsed REAL,
    settled_at REAL
);
CREATE INDEX IF NOT EXISTS flnotify_mailbox_waiting
    ON flnotify_mailbox (client_id, seq) WHERE state IN ('queued', 'offered');
DROP INDEX IF EXISTS flnotify_mailbox_owner;
CREATE INDEX IF NOT EXISTS flnotify_mailbox_judge
    ON flnotify_mailbox (owner, state, deadline_at) WHERE state != 'done';
CREATE INDEX IF NOT EXISTS flnotify_mailbox_lease
    ON flnotify_mailbox (lease_until) WHERE state != 'done';
CREATE TABLE IF NOT EXISTS flnotify_mailbox_nonces (
    nonce TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS flnotify_mailbox_nonces_until ON flnotify_mailbox_nonces (until);
"""

_POST = (
    """
INSERT INTO flnotify_mailbox
    (send_id, client_id, message_id, available_at, deadline_at, owner, lease_until)
SELECT :send, json_extract(value, '$[0]'), json_extract(value, '$[1]'), :now, :deadline,
    :owner, :until
FROM json_each(:rows) WHERE TRUE ORDER BY key
"""
    + REPOST
)

# The clients' letters due now, oldest first, up to each client's limit: one statement
# for every waiting poll a wake-up answers.
_FETCH = f"""
UPDATE flnotify_mailbox
SET state = 'offered', offered_until = :now + :visibility, fetches = fetches + 1
WHERE seq IN (
    SELECT seq FROM (
        SELECT m.seq, json_extract(r.value, '$[1]') AS most,
            row_number() OVER (PARTITION BY m.client_id ORDER BY m.seq) AS n
        FROM json_each(:limits) AS r
        JOIN flnotify_mailbox AS m INDEXED BY flnotify_mailbox_waiting
            ON m.client_id = json_extract(r.value, '$[0]')
        WHERE {fetchable_sql(":now")}
    ) WHERE n <= most
)
RETURNING seq, client_id, message_id, fetches, send_id
"""  # noqa: S608 - constants only

_FETCHABLE = f"""
SELECT DISTINCT client_id FROM flnotify_mailbox INDEXED BY flnotify_mailbox_waiting
WHERE client_id IN (SELECT value FROM json_each(:clients)) AND {fetchable_sql(":now")}
"""  # noqa: S608 - constants only

# The answers of every request of a batch (client, message id, status): one statement.
_ACK = """
UPDATE flnotify_mailbox SET state = 'answered', status = json_extract(v.value, '$[2]')
FROM json_each(:acks) AS v
WHERE flnotify_mailbox.message_id = json_extract(v.value, '$[1]')
    AND client_id = json_extract(v.value, '$[0]') AND +state = 'offered' AND deadline_at > :now
RETURNING client_id, message_id
"""

# The nonces of a batch (first occurrences only): the ones new to the table come back.
_REMEMBER = """
INSERT OR IGNORE INTO flnotify_mailbox_nonces (nonce, until)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:nonces)
RETURNING nonce
"""

# A judge asks for its answers after every acknowledgement it is told of: both statements
# find the owner's rows of one state by the judge index, never the owner's other rows.
_EXPIRE = """
UPDATE flnotify_mailbox SET state = 'answered', status = NULL
WHERE seq IN (
    SELECT seq FROM flnotify_mailbox INDEXED BY flnotify_mailbox_judge
    WHERE owner = :owner AND state IN ('queued', 'offered') AND state != 'done'
        AND deadline_at <= :now
)
"""

_ANSWERS = """
SELECT message_id, client_id, status, fetches, send_id
FROM flnotify_mailbox INDEXED BY flnotify_mailbox_judge
WHERE owner = :owner AND state = 'answered' AND state != 'done' ORDER BY seq
"""

_REQUEUE = """
UPDATE flnotify_mailbox
SET state = 'queued', status = NULL, available_at = :now + json_extract(v.value, '$[1]')
FROM json_each(:retries) AS v
WHERE flnotify_mailbox.message_id = json_extract(v.value, '$[0]')
    AND owner = :owner AND +state = 'answered'
RETURNING client_id
"""

_ADOPTED = """
SELECT seq, message_id, client_id, send_id FROM flnotify_mailbox
WHERE seq IN (SELECT value FROM json_each(:seqs))
"""


@contextlib.contextmanager
def _holding(
    lock: threading.Lock, transaction: AbstractContextManager[sqlite3.Connection]
) -> Iterator[sqlite3.Connection]:
    """``transaction`` entered with ``lock`` held, until it ends."""
    with lock, transaction as conn:
        yield conn


def _prepare_light(conn: sqlite3.Connection) -> None:
    """The connection for what clients do: set up by the other one already."""


@attrs.define(eq=False)
class Mailbox(Closing):
    """The notifications of polling receivers, one row per message, in an SQLite file.

    Several processes of one machine may share the file (WAL mode, every write one
    ``BEGIN IMMEDIATE`` transaction, commits synchronous): the server's workers, its
    mailbox app and a [`MailboxDispatcher`][flnotify.mailbox.MailboxDispatcher]. For
    several hosts use [`PostgresMailbox`][flnotify.mailbox.PostgresMailbox]. It may share
    its file with an [`Outbox`][flnotify.outbox.Outbox] or a repository.

    Args:
        path: The database file.
        codec: Decodes stored notifications for a dispatcher that adopts them; its
            registry must know every notification class that is sent.
        ack_deadline: Seconds from posting after which an unacknowledged message fails.
        visibility: Seconds a fetched message waits for its acknowledgement before it is
            offered again (same ``webhook-id``).
        clock: Epoch seconds; shared by all processes, so a wall clock.
        busy_timeout: Seconds to wait for another process's write lock.

    Raises:
        MailboxError: The file cannot be opened or holds another mailbox schema.
    """

    path: str = attrs.field(converter=fspath)
    codec: Codec = attrs.field(factory=Codec, validator=of_type(Codec), repr=False)
    ack_deadline: float = attrs.field(default=300.0, validator=positive)
    visibility: float = attrs.field(default=30.0, validator=positive)
    clock: Callable[[], float] = attrs.field(default=time.time, validator=is_callable, repr=False)
    busy_timeout: float = attrs.field(default=30.0, validator=positive, repr=False)
    signals: MailboxSignals = attrs.field(init=False, factory=MailboxSignals, repr=False)
    _db: SQLiteConnection = attrs.field(init=False, repr=False)
    _light: SQLiteConnection = attrs.field(init=False, repr=False)
    _writing: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def __attrs_post_init__(self) -> None:
        self._db = SQLiteConnection.open(
            self.path,
            label="mailbox",
            error=MailboxError,
            prepare=self._prepare,
            timeout=self.busy_timeout,
            wrap_errors=True,
        )
        self._light = self._db
        if self.path not in {"", ":memory:"}:  # a second connection, to the same file
            try:
                self._light = SQLiteConnection.open(
                    self.path,
                    label="mailbox",
                    error=MailboxError,
                    prepare=_prepare_light,
                    timeout=self.busy_timeout,
                    wrap_errors=True,
                    synchronous="NORMAL",  # commits without fsync; see _transaction
                )
            except BaseException:
                self._db.close()
                raise

    def _prepare(self, conn: sqlite3.Connection) -> None:
        set_up_durable_schema(
            conn,
            self.path,
            schema=_SCHEMA,
            meta_table="flnotify_mailbox_meta",
            version=_SCHEMA_VERSION,
            label="mailbox",
            error=MailboxError,
        )

    def close(self) -> None:
        """Close the connections; idempotent."""
        self._light.close()
        self._db.close()

    def now(self) -> float:
        """The store clock: ``clock()``."""
        return self.clock()

    def _transaction(
        self, *, write: bool = True, light: bool = False
    ) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction; ``light``: committed without an fsync.

        Light: what a client does and the outcomes. A fetch, an acknowledgement or a nonce
        lost to a power cut costs at most an offer with the same ``webhook-id`` again
        (deduplicated by the client); an outcome lost so leaves its message answered, and
        a dispatcher judges it again once the sender's lease ended (its callbacks run
        again: at least once, as after any crash between them and the record). Posts and
        leases are committed synchronously, and such a commit makes every earlier one
        durable too (one write-ahead log).

        The two connections' write transactions take turns on a lock of this process
        first: SQLite would make the second wait for the file's write lock by sleeping
        and retrying (1, 2, 5, 10, 15, 20, 25 ms...), long after the first committed.
        """
        inner = (self._light if light else self._db).transaction(self, write=write)
        if not write or self._light is self._db:
            return inner
        return _holding(self._writing, inner)

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

        Committed when this returns; the send may be posted in several calls (its row in
        the sends table is written once). A message id already in the mailbox for the
        same client is offered again as a letter of this post (see
        [`MailboxQueue.post`][flnotify.mailbox.MailboxQueue.post]).

        Raises:
            ConfigurationError: A client id is not a UUID, or a message id not a string.
            MailboxError: The database refused the write, or a message id is another
                client's or twice in the post (nothing is written).
        """
        rows = check_post(send_size, letters, lease_seconds)
        if not rows:
            return
        with self._transaction() as conn:
            now = self.clock()
            conn.execute(
                "INSERT OR IGNORE INTO flnotify_mailbox_sends (id, size, payload, posted_at)"
                " VALUES (?, ?, ?, ?)",
                (send_id, send_size, body, now),
            )
            written = conn.execute(
                _POST,
                {
                    "send": send_id,
                    "rows": outcome_json(rows),
                    "now": now,
                    "deadline": now + self.ack_deadline,
                    "owner": owner,
                    "until": now + lease_seconds,
                },
            ).rowcount
            check_reposted(written, rows)
        self.signals.mail(client for client, _ in letters)

    def answers(self, owner: str) -> list[Answer]:
        """The owner's answered messages, oldest first.

        Messages of the owner whose acknowledgement deadline passed are answered first,
        with no status.
        """
        with self._transaction() as conn:
            params = {"owner": owner, "now": self.clock()}
            conn.execute(_EXPIRE, params)
            rows = conn.execute(_ANSWERS, params).fetchall()
        return [Answer(mid, UUID(client), status, n, send) for mid, client, status, n, send in rows]

    def requeue(self, owner: str, retries: Sequence[tuple[str, float]]) -> int:
        """Queue the owner's answered messages again, each after its delay in seconds."""
        if not retries:
            return 0
        with self._transaction() as conn:
            params = {"owner": owner, "now": self.clock(), "retries": outcome_json(retries)}
            clients = [row[0] for row in conn.execute(_REQUEUE, params).fetchall()]
        if clients:
            self.signals.mail(UUID(client) for client in clients)
        return len(clients)

    def settle(self, owner: str, deliveries: Iterable[Delivery]) -> list[Delivery]:
        """Record the final outcome of the owner's unsettled messages; the ones recorded.

        The first delivery of a message id counts (one outcome per message).
        """
        deliveries = first_per_id(deliveries)
        if not deliveries:
            return []
        with self._transaction(light=True) as conn:  # see _transaction: at least once
            settled = _QUEUE.settle(
                conn.execute,
                holder=owner,
                rows=outcome_rows(deliveries),
                now=self.clock(),
                done=True,
            )
        if len(settled) == len(deliveries):
            return deliveries
        return [d for d in deliveries if d.message_id in settled]

    def renew(self, owner: str, lease_seconds: float) -> int:
        """Extend the owner's lease on its unsettled messages; how many it holds."""
        check_lease(lease_seconds)
        with self._transaction() as conn:
            return _QUEUE.renew(conn.execute, holder=owner, lease=lease_seconds, now=self.clock())

    def release(self, owner: str) -> int:
        """End the owner's lease now; a dispatcher adopts its messages at its next look."""
        with self._transaction() as conn:
            return _QUEUE.release(conn.execute, holder=owner, now=self.clock())

    def adopt(self, owner: str, lease_seconds: float, limit: int) -> list[Adopted]:
        """Take over up to ``limit`` unsettled messages whose judge's lease ended."""
        check_lease(lease_seconds)
        check_limit(limit)
        with self._transaction() as conn:
            seqs = _QUEUE.take(
                conn.execute, holder=owner, lease=lease_seconds, limit=limit, now=self.clock()
            )
            if not seqs:
                return []
            rows = sorted(conn.execute(_ADOPTED, {"seqs": json.dumps(seqs)}).fetchall())
            sends = {row[3] for row in rows}
            found: dict[str, tuple[int, bytes, float]] = {}
            for send in sends:
                size, payload, posted = conn.execute(
                    "SELECT size, payload, posted_at FROM flnotify_mailbox_sends WHERE id = ?",
                    (send,),
                ).fetchone()
                found[send] = (size, bytes(payload), posted)
        return [
            Adopted(mid, UUID(client), send, found[send][0], found[send][1], found[send][2])
            for _, mid, client, send in rows
        ]

    # -- the client's side (the mailbox app) ---------------------------------------------

    def fetch(self, client_id: UUID, limit: int) -> list[Letter]:
        """Offer up to ``limit`` of the client's messages, oldest first.

        Queued ones, and offered ones whose acknowledgement did not come within
        ``visibility``; each offer counts one fetch. Messages past their deadline are not
        offered (their judge fails them).

        Raises:
            ConfigurationError: ``limit`` is below 1.
        """
        return self.fetch_many({client_id: limit}).get(client_id, [])

    def fetch_many(self, limits: Mapping[UUID, int]) -> dict[UUID, list[Letter]]:
        """[`fetch`][flnotify.mailbox.Mailbox.fetch] for several clients in one transaction.

        Returns the letters of the clients that got any. Committed without an fsync (see
        ``_transaction``): a fetch lost to a power cut is offered again.

        Raises:
            ConfigurationError: A limit is below 1.
        """
        for limit in limits.values():
            check_limit(limit)
        if not limits:
            return {}
        uuids = {str(c): c for c in limits}
        with self._transaction(write=False, light=True) as conn:  # most polls find nothing
            params = {"clients": json.dumps(list(uuids)), "now": self.clock()}
            ready = {row[0] for row in conn.execute(_FETCHABLE, params)}
        if not ready:
            return {}
        wanted = [[client, limits[uuids[client]]] for client in ready]
        with self._transaction(light=True) as conn:
            params = {
                "limits": json.dumps(wanted),
                "now": self.clock(),
                "visibility": self.visibility,
            }
            rows = sorted(conn.execute(_FETCH, params).fetchall())
            bodies: dict[str, bytes] = {}
            for send in {row[4] for row in rows}:
                (payload,) = conn.execute(
                    "SELECT payload FROM flnotify_mailbox_sends WHERE id = ?", (send,)
                ).fetchone()
                bodies[send] = bytes(payload)
        found: dict[UUID, list[Letter]] = {}
        for _, client, mid, n, send in rows:
            who = uuids[client]
            found.setdefault(who, []).append(Letter(mid, who, bodies[send], n))
        return found

    def fetchable(self, client_ids: Iterable[UUID]) -> set[UUID]:
        """Which of these clients have a message that a fetch would offer now."""
        clients = [str(c) for c in client_ids]
        if not clients:
            return set()
        with self._transaction(write=False, light=True) as conn:
            params = {"clients": json.dumps(clients), "now": self.clock()}
            return {UUID(row[0]) for row in conn.execute(_FETCHABLE, params)}

    def ack(self, client_id: UUID, acks: Sequence[tuple[str, int]]) -> int:
        """Take the client's answers (message id, status) of its offered messages.

        An answer counts only for a message that is offered to this client and not past
        its deadline; the first answer of a message wins. Returns how many counted.
        """
        return self.ack_many([(client_id, acks)])[0]

    def ack_many(self, acks: Sequence[tuple[UUID, Sequence[tuple[str, int]]]]) -> list[int]:
        """[`ack`][flnotify.mailbox.Mailbox.ack] of several clients in one transaction."""
        whose, rows = unique_answers(acks)
        if not rows:
            return [0] * len(acks)
        texts = {client: str(client) for client, _ in acks}
        uuids = {text: client for client, text in texts.items()}
        acks_json = outcome_json([(texts[client], mid, status) for client, mid, status in rows])
        with self._transaction(light=True) as conn:
            returned = conn.execute(_ACK, {"acks": acks_json, "now": self.clock()}).fetchall()
        taken = taken_counts(len(acks), whose, ((uuids[c], m) for c, m in returned))
        if any(taken):
            self.signals.answered()
        return taken

    def remember(self, nonce: str, until: float) -> bool:
        """Record a request nonce until ``until``; ``False`` if it is known already."""
        return self.remember_many([(nonce, until)])[0]

    def remember_many(self, nonces: Sequence[tuple[str, float]]) -> list[bool]:
        """[`remember`][flnotify.mailbox.Mailbox.remember] of several, in one transaction.

        A nonce twice in ``nonces`` is fresh the first time only.
        """
        first = first_nonces(nonces)
        if not first:
            return []
        with self._transaction(light=True) as conn:
            conn.execute("DELETE FROM flnotify_mailbox_nonces WHERE until <= ?", (self.clock(),))
            rows = conn.execute(_REMEMBER, {"nonces": outcome_json(list(first.items()))})
            return fresh_flags(nonces, (row[0] for row in rows))

    # -- operating -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """How many messages are in each state (every state present)."""
        counts = dict.fromkeys(STATES, 0)
        with self._transaction(write=False) as conn:
            for state, n in conn.execute(
                "SELECT state, COUNT(*) FROM flnotify_mailbox GROUP BY state"
            ):
                counts[state] = n
        return counts

    def rows(self) -> list[dict[str, Any]]:
        """Every message with its state and outcome, in the order posted (for operators)."""
        with self._transaction(write=False) as conn:
            cursor = conn.execute(
                "SELECT message_id, client_id, send_id, state, fetches, status, outcome,"
                " attempts, error FROM flnotify_mailbox ORDER BY seq"
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor]

    def prune(self, before: float) -> int:
        """Delete done messages settled before ``before`` (and sends left empty)."""
        with self._transaction() as conn:
            return _QUEUE.prune(conn.execute, before=before)
