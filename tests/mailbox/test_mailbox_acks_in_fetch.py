"""Acknowledgements ride on the next fetch: one request and one nonce fewer per delivery.

Only to an app that says it takes them; older apps (and older pollers) keep ``/ack``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import flnotify
import flnotify.codec
from flnotify import (
    Receiver,
    RoundBody,
    Signer,
    TrainingRoundStartNotification,
    generate_secret,
)
from flnotify.mailbox import MAILBOX_ENDPOINT, Mailbox, MailboxApp
from flnotify.mailbox._wire import (
    Ack,
    MailboxProtocolError,
    WireMessage,
    fetch_document,
    messages_document,
    parse_answer,
    parse_fetch,
    parse_messages,
)
from flnotify.receiving import InMemoryIdStore, MailboxPoller, NotificationRouter
from helpers.mailbox_env import asgi_server
from helpers.mailbox_fake import FakeMailbox

T = TypeVar("T")
CLIENT = uuid.UUID(int=77)
SECRET = generate_secret()
ROUND = flnotify.codec.encode(
    TrainingRoundStartNotification((), RoundBody(3, uuid.UUID(int=1)), uuid.UUID(int=2))
)


def _router(secret: str = SECRET) -> NotificationRouter:
    router = NotificationRouter(secrets=secret, dedup=InMemoryIdStore())
    router.add_handler(flnotify.NotificationType.UPDATE_ROUND_START, lambda _: None)
    return router


def _run_until(poller: MailboxPoller, done: threading.Event, look: Callable[[], T]) -> T:
    """Run the poller until ``done`` is set (by the server's side); ``look()`` then.

    The poller is stopped after the look: a fetch that stop cancels may have delivered
    its acknowledgements or not, so the poller sends them again with ``/ack``.
    """

    async def main() -> T:
        async with poller:
            task = asyncio.create_task(poller.arun())
            assert await asyncio.to_thread(done.wait, 20)
            seen = look()
            poller.stop()
            await task
            return seen

    return asyncio.run(main())


# -- the wire --------------------------------------------------------------------------------


def test_a_fetch_carries_acks_and_an_answer_says_whether_they_are_taken() -> None:
    acks = [Ack("msg_1", 204), Ack("msg_2", 500)]
    request = parse_fetch(fetch_document(CLIENT, 5, 10, acks))
    assert (request.client, request.max, request.acks) == (CLIENT, 10, tuple(acks))
    assert parse_fetch(fetch_document(CLIENT, 5, 10)).acks == ()
    assert b"acks" not in fetch_document(CLIENT, 5, 10)  # an older app sees what it knows
    message = WireMessage({"webhook-id": "msg_3"}, b"{}")
    assert parse_answer(messages_document([message]), max_messages=1).takes_acks
    assert not parse_answer(messages_document([], takes_acks=False), max_messages=1).takes_acks
    # an older poller reads the new answer as before
    assert [m.id for m in parse_messages(messages_document([message]), max_messages=1)] == ["msg_3"]


@pytest.mark.parametrize(
    "acks",
    ["all", [1], [{"id": "x y", "status": 200}], [{"id": "m", "status": 99}], [{}] * 3],
)
def test_bad_acks_in_a_fetch_are_a_protocol_error(acks: Any) -> None:
    document = {"op": "fetch", "client": str(CLIENT), "wait": 0, "max": 1, "acks": acks}
    with pytest.raises(MailboxProtocolError, match=r"acknowledgement|'acks'"):
        parse_fetch(json.dumps(document).encode(), max_acks=2)


# -- the poller --------------------------------------------------------------------------------


def test_the_poller_carries_acks_in_the_next_fetch_to_an_app_that_takes_them() -> None:
    with FakeMailbox(CLIENT, SECRET, takes_acks=True) as mailbox:
        first, second = mailbox.post(ROUND), mailbox.post(ROUND)
        poller = MailboxPoller(mailbox.url, CLIENT, SECRET, _router(), wait=0.05)
        paths = _run_until(poller, mailbox.acked, lambda: [s.path for s in mailbox.seen])
    assert paths == ["/fetch"]  # the second fetch, carrying the acks, is still open
    assert next([(a.id, a.status) for a in acks] for acks in mailbox.acks) == [
        (first, 202),
        (second, 202),
    ]
    assert mailbox.pending == []


def test_the_poller_uses_ack_with_an_older_app() -> None:
    with FakeMailbox(CLIENT, SECRET) as mailbox:
        only = mailbox.post(ROUND)
        poller = MailboxPoller(mailbox.url, CLIENT, SECRET, _router(), wait=0.05)
        paths = _run_until(poller, mailbox.acked, lambda: [s.path for s in mailbox.seen])
    assert paths == ["/fetch", "/ack"]
    assert [[a.id for a in acks] for acks in mailbox.acks] == [[only]]


# -- the app, end to end -----------------------------------------------------------------------


def test_the_app_takes_acks_from_a_fetch_one_nonce_a_delivery(tmp_path: Path) -> None:
    secret = generate_secret()
    signer = Signer(lookup=lambda r: secret if r.id == CLIENT else None)
    payload = flnotify.codec.Codec().encode(
        TrainingRoundStartNotification(
            receivers=[Receiver(CLIENT, MAILBOX_ENDPOINT)],
            body=RoundBody(round=1, global_model_uuid=uuid.uuid4()),
            training_uuid=uuid.uuid4(),
        )
    )
    paths: list[str] = []
    with Mailbox(tmp_path / "mail.db") as store:
        answered = threading.Event()
        store.signals.on_answer(answered.set)
        letters = [(CLIENT, f"msg_{i}") for i in range(3)]
        store.post("snd_1", 3, payload, letters, owner="o", lease_seconds=60)
        inner = MailboxApp(store, signer).asgi_app()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                paths.append(scope["path"])
            await inner(scope, receive, send)

        with asgi_server(app) as base:
            poller = MailboxPoller(base, CLIENT, secret, _router(secret), wait=0.05)
            seen = _run_until(poller, answered, lambda: list(paths))
        assert store.counts()["answered"] == 3
        assert seen == ["/mailbox/fetch"] * 2  # the messages; then their acks, in a fetch
