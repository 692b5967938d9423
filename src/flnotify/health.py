"""Endpoint health: a circuit breaker per endpoint, so a dead client stops costing a timeout.

After ``failure_threshold`` consecutive failed attempts to an endpoint (no answer, or a
"try later" status such as 503), the endpoint is *open* for ``cool_down`` seconds: its
receivers fail at once, with 0 attempts and a
[`CircuitOpenError`][flnotify.errors.CircuitOpenError], instead of waiting for a timeout every
round. After the cool-down one attempt (the probe) is let through; an answer closes the
endpoint again, another failure opens it for another cool-down. Any other answer (2xx, a
rejection) counts as healthy: the client is there.

The state lives in a [`HealthStore`][flnotify.health.HealthStore]: in memory by default, or
[`SQLiteHealthStore`][flnotify.health.SQLiteHealthStore] shared by the processes of one
host (Celery workers, outbox dispatchers). Times are the driver's wall clock (epoch
seconds), the same in every process; inject it in tests.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Protocol

import attrs

from ._closing import Closing
from ._exceptions import RepositoryError
from ._sqlite import SQLiteConnection, fspath
from ._validators import at_least_one, positive

__all__ = [
    "EndpointHealth",
    "HealthStore",
    "InMemoryHealthStore",
    "SQLiteHealthStore",
]


@attrs.frozen
class EndpointHealth:
    """What a store knows of one endpoint.

    Args:
        failures: Consecutive failed attempts.
        open_until: Until when the endpoint is open (0: closed).
        probe_until: Until when a probe let through after the cool-down is in flight.
    """

    failures: int = 0
    open_until: float = 0.0
    probe_until: float = 0.0


class HealthStore(Protocol):
    """Where endpoint health is kept; each call is atomic (several processes may share it)."""

    def admit(self, endpoint: str, now: float, cool_down: float) -> float | None:
        """Whether an attempt may go to ``endpoint`` now.

        Returns:
            ``None``: yes (closed, or this caller takes the one probe after the
            cool-down, which holds the probe for ``cool_down`` seconds); else the time until
            which the endpoint is open.
        """
        ...

    def record(
        self, endpoint: str, healthy: bool, now: float, threshold: int, cool_down: float
    ) -> None:
        """Take one attempt's result.

        Healthy closes the endpoint; the ``threshold``-th failure in a row (or a failed
        probe) opens it until ``now + cool_down``.
        """
        ...


def _admit(health: EndpointHealth | None, now: float, cool_down: float) -> tuple[bool, float]:
    """The admission rule, shared by the stores: (admitted, open until or new probe lease)."""
    if health is None or health.open_until <= 0:
        return True, 0.0
    if now < health.open_until:
        return False, health.open_until
    if now < health.probe_until:
        return False, health.probe_until  # another attempt is probing
    return True, now + cool_down  # this one probes


def _after(
    health: EndpointHealth | None, healthy: bool, now: float, threshold: int, cool_down: float
) -> EndpointHealth | None:
    """The state after one attempt's result (``None``: forget the endpoint, it is healthy)."""
    if healthy:
        return None
    failures = (health.failures if health is not None else 0) + 1
    probing = health is not None and health.open_until > 0
    if failures >= threshold or probing:
        return EndpointHealth(failures, now + cool_down, 0.0)
    return EndpointHealth(failures)


