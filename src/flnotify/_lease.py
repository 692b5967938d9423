"""The lease queue, written once: claim with a lease, renew, settle, adopt, prune.

The outbox and the mailbox keep rows that one holder at a time works on, under a lease
that the holder renews and that anybody may take over once it ended. What that means is
written here, once, for a table described by a [`LeaseTable`][flnotify._lease.LeaseTable];
each database is a [`Dialect`][flnotify._lease.Dialect]: its SQL text, how it binds a
batch of rows and how it takes rows without two takers holding one row at once (kombu's
virtual transport is the model: the semantics in one class, a backend a handful of
primitives).

Every statement reads the store clock once, as ``now``: the SQLite dialect binds the
store's ``clock()``; the PostgreSQL one reads ``%(now)s`` if the store has a clock of its
own and the database server's clock otherwise. Whatever judges a lease is the clock that
wrote it.

[`keep_lease`][flnotify._lease.keep_lease] is the one heartbeat that keeps a lease alive
while its holder works, sleeping through the sleep it is given.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

__all__ = [
    "OUTCOME_COLUMNS",
    "POSTGRES",
    "SQLITE",
    "Dialect",
    "Execute",
    "LeaseQueue",
    "LeaseTable",
    "keep_lease",
]

logger = logging.getLogger("flnotify")

OUTCOME_COLUMNS = (
    ("message_id", "text"),
    ("outcome", "text"),
    ("attempts", "integer"),
    ("status_code", "integer"),
    ("error", "text"),
    ("error_kind", "text"),
    ("elapsed", "double precision"),
)
"""The columns a settled row records, in the order of ``outcome_rows``, with their types."""


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...


class Execute(Protocol):
    """Runs one statement with named parameters.

    ``sqlite3.Connection.execute``, or a psycopg cursor's ``execute``.
    """

    def __call__(self, sql: str, params: Mapping[str, Any], /) -> _Cursor: ...


@attrs.frozen
class LeaseTable:
    """A table of leased rows, as the lease queue sees it.

    Args:
        table: Its name.
        holder: The column naming the current holder (a claim token, an owner).
        parent: The table each row's payload is in (pruned once no row refers to it).
        parent_key: The column of a row naming its parent.
        open: The condition of a row still being worked on (not settled).
        takeable: The condition of a row a take may hand out, beyond ``open`` and an
            ended lease (``{now}`` is the clock); e.g. the outbox's pending rows.
        take_set: More ``SET`` assignments of a take (e.g. counting claims).
        take_order: The order rows are taken in.
        settleable: The condition of a row the holder may record an outcome for
            (``{table}`` is the table, ``{hint}`` the dialect's index hint).
        settled_at: The column the time of the outcome goes to.
        done_set: The ``SET`` assignments that make a row done.
        done: The condition of a settled row (pruned once old).
        take_index: SQLite: the index a take walks (``INDEXED BY``), if any.
        leases: The table holding each holder's lease, one row a holder (``token``,
            ``lease_until``), that the rows refer to by ``holder``: a take writes one lease
            row, and renewing or releasing writes nothing else. ``None``: the lease is a
            column of each row.
    """

    table: str
    holder: str
    parent: str
    parent_key: str
    open: str = "state <> 'done'"
    takeable: str = "FALSE"
    take_set: str = ""
    take_order: str = "seq"
    settleable: str = "{hint}{table}.state <> 'done'"
    settled_at: str = "settled_at"
    done_set: str = "state = 'done'"
    done: str = "state = 'done'"
    take_index: str | None = None
    leases: str | None = None

    def lease_of(self, now: str) -> str:
        """The condition of a row whose lease ended by ``now``.

        With a lease table: the row's holder has a lease row and it ended. A lease row a
        concurrent take is writing is invisible to another take, which therefore leaves
        that take's rows alone (PostgreSQL re-checks a row it waited for this way).
        """
        if self.leases is None:
            return f"lease_until <= {now}"
        return (
            f"EXISTS (SELECT 1 FROM {self.leases} AS l WHERE l.token = "  # noqa: S608 - constants only
            f"{self.table}.{self.holder} AND l.lease_until <= {now})"
        )


@attrs.frozen
class Dialect:
    """What one database makes of the lease queue's statements.

    Args:
        name: The database, in messages.
        param: The placeholder of a named parameter.
        clock: The statement prefix that reads the clock once (``""`` if it is bound).
        now: The clock within a statement.
        hint: Prefixed to a column SQLite must not drive a join by (unary ``+``).
    """

    name: str
    param: Callable[[str], str] = attrs.field(repr=False)
    clock: str
    now: str
    hint: str

    @property
    def postgres(self) -> bool:
        """Whether this is PostgreSQL (rows taken with ``FOR UPDATE SKIP LOCKED``)."""
        return self is POSTGRES

    def rows_source(self, name: str, columns: Sequence[tuple[str, str]]) -> str:
        """A ``FROM`` item ``v`` of the rows bound as ``name`` (see `bind_rows`)."""
        if self.postgres:
            arrays = ", ".join(f"%({name}_{i})s::{kind}[]" for i, (_, kind) in enumerate(columns))
            names = ", ".join(col for col, _ in columns)
            return f"unnest({arrays}) AS v ({names})"
        picks = ", ".join(
            f"json_extract(value, '$[{i}]') AS {col}" for i, (col, _) in enumerate(columns)
        )
        return f"(SELECT {picks} FROM json_each({self.param(name)})) AS v"  # noqa: S608

    def bind_rows(self, name: str, rows: Sequence[Sequence[Any]], width: int) -> dict[str, Any]:
        """The parameters that bind ``rows`` as ``name``.

        One JSON array (SQLite), or one array per column (PostgreSQL).
        """
        if self.postgres:
            columns = list(zip(*rows, strict=True)) if rows else [()] * width
            return {f"{name}_{i}": list(column) for i, column in enumerate(columns)}
        return {name: json.dumps(rows, ensure_ascii=False, allow_nan=False)}


def _pg_param(name: str) -> str:
    return f"%({name})s"


def _sqlite_param(name: str) -> str:
    return f":{name}"


SQLITE = Dialect("SQLite", _sqlite_param, clock="", now=":now", hint="+")
"""SQLite: parameters ``:name``, the clock bound by the store, a batch as one JSON array."""

POSTGRES = Dialect(
    "PostgreSQL",
    _pg_param,
    clock=(
        "WITH clock AS (SELECT COALESCE(%(now)s::double precision,"
        " extract(epoch FROM clock_timestamp())) AS now) "
    ),
    now="(SELECT now FROM clock)",
    hint="",
)
"""PostgreSQL: parameters ``%(name)s``, the clock read once per statement (the store's if
it has one, else the server's), a batch as one array per column."""


class LeaseQueue:
    """The lease semantics on one table in one dialect.

    Every method takes the ``execute`` of the transaction it runs in and the store clock's
    ``now`` (``None``: the database server's).

    Args:
        table: What is leased.
        dialect: The database.
    """

    def __init__(self, table: LeaseTable, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect
        t, d, p = table, dialect, dialect.param
        now = d.now
        index = f" INDEXED BY {t.take_index}" if t.take_index and not d.postgres else ""
        candidates = (
            f"SELECT seq FROM {t.table}{index} WHERE {t.open} "  # noqa: S608 - constants only
            f"AND ({t.takeable.format(now=now)} OR {t.lease_of(now)}) "
            f"ORDER BY {t.take_order} LIMIT {p('limit')}"
        )
        extra = f", {t.take_set}" if t.take_set else ""
        until = f"{now} + {p('lease')}"
        lease = "" if t.leases else f", lease_until = {until}"
        assign = f"SET {t.holder} = {p('holder')}{lease}{extra}"
        # the one lease row of a take (written only if the take took a row)
        self._new_lease = (
            f"INSERT INTO {t.leases} (token, lease_until) SELECT {p('holder')}, {until}"
            if t.leases
            else ""
        )
        if d.postgres:
            made = (
                f", made AS ({self._new_lease} WHERE EXISTS (SELECT 1 FROM picked))"  # noqa: S608
                if t.leases
                else ""
            )
            self._take_first = f"{d.clock}, picked AS ({candidates} FOR UPDATE SKIP LOCKED){made}"
            self._take_rows = (
                f"UPDATE {t.table} {assign} "  # noqa: S608 - constants only
                f"WHERE seq = ANY(ARRAY(SELECT seq FROM picked))"
            )
            self._take = f"{self._take_first} {self._take_rows} RETURNING seq"
            self._candidates = ""
        else:
            self._candidates = f"SELECT json_group_array(seq) FROM ({candidates})"  # noqa: S608
            self._take = (
                f"UPDATE {t.table} {assign} "  # noqa: S608 - constants only
                f"WHERE seq IN (SELECT value FROM json_each({p('seqs')}))"
            )
        held = f"{t.holder} = {p('holder')} AND {t.open}"
        if t.leases is None:
            self._lease = f"{d.clock}UPDATE {t.table} SET lease_until = {until} WHERE {held}"  # noqa: S608
            self._held = ""
        else:
            moved = f"UPDATE {t.leases} SET lease_until = {until} WHERE token = {p('holder')}"  # noqa: S608
            count = f"SELECT COUNT(*) FROM {t.table} WHERE {held}"  # noqa: S608 - constants only
            if d.postgres:  # one statement, one round trip
                self._lease = f"{d.clock}, moved AS ({moved}) {count}"
                self._held = ""
            else:
                self._lease, self._held = moved, count
        outcomes = ", ".join(f"{col} = v.{col}" for col, _ in OUTCOME_COLUMNS[1:])
        match = (
            f"{t.table}.message_id = v.message_id AND {d.hint}{t.holder} = {p('holder')} "
            f"AND {t.settleable.format(hint=d.hint, table=t.table)}"
        )
        source = d.rows_source("rows", OUTCOME_COLUMNS)
        self._settle = {
            done: (
                f"{d.clock}UPDATE {t.table} SET {outcomes}, "  # noqa: S608 - constants only
                f"{t.settled_at} = {now}{', ' + t.done_set if done else ''} "
                f"FROM {source} WHERE {match}"
                + (f" AND {t.table}.message_id = ANY({p('rows_0')}::text[])" if d.postgres else "")
                + (" RETURNING v.message_id" if d.postgres else "")
            )
            for done in (False, True)
        }
        # SQLite: which rows an outcome is for, as one JSON array (one step, not a step a row)
        self._settleable = (
            f"SELECT json_group_array(v.message_id) FROM {source}, {t.table} "  # noqa: S608
            f"WHERE {match}"
        )
        self._prune = f"DELETE FROM {t.table} WHERE {t.done} AND {t.settled_at} < {p('before')}"  # noqa: S608
        self._orphans = (
            f"DELETE FROM {t.parent} WHERE NOT EXISTS (SELECT 1 FROM {t.table} AS r "  # noqa: S608
            f"WHERE r.{t.parent_key} = {t.parent}.id)"
        )
        # a lease row goes once it holds no open row (a done row's lease is never read)
        self._ended = (
            f"DELETE FROM {t.leases} WHERE token NOT IN (SELECT {t.holder} "  # noqa: S608
            f"FROM {t.table} WHERE {t.open} AND {t.holder} IS NOT NULL)"
            if t.leases
            else ""
        )

    def take(
        self, execute: Execute, *, holder: str, lease: float, limit: int, now: float | None
    ) -> list[int]:
        """Give ``holder`` up to ``limit`` rows until ``now + lease``; their ``seq``s.

        Takeable rows, and open rows whose lease ended, in take order.

        Two takes never hold one row at once: SQLite's run in one write transaction,
        PostgreSQL's skip the rows another take is locking.
        """
        params = {"holder": holder, "lease": lease, "limit": limit, "now": now}
        if self.dialect.postgres:
            return sorted(row[0] for row in execute(self._take, params).fetchall())
        ((seqs,),) = execute(self._candidates, params).fetchall()
        if seqs == "[]":
            return []
        execute(self._take, {**params, "seqs": seqs})
        if self._new_lease:
            execute(self._new_lease, params)
        return list(json.loads(seqs))

    def take_and_read(self, select: str) -> str:
        """PostgreSQL: a take and a read of what it took, as one statement (one round trip).

        ``select`` reads the rows taken as ``taken`` (every column, as the take left them)
        and the statement's clock as ``clock``; the parameters are `take`'s.
        """
        if not self.dialect.postgres:
            raise ValueError("take_and_read is PostgreSQL's")
        return f"{self._take_first}, taken AS ({self._take_rows} RETURNING *) {select}"

    def renew(self, execute: Execute, *, holder: str, lease: float, now: float | None) -> int:
        """Move the lease of the holder's open rows to ``now + lease``; how many it holds."""
        params = {"holder": holder, "lease": lease, "now": now}
        if self.table.leases is None:
            return execute(self._lease, params).rowcount
        if self._held:
            execute(self._lease, params)
            ((n,),) = execute(self._held, params).fetchall()
        else:
            ((n,),) = execute(self._lease, params).fetchall()
        return int(n)

    def release(self, execute: Execute, *, holder: str, now: float | None) -> int:
        """End the holder's lease now: its open rows may be taken at once; how many."""
        return self.renew(execute, holder=holder, lease=0.0, now=now)

    def settle(
        self,
        execute: Execute,
        *,
        holder: str,
        rows: Sequence[Sequence[Any]],
        now: float | None,
        done: bool,
    ) -> set[str]:
        """Record outcomes of rows the holder may settle, each once; the ids recorded.

        ``rows`` are of ``OUTCOME_COLUMNS``; ``done`` makes the rows done too.
        """
        if not rows:
            return set()
        params = {
            "holder": holder,
            "now": now,
            **self.dialect.bind_rows("rows", rows, len(OUTCOME_COLUMNS)),
        }
        if self.dialect.postgres:
            return {row[0] for row in execute(self._settle[done], params).fetchall()}
        # SQLite returns no rows of an UPDATE in one step: try the common case first (every
        # row settleable, each id once: as many rows changed as given), else look first
        execute("SAVEPOINT settle", {})
        if execute(self._settle[done], params).rowcount == len(rows):
            execute("RELEASE settle", {})
            return {row[0] for row in rows}
        execute("ROLLBACK TO settle", {})
        execute("RELEASE settle", {})
        ((ids,),) = execute(self._settleable, params).fetchall()
        recorded = set(json.loads(ids))
        if recorded:
            execute(self._settle[done], params)
        return recorded

    def prune(self, execute: Execute, *, before: float) -> int:
        """Delete done rows settled before ``before`` (and payloads no row refers to)."""
        n = execute(self._prune, {"before": before}).rowcount
        execute(self._orphans, {})
        if self._ended:
            execute(self._ended, {})
        return n


async def keep_lease(
    renew: Callable[[], object],
    every: float,
    sleep: Callable[[float], Awaitable[object]],
    what: str,
) -> None:
    """Renew a lease every ``every`` seconds until cancelled: the one lease heartbeat.

    ``renew`` is blocking (it runs in a worker thread); a failure is logged and tried
    again at the next beat (the lease lasts three beats).
    """
    while True:
        await sleep(every)
        try:
            await asyncio.to_thread(renew)
        except Exception:  # e.g. the database is busy or down: try again next beat
            logger.warning("%s: could not renew a lease", what, exc_info=True)
