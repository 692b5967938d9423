"""The sending side and the receiving side together, over real loopback servers."""

from __future__ import annotations

import importlib.util
import uuid
from typing import Any

import pytest

import flnotify
import flnotify.errors
from flnotify import (
    EndpointPolicy,
    NotificationType,
    Outcome,
    Receiver,
    RetryPolicy,
    Signer,
    generate_secret,
)
from flnotify.errors import PayloadTooLargeError
from flnotify.receiving import NotificationRouter
from flnotify.transports import HttpxTransport
from helpers.receivers import ALL_TYPES, SERVERS, Recorder
from helpers.servers import FaultServer

TRANSPORTS = ["httpx"]
if importlib.util.find_spec("httptools") is not None:
    TRANSPORTS.append("streams")


def transport(name: str) -> Any:
    if name == "streams":
        from flnotify.transports import StreamTransport

        return StreamTransport()
    return HttpxTransport()


@pytest.mark.parametrize("name", TRANSPORTS)
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_notifier_delivers_signed_notifications_to_the_router(server: str, name: str) -> None:
    good, other = generate_secret(), generate_secret()
    handler = Recorder()
    router = NotificationRouter(secrets=good)
    for kind in NotificationType:
        router.add_handler(kind, handler)
    with SERVERS[server](router) as url:
        ours = Receiver(uuid.uuid4(), url)
        impostor = Receiver(uuid.uuid4(), url)  # its secret is not the one the router has
        secrets = {ours.id: good, impostor.id: other}
        signer = Signer(lookup=lambda r: secrets[r.id])
        with flnotify.Notifier(transport=transport(name), signer=signer) as notifier:
            for notification, status in ALL_TYPES:
                report = notifier.send(notification.with_receivers([ours, impostor]))
                delivered, rejected = report.deliveries
                assert (delivered.outcome, delivered.status_code) == (Outcome.DELIVERED, status)
                # the impostor could not be verified: the sender's mistake, never a "no"
                assert (rejected.outcome, rejected.status_code) == (Outcome.FAILED, 401)
                assert isinstance(rejected.error, flnotify.errors.AnswerError)
                assert rejected.error.kind is flnotify.errors.AnswerErrorKind.SIGNATURE
            # the same ids again (a resend from an outbox): handled once, answered 200
            n = ALL_TYPES[1][0].with_receivers([ours])
            first = notifier.send(n, message_ids=["msg_e2e_once"])
            again = notifier.send(n, message_ids=["msg_e2e_once"])
    assert [d.status_code for d in (*first, *again)] == [202, 200]
    assert handler.calls == [n for n, _ in ALL_TYPES] + [ALL_TYPES[1][0]]


def test_guard_blocks_loopback_unless_allow_listed() -> None:
    with FaultServer() as server:
        receiver = Receiver(uuid.uuid4(), server.url("/status/202"))
        n = ALL_TYPES[0][0].with_receivers([receiver])
        guarded = EndpointPolicy(block_private=True)
        with flnotify.Notifier(policy=guarded, retry=RetryPolicy(max_attempts=3)) as notifier:
            (blocked,) = notifier.send(n)
        assert blocked.outcome is Outcome.FAILED
        assert isinstance(blocked.error, flnotify.errors.TransportError)
        assert blocked.error.kind is flnotify.errors.TransportErrorKind.BLOCKED
        assert isinstance(blocked.error.__cause__, flnotify.errors.BlockedAddressError)
        assert blocked.attempts == 0
        assert server.requests == []

        allowed = EndpointPolicy(block_private=True, allow_networks=["127.0.0.0/8"])
        with flnotify.Notifier(policy=allowed) as notifier:
            (ok,) = notifier.send(n)
        assert ok.outcome is Outcome.DELIVERED
        assert len(server.requests) == 1


def test_body_over_the_policy_limit_is_refused_before_any_io() -> None:
    with FaultServer() as server:
        n = ALL_TYPES[0][0].with_receivers([Receiver(uuid.uuid4(), server.url("/status/202"))])
        with (
            flnotify.Notifier(policy=EndpointPolicy(max_body_bytes=16)) as notifier,
            pytest.raises(PayloadTooLargeError),
        ):
            notifier.send(n)
        assert server.requests == []
