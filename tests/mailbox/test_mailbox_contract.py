"""Both mailbox stores pass the one contract suite, and agree on what operators see."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from flnotify import Delivery, GlobalModelBody, Outcome, Receiver, TrainingStartNotification
from flnotify.errors import ConnectError, MailboxError
from flnotify.mailbox import (
    MAILBOX_ENDPOINT,
    Letter,
    Mailbox,
    MailboxStore,
    PostgresMailbox,
    open_mailbox,
)
from flnotify.outbox import PostgresOutbox
from flnotify.outbox._contract import ContractClock
from flnotify.testing import MailboxStoreContract


class TestSQLiteMailboxContract(MailboxStoreContract):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "mailbox.db"

    def make_mailbox(
        self, clock: Callable[[], float], *, ack_deadline: float, visibility: float
    ) -> MailboxStore:
        return Mailbox(self.path, clock=clock, ack_deadline=ack_deadline, visibility=visibility)


class TestPostgresMailboxContract(MailboxStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str) -> None:
        self.url = postgres_url

    def make_mailbox(
        self, clock: Callable[[], float], *, ack_deadline: float, visibility: float
    ) -> MailboxStore:
        return PostgresMailbox(
            self.url, clock=clock, ack_deadline=ack_deadline, visibility=visibility
        )


# -- what only the PostgreSQL store has: the server's clock, its error edge, reconnects ----

CLIENT = uuid.UUID(int=7)


def test_deadlines_are_measured_by_the_servers_clock(postgres_url: str) -> None:
    with PostgresMailbox(postgres_url, ack_deadline=60.0) as mailbox:
        before = time.time()
        mailbox.post("s1", 1, b"body", [(CLIENT, "m1")], owner="judge", lease_seconds=30)
        after = time.time()
        # the server runs on this machine: its clock is ours, within a second
        assert before - 1 <= mailbox.now() <= time.time() + 1
        assert mailbox.fetchable([CLIENT]) == {CLIENT}
        assert mailbox.fetch(CLIENT, 10) == [Letter("m1", CLIENT, b"body", 1)]
        assert mailbox.fetchable([CLIENT]) == set()  # hidden for 30 s of the server's time
        mailbox.release("judge")
        (adopted,) = mailbox.adopt("other", 30.0, 10)
        assert before - 1 <= adopted.posted_at <= after + 1


def test_a_dropped_connection_is_an_error_once_then_reopened(postgres_url: str) -> None:
    with PostgresMailbox(postgres_url) as mailbox:
        mailbox.post("s1", 1, b"body", [(CLIENT, "m1")], owner="judge", lease_seconds=30)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(MailboxError):
            mailbox.counts()
        assert mailbox.counts()["queued"] == 1
        with pytest.raises(MailboxError):  # the clients' connection was dropped too
            mailbox.fetch(CLIENT, 10)
        assert [x.message_id for x in mailbox.fetch(CLIENT, 10)] == ["m1"]


def test_it_shares_a_database_with_the_outbox(postgres_url: str) -> None:
    with PostgresOutbox(postgres_url) as outbox, PostgresMailbox(postgres_url) as mailbox:
        mailbox.post("s1", 1, b"body", [(CLIENT, "m1")], owner="judge", lease_seconds=30)
        assert sum(outbox.counts().values()) == 0
        assert mailbox.counts()["queued"] == 1


def test_both_stores_show_operators_the_same_rows(tmp_path: Path, postgres_url: str) -> None:
    clock = ContractClock()
    with (
        Mailbox(tmp_path / "m.db", clock=clock) as sqlite,
        PostgresMailbox(postgres_url, clock=clock) as postgres,
    ):
        seen = []
        for store in (sqlite, postgres):
            others = [uuid.UUID(int=i) for i in (1, 2, 3)]
            letters = [(client, f"m{i}") for i, client in enumerate([CLIENT, *others])]
            store.post("s1", 4, b"body", letters, owner="judge", lease_seconds=30)
            store.fetch(CLIENT, 10)
            store.fetch(others[0], 10)
            store.ack(CLIENT, [("m0", 204)])
            store.ack(others[0], [("m1", 503)])
            failed = Delivery(
                Receiver(others[1], MAILBOX_ENDPOINT),
                TrainingStartNotification(
                    receivers=[Receiver(others[1], MAILBOX_ENDPOINT)],
                    body=GlobalModelBody(global_model_uuid=CLIENT),
                    training_uuid=CLIENT,
                ),
                Outcome.FAILED,
                "m2",
                3,
                1.5,
                None,
                ConnectError("gone \x00 ü", url=MAILBOX_ENDPOINT),
            )
            store.settle("judge", [failed])
            seen.append(store.rows())
        assert seen[0] == seen[1]
        assert [(r["message_id"], r["state"], r["status"]) for r in seen[1]] == [
            ("m0", "answered", 204),
            ("m1", "answered", 503),
            ("m2", "done", None),
            ("m3", "queued", None),
        ]
        assert seen[1][2]["outcome"] == "failed"
        assert seen[1][2]["client_id"] == str(others[1])


def test_open_mailbox_picks_the_store_by_its_target(tmp_path: Path, postgres_url: str) -> None:
    with open_mailbox(str(tmp_path / "mail.db"), ack_deadline=5.0) as embedded:
        assert isinstance(embedded, Mailbox)
        assert embedded.ack_deadline == 5.0
    with open_mailbox(postgres_url, visibility=7.0) as shared:
        assert isinstance(shared, PostgresMailbox)
        assert shared.visibility == 7.0
