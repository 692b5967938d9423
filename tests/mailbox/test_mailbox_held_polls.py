"""Held long polls of the ASGI app: how they wake, and how they end.

A held poll waits in its own request's task for its client to leave, and a wake-up
cancels that wait. These tests drive the ASGI app directly on an event loop of their
own, with a ``receive`` that hands over the body and then waits for a disconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from flnotify import Signer, generate_secret
from flnotify.mailbox import Mailbox, MailboxApp
from flnotify.mailbox._store import Letter
from flnotify.mailbox._wire import fetch_document
from helpers.mailbox_env import signed


class Poll:
    """One fetch through the ASGI app: its task, what it sent, a way to hang up.

    ``waits`` counts the times the held poll waited for its client to leave (each wait
    for a wake-up); past ``patience`` of them the client hangs up.
    """

    def __init__(
        self, app: MailboxApp, client: uuid.UUID, secret: str, patience: int | None = None
    ) -> None:
        body = fetch_document(client, 30, 10)
        headers = signed(secret, body)
        self.scope = {
            "type": "http",
            "method": "POST",
            "path": "/mailbox/fetch",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
        self.incoming: list[dict[str, Any]] = [
            {"type": "http.request", "body": body, "more_body": False}
        ]
        self.left = asyncio.Event()
        self.waits = 0
        self.patience = patience
        self.sent: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self.serve(app))

    async def serve(self, app: MailboxApp) -> None:
        await app.asgi_app()(self.scope, self.receive, self.send)

    async def receive(self) -> dict[str, Any]:
        if self.incoming:
            return self.incoming.pop(0)
        self.waits += 1
        if self.patience is not None and self.waits > self.patience:
            self.left.set()
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Mapping[str, Any]) -> None:
        self.sent.append(dict(message))

    def offered(self) -> list[str]:
        """The webhook-ids of the answer."""
        assert self.sent[0]["status"] == 200
        answer = json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))
        return [m["headers"]["webhook-id"] for m in answer["messages"]]


async def _until_held(app: MailboxApp, polls: int) -> None:
    """Let the loop run until ``polls`` polls are held (each step is the loop's own)."""
    for _ in range(10_000):
        if app._waiting.open == polls:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{app._waiting.open} polls held, not {polls}")


def _keys() -> tuple[uuid.UUID, str, Signer]:
    client, secret = uuid.uuid4(), generate_secret()
    return client, secret, Signer(lookup=lambda r: secret if r.id == client else None)


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="Task.uncancel (3.11) tells the server's cancellation from a wake-up's",
)
@pytest.mark.parametrize("order", ["cancelled, then woken", "at once", "woken, then cancelled"])
def test_a_held_poll_cancelled_by_its_server_ends_even_if_mail_wakes_it_then(
    tmp_path: Path, order: str
) -> None:
    """The server's cancellation is never taken for a wake-up, however the two meet."""
    client, secret, signer = _keys()

    async def main() -> None:
        with Mailbox(tmp_path / "mail.db") as store:
            app = MailboxApp(store, signer, poll_interval=3600)
            poll = Poll(app, client, secret)
            await _until_held(app, 1)
            if order == "cancelled, then woken":
                poll.task.cancel()  # the server shuts down; the poll resumes before the mail
            # mail: its wake-up is handed to the loop, to run at its next turn
            store.post("snd_1", 1, b"{}", [(client, "msg_1")], owner="o", lease_seconds=60)
            if order == "woken, then cancelled":
                await asyncio.sleep(0)  # the wake-up runs: it cancels the poll's wait
            if order != "cancelled, then woken":
                poll.task.cancel()  # before the poll's task resumes
            with pytest.raises(asyncio.CancelledError):
                await poll.task
            assert app._waiting.open == 0
            assert poll.sent == []
            assert store.counts()["queued"] == 1  # nothing was handed to a gone poll

    asyncio.run(main())


def test_a_wake_up_while_the_poll_looks_for_mail_is_not_lost(tmp_path: Path) -> None:
    """Mail that comes while a woken poll's look finds nothing is looked for again."""
    client, secret, signer = _keys()

    class PostsWhileLooking(Mailbox):
        """Posts a letter in the middle of the first look that finds nothing."""

        looks = 0

        def fetch_many(self, limits: Mapping[uuid.UUID, int]) -> dict[uuid.UUID, list[Letter]]:
            found = super().fetch_many(limits)
            self.looks += 1
            if self.looks == 2:  # the look after the empty wake-up below
                self.post("snd_1", 1, b"{}", [(client, "msg_1")], owner="o", lease_seconds=60)
            return found

    async def main() -> None:
        with PostsWhileLooking(tmp_path / "mail.db") as store:
            app = MailboxApp(store, signer, poll_interval=3600)
            # a poll that waits once more (for a wake-up that was lost) is hung up on
            poll = Poll(app, client, secret, patience=1)
            await _until_held(app, 1)
            app._waiting.wake([client])  # a wake-up without mail for it: the look is empty
            await poll.task
            assert poll.offered() == ["msg_1"]
            assert (poll.waits, store.looks) == (1, 3)  # looked at once, without waiting

    asyncio.run(main())


def test_a_client_that_leaves_frees_its_poll_and_is_handed_nothing(tmp_path: Path) -> None:
    client, secret, signer = _keys()

    async def main() -> None:
        with Mailbox(tmp_path / "mail.db") as store:
            app = MailboxApp(store, signer, poll_interval=3600, max_polls_per_client=1)
            poll = Poll(app, client, secret)
            await _until_held(app, 1)
            poll.left.set()
            await poll.task
            assert (poll.sent, app._waiting.open) == ([], 0)
            store.post("snd_1", 1, b"{}", [(client, "msg_1")], owner="o", lease_seconds=60)
            again = Poll(app, client, secret)  # its one poll slot is free again
            await again.task
            assert again.offered() == ["msg_1"]

    asyncio.run(main())


def test_a_held_poll_whose_servers_receive_fails_ends_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``receive`` that raises while the poll waits is a client gone: no 500, no log."""
    client, secret, signer = _keys()

    class Broken(Poll):
        async def receive(self) -> dict[str, Any]:
            if self.incoming:
                return self.incoming.pop(0)
            await self.left.wait()
            raise RuntimeError("the connection is gone")

    async def main() -> None:
        with Mailbox(tmp_path / "mail.db") as store:
            app = MailboxApp(store, signer, poll_interval=3600)
            poll = Broken(app, client, secret)
            await _until_held(app, 1)
            poll.left.set()
            await poll.task
            assert (poll.sent, app._waiting.open) == ([], 0)

    with caplog.at_level(logging.WARNING, "flnotify"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