@attrs.define
class InMemoryHealthStore:
    """Endpoint health in a dict: one process."""

    _health: dict[str, EndpointHealth] = attrs.field(init=False, factory=dict, repr=False)
    _updated: dict[str, float] = attrs.field(init=False, factory=dict, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def admit(self, endpoint: str, now: float, cool_down: float) -> float | None:
        """See [`HealthStore.admit`][flnotify.health.HealthStore.admit]."""
        with self._lock:
            health = self._health.get(endpoint)
            admitted, until = _admit(health, now, cool_down)
            if admitted and until and health is not None:
                self._health[endpoint] = attrs.evolve(health, probe_until=until)
                self._updated[endpoint] = now
            return None if admitted else until

    def record(
        self, endpoint: str, healthy: bool, now: float, threshold: int, cool_down: float
    ) -> None:
        """See [`HealthStore.record`][flnotify.health.HealthStore.record]."""
        with self._lock:
            after = _after(self._health.get(endpoint), healthy, now, threshold, cool_down)
            if after is None:
                self._health.pop(endpoint, None)
                self._updated.pop(endpoint, None)
            else:
                self._health[endpoint] = after
                self._updated[endpoint] = now

    def get(self, endpoint: str) -> EndpointHealth:
        """The endpoint's health as it stands."""
        with self._lock:
            return self._health.get(endpoint, EndpointHealth())

    def prune(self, before: float) -> int:
        """See [`SQLiteHealthStore.prune`][flnotify.health.SQLiteHealthStore.prune]."""
        with self._lock:
            old = [
                endpoint
                for endpoint, health in self._health.items()
                if max(self._updated.get(endpoint, 0.0), health.open_until, health.probe_until)
                < before
            ]
            for endpoint in old:
                del self._health[endpoint]
                self._updated.pop(endpoint, None)
            return len(old)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS flnotify_endpoint_health (
    endpoint TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    open_until REAL NOT NULL,
    probe_until REAL NOT NULL,
    updated_at REAL NOT NULL DEFAULT 0
)
"""


_PRUNE = """
DELETE FROM flnotify_endpoint_health
WHERE updated_at < ? AND open_until < ? AND probe_until < ?
"""


@attrs.define(eq=False)
class SQLiteHealthStore(Closing):
    """Endpoint health in an SQLite file, shared by the processes of one host.

    Each call is one short ``BEGIN IMMEDIATE`` transaction (WAL mode), so two processes
    never both take the probe. It may share a file with the outbox or the repository.

    Args:
        path: The database file.
        busy_timeout: Seconds to wait for another process's write lock.

    Raises:
        RepositoryError: The file cannot be opened or used.
    """

    path: str = attrs.field(converter=fspath)
    busy_timeout: float = attrs.field(default=5.0, validator=positive, repr=False)
    _db: SQLiteConnection = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._db = SQLiteConnection.open(
            self.path,
            label="health store",
            error=RepositoryError,
            prepare=self._prepare,
            timeout=self.busy_timeout,
            wrap_errors=True,
        )

    @staticmethod
    def _prepare(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(flnotify_endpoint_health)")}
        if "updated_at" not in columns:  # a file of an earlier flnotify
            conn.execute(
                "ALTER TABLE flnotify_endpoint_health ADD COLUMN updated_at REAL NOT NULL DEFAULT 0"
            )
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection; idempotent."""
        self._db.close()

    @staticmethod
    def _read(conn: sqlite3.Connection, endpoint: str) -> EndpointHealth | None:
        row = conn.execute(
            "SELECT failures, open_until, probe_until FROM flnotify_endpoint_health "
            "WHERE endpoint = ?",
            (endpoint,),
        ).fetchone()
        return None if row is None else EndpointHealth(int(row[0]), float(row[1]), float(row[2]))

    @staticmethod
    def _write(
        conn: sqlite3.Connection, endpoint: str, health: EndpointHealth | None, now: float
    ) -> None:
        if health is None:
            conn.execute("DELETE FROM flnotify_endpoint_health WHERE endpoint = ?", (endpoint,))
            return
        conn.execute(
            "INSERT INTO flnotify_endpoint_health VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint) "
            "DO UPDATE SET failures = excluded.failures, open_until = excluded.open_until, "
            "probe_until = excluded.probe_until, updated_at = excluded.updated_at",
            (endpoint, health.failures, health.open_until, health.probe_until, now),
        )

    def admit(self, endpoint: str, now: float, cool_down: float) -> float | None:
        """See [`HealthStore.admit`][flnotify.health.HealthStore.admit]."""
        with self._db.transaction(self, write=True) as conn:
            health = self._read(conn, endpoint)
            admitted, until = _admit(health, now, cool_down)
            if admitted and until and health is not None:
                self._write(conn, endpoint, attrs.evolve(health, probe_until=until), now)
        return None if admitted else until

    def record(
        self, endpoint: str, healthy: bool, now: float, threshold: int, cool_down: float
    ) -> None:
        """See [`HealthStore.record`][flnotify.health.HealthStore.record]."""
        with self._db.transaction(self, write=True) as conn:
            health = self._read(conn, endpoint)
            if health is None and healthy:
                return  # the common case: nothing to forget
            after = _after(health, healthy, now, threshold, cool_down)
            self._write(conn, endpoint, after, now)

    def get(self, endpoint: str) -> EndpointHealth:
        """The endpoint's health as it stands."""
        with self._db.transaction(self, write=False) as conn:
            return self._read(conn, endpoint) or EndpointHealth()

    def prune(self, before: float) -> int:
        """Forget endpoints last heard of before ``before`` and not open or probed since.

        ``before`` is in the time the breaker passes its store (epoch seconds). A
        receiver that went away leaves its endpoint's failures behind; this removes them.
        Returns how many endpoints were forgotten.
        """
        with self._db.transaction(self, write=True) as conn:
            return conn.execute(_PRUNE, (before, before, before)).rowcount


@attrs.frozen
class CircuitBreaker:
    """Stops attempts to an endpoint that keeps failing, and probes it after a cool-down.

    Args:
        failure_threshold: Consecutive failed attempts that open an endpoint.
        cool_down: Seconds an endpoint stays open before one probe is let through.
        store: Where the health of endpoints is kept (shared by drivers that share it).
    """

    failure_threshold: int = attrs.field(default=5, validator=at_least_one)
    cool_down: float = attrs.field(default=60.0, validator=positive)
    store: HealthStore = attrs.field(factory=InMemoryHealthStore)

    def admit(self, endpoint: str, now: float) -> float | None:
        """``None`` if an attempt may go to ``endpoint`` now, else until when it is open."""
        return self.store.admit(endpoint, now, self.cool_down)

    def record(self, endpoint: str, healthy: bool, now: float) -> None:
        """Tell the store how one attempt to ``endpoint`` went."""
        self.store.record(endpoint, healthy, now, self.failure_threshold, self.cool_down)


def healthy_answer(status: int | None, retry_statuses: frozenset[int]) -> bool:
    """Whether an attempt's result shows a live client: any answer but "try again later"."""
    return status is not None and status not in retry_statuses
