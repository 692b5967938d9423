"""``MailboxPoller`` end to end: a Notifier sends through the real mailbox (SQLite store,
``MailboxApp`` under uvicorn or flnotify's WSGI server, on 127.0.0.1) to polling clients
whose routers answer; each report shows what the client's router answered."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flnotify
from flnotify import (
    GlobalModelBody,
    Notifier,
    Outcome,
    Receiver,
    RoundBody,
    Signer,
    generate_secret,
)
from flnotify.errors import MailboxStatusError
from flnotify.mailbox import MAILBOX_ENDPOINT, Mailbox, MailboxApp
from flnotify.receiving import InMemoryIdStore, MailboxPoller, NotificationRouter, Reply
from helpers.mailbox_env import asgi_server, wsgi_server

SERVERS = {"asgi": asgi_server, "wsgi": wsgi_server}
MODEL = uuid.UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")


class Client:
    """A polling FL client: its receiver, secret, router and what its handlers saw."""

    def __init__(self, secrets: dict[uuid.UUID, str], status: int | None = None) -> None:
        self.receiver = Receiver(uuid.uuid4(), MAILBOX_ENDPOINT)
        self.secret = secrets[self.receiver.id] = generate_secret()
        self.seen: list[flnotify.Notification[Any]] = []
        self.router = NotificationRouter(secrets=self.secret, dedup=InMemoryIdStore())

        def handle(notification: flnotify.Notification[Any]) -> Reply | None:
            self.seen.append(notification)
            return None if status is None else Reply(status)

        for kind in flnotify.NotificationType:
            self.router.add_handler(kind, handle)

    def poller(self, base: str, secret: str | None = None) -> MailboxPoller:
        return MailboxPoller(base, self.receiver.id, secret or self.secret, self.router)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Mailbox]:
    mailbox = Mailbox(tmp_path / "mail.db", ack_deadline=60.0, visibility=10.0)
    yield mailbox
    mailbox.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_notifier_reaches_polling_clients_and_sees_their_routers_answers(
    store: Mailbox, kind: str
) -> None:
    secrets: dict[uuid.UUID, str] = {}
    signer = Signer(lookup=lambda r: secrets.get(r.id))
    accepting, refusing = Client(secrets), Client(secrets, status=409)
    app = MailboxApp(store, signer, max_wait=2.0)
    with SERVERS[kind](app.asgi_app() if kind == "asgi" else app.wsgi_app()) as base:
        pollers = [c.poller(base) for c in (accepting, refusing)]
        threads = [threading.Thread(target=p.run) for p in pollers]  # each on its own loop
        for thread in threads:
            thread.start()
        try:
            training = uuid.uuid4()
            members = [accepting.receiver, refusing.receiver]
            with Notifier(signer=signer, mailbox=store) as notifier:
                reports = [
                    notifier.send(
                        flnotify.TrainingRoundStartNotification(
                            members, RoundBody(1, MODEL), training
                        )
                    ),
                    notifier.send(
                        flnotify.TrainingFinishedNotification(
                            members, GlobalModelBody(MODEL), training
                        )
                    ),
                ]
        finally:
            for poller in pollers:
                poller.stop()
            for thread in threads:
                thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
    outcomes = [
        {d.receiver.id: (d.outcome, d.status_code) for d in report.deliveries} for report in reports
    ]
    assert outcomes == [
        {
            accepting.receiver.id: (Outcome.DELIVERED, 202),
            refusing.receiver.id: (Outcome.REJECTED, 409),
        },
        {
            accepting.receiver.id: (Outcome.DELIVERED, 200),
            refusing.receiver.id: (Outcome.REJECTED, 409),
        },
    ]
    for client in (accepting, refusing):
        assert [n.notification_type.value for n in client.seen] == [
            "UPDATE_ROUND_START",
            "TRAINING_FINISHED",
        ]
    assert store.counts()["done"] == 4


def test_the_real_mailbox_refuses_a_wrong_secret_with_a_401(store: Mailbox) -> None:
    secrets: dict[uuid.UUID, str] = {}
    client = Client(secrets)
    app = MailboxApp(store, Signer(lookup=lambda r: secrets.get(r.id)), max_wait=0.5)
    with asgi_server(app.asgi_app()) as base:
        poller = client.poller(base, secret=generate_secret())

        async def once() -> int:
            async with poller:
                return await poller.apoll_once()

        with pytest.raises(MailboxStatusError) as refused:
            asyncio.run(once())
    assert refused.value.unauthorized
    assert refused.value.code == "unauthorized"
