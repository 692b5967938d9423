"""The mailbox stores pass the one contract suite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from flnotify.mailbox import Mailbox, MailboxStore
from flnotify.mailbox._contract import MailboxStoreContract


class TestSQLiteMailboxContract(MailboxStoreContract):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "mailbox.db"

    def make_mailbox(
        self, clock: Callable[[], float], *, ack_deadline: float, visibility: float
    ) -> MailboxStore:
        return Mailbox(self.path, clock=clock, ack_deadline=ack_deadline, visibility=visibility)
