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

A lease is either a column of every row (the mailbox: a judge holds few rows at a time)
or a claim: one row of a claims table naming a run of rows (``first_seq`` to
``last_seq``) that its holder holds until ``lease_until`` (the outbox: a dispatcher holds
a thousand rows at a time). Taking, renewing and releasing a claim write claim rows only,
never the rows it holds: the rows are written twice in their life (put, then settled).

[`keep_lease`][flnotify._lease.keep_lease] is the one heartbeat that keeps a lease alive
while its holder works, sleeping through the sleep it is given.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
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
        claims: The table of claims: each row a run of rows (``first_seq`` to
            ``last_seq``) that its holder (``token``) holds until ``lease_until``. A take
            writes one claim row per run of rows it takes, and no row of ``table``;
            renewing and releasing write claim rows only. ``None``: the lease is a column
            of each row (``holder``, ``lease_until``).
        adopt_set: With ``claims``: the ``SET`` assignments of a row a take adopts from
            a claim whose lease ended (e.g. counting claims).
        recorded: The condition of a row whose outcome is recorded, that
            [`finish`][flnotify._lease.LeaseQueue.finish] makes done.
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
    claims: str | None = None
    adopt_set: str = ""
    recorded: str = "FALSE"

    def covering(self, what: str) -> str:
        """A subquery: ``what`` (a column) of the claim whose run holds the current row."""
        return (
            f"(SELECT c.{what} FROM {self.claims} AS c "  # noqa: S608 - constants only
            f"WHERE {self.table}.seq BETWEEN c.first_seq AND c.last_seq)"
        )

    @property
    def held(self) -> str:
        """The condition of a row of the holder bound as ``holder`` (``{hint}`` SQLite's)."""
        if self.claims is None:
            return f"{{hint}}{self.holder} = {{holder}}"
        return (
            f"EXISTS (SELECT 1 FROM {self.claims} AS c WHERE c.token = {{holder}} "  # noqa: S608
            f"AND {self.table}.seq BETWEEN c.first_seq AND c.last_seq)"
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
        """Whether this is PostgreSQL (its binding, locking and clock differ)."""
        return self is POSTGRES

    def rows_source(self, name: str, columns: Sequence[tuple[str, str]]) -> str:
        """A ``FROM`` item ``v`` of the rows bound as ``name`` (see `bind_rows`).

        PostgreSQL takes one binary array per column.
        """
        if self.postgres:
            arrays = ", ".join(f"%({name}_{i})b::{kind}[]" for i, (_, kind) in enumerate(columns))
            names = ", ".join(col for col, _ in columns)
            return f"unnest({arrays}) AS v ({names})"
        picks = ", ".join(
            f"json_extract(value, '$[{i}]') AS {col}" for i, (col, _) in enumerate(columns)
        )
        return f"(SELECT {picks} FROM json_each({self.param(name)})) AS v"  # noqa: S608

    def collect(self, select: str, column: str = "seq") -> str:
        """One row of one value: ``column`` of ``select``'s rows, in order (see `collected`)."""
        if self.postgres:
            return f"SELECT ARRAY({select})"
        return f"SELECT json_group_array({column}) FROM ({select})"  # noqa: S608

    def collected(self, value: Any) -> list[Any]:
        """The values a `collect` statement read: a JSON array (SQLite) or an array."""
        return list(json.loads(value) if isinstance(value, str) else value)

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


_CLAIM_COLUMNS = (
    ("token", "text"),
    ("first_seq", "bigint"),
    ("last_seq", "bigint"),
    ("lease_until", "double precision"),
)
_END = 2**62  # beyond every seq


def _runs_outside(first: int, last: int, runs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """What is left of ``first..last`` once ``runs`` (sorted, disjoint) are cut out of it."""
    left, at = [], first
    for lo, hi in runs:
        if hi < at or lo > last:
            continue
        if lo > at:
            left.append((at, lo - 1))
        at = max(at, hi + 1)
    if at <= last:
        left.append((at, last))
    return left


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
        until = f"{now} + {p('lease')}"
        held = t.held.format(hint=d.hint, holder=p("holder"))
        if t.claims is not None and d.postgres:
            # the holder's rows lie between its runs' ends: PostgreSQL then walks that range
            # of an index, not the whole table (a hash join had no other way in)
            ends = f"FROM {t.claims} WHERE token = {p('holder')}"
            held += (
                f" AND {t.table}.seq BETWEEN (SELECT MIN(first_seq) {ends}) "
                f"AND (SELECT MAX(last_seq) {ends})"
            )
        if t.claims is None:  # a renewal may walk an index on the holder
            self._column_statements(index, until, t.held.format(hint="", holder=p("holder")))
        else:
            self._claim_statements(t.claims, index, until)
        outcomes = ", ".join(f"{col} = v.{col}" for col, _ in OUTCOME_COLUMNS[1:])
        match = (
            f"{t.table}.message_id = v.message_id AND {held} "
            f"AND {t.settleable.format(hint=d.hint, table=t.table)}"
        )
        source = d.rows_source("rows", OUTCOME_COLUMNS)
        self._settle = {
            done: (
                f"{d.clock}UPDATE {t.table} SET {outcomes}, "  # noqa: S608 - constants only
                f"{t.settled_at} = {now}{', ' + t.done_set if done else ''} "
                f"FROM {source} WHERE {match}"
                + (f" AND {t.table}.message_id = ANY(%(rows_0)b::text[])" if d.postgres else "")
                + (" RETURNING v.message_id" if d.postgres else "")
            )
            for done in (False, True)
        }
        # SQLite: which rows an outcome is for, as one JSON array (one step, not a step a row)
        self._settleable = (
            f"SELECT json_group_array(v.message_id) FROM {source}, {t.table} "  # noqa: S608
            f"WHERE {match}"
        )
        ids = d.rows_source("ids", (("message_id", "text"),))
        self._finish = (
            f"UPDATE {t.table} SET {t.done_set} "  # noqa: S608 - constants only
            f"WHERE {t.table}.message_id IN (SELECT v.message_id FROM {ids}) "
            f"AND {t.open} AND {t.recorded} AND {held}"
        )
        self._gone_with = t.claims is not None and d.postgres
        if self._gone_with:  # the holder's emptied runs go in the same statement
            self._settle[True] = self._and_gone(
                self._settle[True].replace(" RETURNING v.message_id", ""),
                "v.message_id, ",
                "SELECT message_id FROM changed",
            )
            self._finish = self._and_gone(self._finish, "", "SELECT COUNT(*) FROM changed")
        self._prune = f"DELETE FROM {t.table} WHERE {t.done} AND {t.settled_at} < {p('before')}"  # noqa: S608
        self._orphans = (
            f"DELETE FROM {t.parent} WHERE NOT EXISTS (SELECT 1 FROM {t.table} AS r "  # noqa: S608
            f"WHERE r.{t.parent_key} = {t.parent}.id)"
        )

    def _column_statements(self, index: str, until: str, held: str) -> None:
        """The statements of leases kept in a column of every row."""
        t, d, p = self.table, self.dialect, self.dialect.param
        now = d.now
        candidates = (
            f"SELECT seq FROM {t.table}{index} WHERE {t.open} "  # noqa: S608 - constants only
            f"AND ({t.takeable.format(now=now)} OR lease_until <= {now}) "
            f"ORDER BY {t.take_order} LIMIT {p('limit')}"
        )
        extra = f", {t.take_set}" if t.take_set else ""
        assign = f"SET {t.holder} = {p('holder')}, lease_until = {until}{extra}"
        if d.postgres:
            self._take = (
                f"{d.clock}, picked AS ({candidates} FOR UPDATE SKIP LOCKED) "  # noqa: S608
                f"UPDATE {t.table} {assign} "
                f"WHERE seq = ANY(ARRAY(SELECT seq FROM picked)) RETURNING seq"
            )
            self._candidates = ""
        else:
            self._candidates = f"SELECT json_group_array(seq) FROM ({candidates})"  # noqa: S608
            self._take = (
                f"UPDATE {t.table} {assign} "  # noqa: S608 - constants only
                f"WHERE seq IN (SELECT value FROM json_each({p('seqs')}))"
            )
        self._lease = (
            f"{d.clock}UPDATE {t.table} SET lease_until = {until} WHERE {held} AND {t.open}"  # noqa: S608
        )

    def _and_gone(self, update: str, returning: str, select: str) -> str:
        """PostgreSQL: ``update``, and the holder's runs left without an open row go.

        One statement: ``select`` reads ``changed`` (the columns ``returning`` of
        ``update``, and ``seq``); ``update`` may start with the clock. The deletion sees the
        rows as they were before the update: the rows it changed count as done.
        """
        t, d = self.table, self.dialect
        claims = t.claims
        body = update.removeprefix(d.clock)
        head = f"{d.clock}, " if body != update else "WITH "
        return (
            f"{head}changed AS ({body} RETURNING {returning}{t.table}.seq), "  # noqa: S608
            f"gone AS (DELETE FROM {claims} WHERE token = {d.param('holder')} AND NOT EXISTS "
            f"(SELECT 1 FROM {t.table} WHERE {t.open} AND {t.table}.seq BETWEEN "
            f"{claims}.first_seq AND {claims}.last_seq AND {t.table}.seq NOT IN "
            f"(SELECT seq FROM changed))) {select}"
        )

    def _claim_statements(self, claims: str, index: str, until: str) -> None:
        """The statements of leases kept as claims, each a run of rows."""
        t, d, p = self.table, self.dialect, self.dialect.param
        # takes run one at a time: SQLite's in a write transaction, PostgreSQL's under a
        # transaction-level advisory lock, which also reads the clock once for the take
        key = zlib.crc32(claims.encode())
        self._lock = (
            f"SELECT COALESCE({p('now')}::double precision, extract(epoch FROM "  # noqa: S608
            f"clock_timestamp())) FROM (SELECT pg_advisory_xact_lock({key})) AS l"
            if d.postgres
            else ""
        )
        lock_rows = " FOR UPDATE" if d.postgres else ""
        self._claim_rows = (
            f"SELECT token, first_seq, last_seq, lease_until FROM {claims}{lock_rows}"  # noqa: S608
        )
        self._open_between = d.collect(
            f"SELECT seq FROM {t.table}{index} WHERE {t.open} "  # noqa: S608 - constants only
            f"AND seq BETWEEN {p('lo')} AND {p('hi')} ORDER BY seq LIMIT {p('limit')}"
        )
        source = d.rows_source("claims", _CLAIM_COLUMNS)
        names = ", ".join(col for col, _ in _CLAIM_COLUMNS)
        self._add_claims = f"INSERT INTO {claims} ({names}) SELECT {names} FROM {source}"  # noqa: S608
        keys = d.rows_source("keys", _CLAIM_COLUMNS[:2])
        self._drop_claims = (
            f"DELETE FROM {claims} WHERE (token, first_seq) IN "  # noqa: S608 - constants only
            f"(SELECT v.token, v.first_seq FROM {keys})"
        )
        seqs = d.rows_source("seqs", (("seq", "bigint"),))
        self._adopt = (
            f"UPDATE {t.table} SET {t.adopt_set} "  # noqa: S608 - constants only
            f"WHERE seq IN (SELECT v.seq FROM {seqs})"
            if t.adopt_set
            else ""
        )
        in_run = f"{t.table}.seq BETWEEN c.first_seq AND c.last_seq"
        moved = f"UPDATE {claims} SET lease_until = {until} WHERE token = {p('holder')}"  # noqa: S608
        count = (
            f"SELECT COUNT(*) FROM {claims} AS c JOIN {t.table} ON {in_run} "  # noqa: S608
            f"WHERE c.token = {p('holder')} AND {t.open}"
        )
        if d.postgres:  # one statement, one round trip
            self._lease, self._held = f"{d.clock}, moved AS ({moved}) {count}", ""
        else:
            self._lease, self._held = moved, count
        # a claim row goes once no open row is in its run (its holder's, or any)
        empty = (
            f"NOT EXISTS (SELECT 1 FROM {t.table}{index} WHERE {t.open} "  # noqa: S608
            f"AND {t.table}.seq BETWEEN {claims}.first_seq AND {claims}.last_seq)"
        )
        self._finished = f"DELETE FROM {claims} WHERE token = {p('holder')} AND {empty}"  # noqa: S608
        self._ended = f"DELETE FROM {claims} WHERE {empty}"  # noqa: S608
        self._tally = (
            f"{d.clock}SELECT (SELECT COUNT(*) FROM {t.table}{index} WHERE {t.open}), "  # noqa: S608
            f"(SELECT COUNT(*) FROM {claims} AS c JOIN {t.table} ON {in_run} WHERE {t.open}), "
            f"(SELECT MIN(c.lease_until) FROM {claims} AS c WHERE EXISTS (SELECT 1 FROM "
            f"{t.table} WHERE {in_run} AND {t.open})), {d.now}"
        )

    def take(
        self, execute: Execute, *, holder: str, lease: float, limit: int, now: float | None
    ) -> list[int]:
        """Give ``holder`` up to ``limit`` rows until ``now + lease``; their ``seq``s.

        Takeable rows, and open rows whose lease ended, in take order.

        Two takes never hold one row at once: SQLite's run in one write transaction,
        PostgreSQL's skip the rows another take is locking (leases in a column) or wait
        for each other (claims).
        """
        params = {"holder": holder, "lease": lease, "limit": limit, "now": now}
        if self.table.claims is not None:
            return self.claim(execute, holder=holder, lease=lease, limit=limit, now=now)[0]
        if self.dialect.postgres:
            return sorted(row[0] for row in execute(self._take, params).fetchall())
        ((seqs,),) = execute(self._candidates, params).fetchall()
        if seqs == "[]":
            return []
        execute(self._take, {**params, "seqs": seqs})
        return list(json.loads(seqs))

    def claim(
        self, execute: Execute, *, holder: str, lease: float, limit: int, now: float | None
    ) -> tuple[list[int], float]:
        """A take as claims: the ``seq``s taken, and when their lease ends.

        The open rows outside live claims, in ``seq`` order; one claim row per run.

        A run ends before a claim that is still live. A claim whose lease ended keeps
        what of its run the take left (its holder may still settle those rows), and each
        row taken from it is adopted (``adopt_set``).
        """
        d = self.dialect
        if self._lock:
            ((now,),) = execute(self._lock, {"now": now}).fetchall()
        assert now is not None  # noqa: S101 - SQLite stores bind their clock
        claims = [tuple(row) for row in execute(self._claim_rows, {}).fetchall()]
        live = sorted((first, last) for _, first, last, until in claims if until > now)
        runs: list[list[int]] = []
        left, lo = limit, 0
        for first, last in [*live, (_END, _END)]:
            if lo <= first - 1:
                params = {"lo": lo, "hi": first - 1, "limit": left}
                ((got,),) = execute(self._open_between, params).fetchall()
                seqs = d.collected(got)
                if seqs:
                    runs.append(seqs)
                    left -= len(seqs)
                    if not left:
                        break
            lo = max(lo, last + 1)
        until = now + lease
        if not runs:
            return [], until
        spans = [(run[0], run[-1]) for run in runs]
        taken = [seq for run in runs for seq in run]
        added = [(holder, first, last, until) for first, last in spans]
        ended = [
            c
            for c in claims
            if c[3] <= now and any(c[1] <= last and c[2] >= first for first, last in spans)
        ]
        if ended:
            adopted = [(s,) for s in taken if any(c[1] <= s <= c[2] for c in ended)]
            if adopted and self._adopt:
                execute(self._adopt, d.bind_rows("seqs", adopted, 1))
        self._cut(execute, ended, spans, added)
        return taken, until

    def _cut(
        self,
        execute: Execute,
        claims: Sequence[tuple[Any, ...]],
        spans: Sequence[tuple[int, int]],
        added: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        """Cut ``spans`` out of the runs of the claim rows ``claims``, and add ``added``.

        A run left with no open row goes.
        """
        d = self.dialect
        if claims:
            execute(self._drop_claims, d.bind_rows("keys", [c[:2] for c in claims], 2))
        left = [
            (token, a, b, until)
            for token, first, last, until in claims
            for a, b in _runs_outside(first, last, spans)
        ]
        rows = [*added, *left]
        if rows:
            execute(self._add_claims, d.bind_rows("claims", rows, len(_CLAIM_COLUMNS)))
        for token in {c[0] for c in left}:
            execute(self._finished, {"holder": token})

    def free(self, execute: Execute, seqs: Sequence[int]) -> None:
        """No claim holds the rows ``seqs`` any more (their runs are cut around them)."""
        if self.table.claims is None or not seqs:
            return
        if self._lock:  # as a take does: a take must not miss the runs written here
            execute(self._lock, {"now": None}).fetchall()
        spans = [(seq, seq) for seq in sorted(seqs)]
        claims = [
            tuple(c)
            for c in execute(self._claim_rows, {}).fetchall()
            if any(c[1] <= seq <= c[2] for seq, _ in spans)
        ]
        if claims:
            self._cut(execute, claims, spans)

    @property
    def renew_statement(self) -> str:
        """The statement that moves a holder's lease (parameters ``holder``, ``lease``, ``now``)."""
        return self._lease

    def renew(self, execute: Execute, *, holder: str, lease: float, now: float | None) -> int:
        """Move the lease of the holder's open rows to ``now + lease``; how many it holds."""
        params = {"holder": holder, "lease": lease, "now": now}
        if self.table.claims is None:
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

        ``rows`` are of ``OUTCOME_COLUMNS``; ``done`` makes the rows done too (and a
        claim with no open row left goes).
        """
        if not rows:
            return set()
        params = {
            "holder": holder,
            "now": now,
            **self.dialect.bind_rows("rows", rows, len(OUTCOME_COLUMNS)),
        }
        if self.dialect.postgres:
            recorded = {row[0] for row in execute(self._settle[done], params).fetchall()}
        else:
            recorded = self._settle_sqlite(execute, params, rows, done=done)
        if done and recorded:
            self._drop_finished(execute, holder)
        return recorded

    def _settle_sqlite(
        self,
        execute: Execute,
        params: Mapping[str, Any],
        rows: Sequence[Sequence[Any]],
        *,
        done: bool,
    ) -> set[str]:
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

    def finish(self, execute: Execute, *, holder: str, message_ids: Sequence[str]) -> int:
        """Make the holder's recorded rows of ``message_ids`` done; how many were."""
        if not message_ids:
            return 0
        params = {"holder": holder, **self.dialect.bind_rows("ids", [(m,) for m in message_ids], 1)}
        if self._gone_with:
            ((n,),) = execute(self._finish, params).fetchall()
            return int(n)
        n = execute(self._finish, params).rowcount
        if n:
            self._drop_finished(execute, holder)
        return n

    def _drop_finished(self, execute: Execute, holder: str) -> None:
        if self.table.claims is not None and not self._gone_with:
            execute(self._finished, {"holder": holder})

    def tally(self, execute: Execute, *, now: float | None) -> tuple[int, int, float | None, float]:
        """Claims: the open rows, those a claim holds, the first lease of those, and now."""
        ((open_, held, first, clock),) = execute(self._tally, {"now": now}).fetchall()
        return int(open_), int(held), None if first is None else float(first), float(clock)

    def prune(self, execute: Execute, *, before: float) -> int:
        """Delete done rows settled before ``before`` (and payloads no row refers to)."""
        n = execute(self._prune, {"before": before}).rowcount
        execute(self._orphans, {})
        if self.table.claims is not None:
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
