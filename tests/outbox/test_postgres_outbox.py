"""What only the PostgreSQL store has: the server's clock, reconnects, its error edge."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg
import pytest

import flnotify
from flnotify import Receiver
from flnotify.errors import ConfigurationError, OutboxError
from flnotify.outbox import Outbox, OutboxState, PostgresOutbox, open_outbox

MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")


def start(n: int) -> flnotify.TrainingStartNotification:
    return flnotify.TrainingStartNotification(
        receivers=[Receiver(uuid.UUID(int=i + 1), f"http://c{i}.test/m") for i in range(n)],
        body=flnotify.GlobalModelBody(global_model_uuid=MODEL),
        training_uuid=MODEL,
    )


def test_leases_are_measured_by_the_servers_clock(postgres_url: str) -> None:
    with PostgresOutbox(postgres_url) as outbox:
        before = time.time()
        outbox.put(start(2))
        claim = outbox.claim(10, lease_seconds=30)
        after = time.time()
        # the server runs on this machine: its clock is ours, within a second
        assert before - 1 <= claim.lease_until - 30 <= after + 1
        assert before - 1 <= outbox.now() <= time.time() + 1


def test_outcomes_have_a_connection_of_their_own_that_closes_with_the_store(
    postgres_url: str,
) -> None:
    """Outcomes are written beside the claims, on a second connection opened by the first
    one; a closed store refuses outcomes and opens nothing for them."""
    name = f"flnotify-test-{uuid.uuid4().hex[:8]}"  # this test's sessions only
    url = postgres_url + ("&" if "?" in postgres_url else "?") + f"application_name={name}"

    def sessions(admin: psycopg.Connection[tuple[int]]) -> int:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        outbox = PostgresOutbox(url)
        outbox.put(start(2))
        claim = outbox.claim(10, lease_seconds=30)
        assert sessions(admin) == 1
        first, second = (
            flnotify.Delivery(
                e.receiver, start(2), flnotify.Outcome.DELIVERED, e.message_id, 1, 0.1
            )
            for e in claim.entries
        )
        assert outbox.record(claim, [first]) == [first]
        assert outbox.finish(claim, [first.message_id]) == 1
        assert sessions(admin) == 2
        outbox.close()  # both: a closed store refuses outcomes, and opens nothing for them
        with pytest.raises(ConfigurationError, match="closed"):
            outbox.record(claim, [second], done=True)
        unused = PostgresOutbox(url)  # closed before its first outcome
        unused.close()
        with pytest.raises(ConfigurationError, match="closed"):
            unused.record(claim, [second], done=True)


def test_open_outbox_picks_the_store_by_its_target(postgres_url: str, tmp_path: Path) -> None:
    with open_outbox(postgres_url) as outbox:
        assert isinstance(outbox, PostgresOutbox)
    with open_outbox(str(tmp_path / "o.db")) as outbox:
        assert isinstance(outbox, Outbox)


def test_a_dropped_connection_is_an_error_once_then_reopened(postgres_url: str) -> None:
    with PostgresOutbox(postgres_url) as outbox:
        outbox.put(start(1))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(OutboxError):
            outbox.counts()
        assert outbox.counts()[OutboxState.PENDING] == 1


def test_database_errors_inside_a_transaction_roll_it_back(postgres_url: str) -> None:
    with PostgresOutbox(postgres_url) as outbox:
        outbox.put(start(1), message_ids=["dup"])
        with pytest.raises(OutboxError, match="duplicate key"):
            outbox.put(start(3), message_ids=["a", "b", "dup"])
        assert [e.message_id for e in outbox.entries()] == ["dup"]
        (only,) = outbox.entries()
        assert only.batch_id  # the failed put's batch row went with its rollback
        with psycopg.connect(postgres_url) as conn:
            (batches,) = conn.execute("SELECT count(*) FROM flnotify_outbox_batches").fetchone()  # type: ignore[misc]
        assert batches == 1
