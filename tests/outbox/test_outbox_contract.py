"""Both outbox stores pass the one contract suite shipped in flnotify.testing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from flnotify.outbox import Outbox, OutboxStore, PostgresOutbox
from flnotify.testing import OutboxStoreContract


class TestSQLiteOutboxContract(OutboxStoreContract):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "outbox.db"

    def make_outbox(self, clock: Callable[[], float]) -> OutboxStore:
        return Outbox(self.path, clock=clock)


class TestPostgresOutboxContract(OutboxStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str) -> None:
        self.url = postgres_url

    def make_outbox(self, clock: Callable[[], float]) -> OutboxStore:
        return PostgresOutbox(self.url, clock=clock)


def test_both_stores_are_outbox_stores(tmp_path: Path, postgres_url: str) -> None:
    with Outbox(tmp_path / "o.db") as sqlite, PostgresOutbox(postgres_url) as postgres:
        assert isinstance(sqlite, OutboxStore)
        assert isinstance(postgres, OutboxStore)
