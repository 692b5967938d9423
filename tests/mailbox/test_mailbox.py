"""Clients behind NAT: end to end over loopback, with clients that open no socket at all.

The server is a real uvicorn (ASGI) or flnotify's bounded WSGI server on 127.0.0.1 serving
the mailbox app; the clients are bare HTTP clients of the mailbox protocol that verify,
deduplicate and dispatch with a `NotificationRouter` and acknowledge with its status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.codec
import flnotify.errors
from flnotify import (
    GlobalModelBody,
    Notifier,
    Outcome,
    Receiver,
    RetryPolicy,
    RoundBody,
    Signer,
    TrainingState,
    generate_secret,
)
from flnotify.errors import TransportErrorKind
from flnotify.mailbox import MAILBOX_ENDPOINT, Letter, Mailbox, MailboxApp, MailboxDispatcher
from flnotify.mailbox._wire import ack_document, fetch_document
from flnotify.receiving import InMemoryIdStore, NotificationRouter
from flnotify.testing import RecordingCallbacks, RecordingHook
from helpers.mailbox_env import BareClient, Clock, asgi_server, call_wsgi, signed, wsgi_server
from helpers.servers import FaultServer

SERVERS = {"asgi": asgi_server, "wsgi": wsgi_server}


class World:
    """A server (store, app, signer with per-client secrets) and its polling clients."""

    def __init__(self, tmp_path: Path, clock: Clock, **store: Any) -> None:
        self.path = tmp_path / "mail.db"
        self.clock = clock
        self.secrets: dict[uuid.UUID, str] = {}
        self.signer = Signer(lookup=lambda r: self.secrets.get(r.id))
        self.store_options = {"ack_deadline": 60.0, "visibility": 10.0, **store}
        self.store = self.open_store()

    def open_store(self, clock: Callable[[], float] | None = None) -> Mailbox:
        return Mailbox(self.path, clock=clock or self.clock, **self.store_options)

    def app(self, store: Mailbox | None = None, **options: Any) -> MailboxApp:
        return MailboxApp(store or self.store, self.signer, clock=self.clock, **options)

    def client(self) -> tuple[Receiver, str]:
        receiver = Receiver(uuid.uuid4(), MAILBOX_ENDPOINT)
        self.secrets[receiver.id] = generate_secret()
        return receiver, self.secrets[receiver.id]

    def router(self, secret: str, seen: list[Any]) -> NotificationRouter:
        router = NotificationRouter(secrets=secret, clock=self.clock, dedup=InMemoryIdStore())
        for kind in flnotify.NotificationType:
            router.add_handler(kind, seen.append)
        return router


def handle(client: BareClient, router: NotificationRouter, wait: float = 0) -> list[int]:
    """Fetch once, run each message through the router, acknowledge; the router's answers."""
    messages = client.fetch(wait=wait)
    answers = [
        (m.id, router.handle("POST", list(m.headers.items()), m.body).status) for m in messages
    ]
    if answers:
        assert client.ack(*answers) == len(answers)
    return [status for _, status in answers]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, Clock())
    yield w
    w.store.close()


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as p:
        yield p


def round_start(receivers: list[Receiver], n: int = 1) -> flnotify.TrainingRoundStartNotification:
    return flnotify.TrainingRoundStartNotification(
        receivers=receivers,
        body=RoundBody(round=n, global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_whole_training_reaches_polling_clients_and_a_pushed_one_in_one_send(
    world: World, pool: concurrent.futures.ThreadPoolExecutor, kind: str, tmp_path: Path
) -> None:
    polling = [world.client() for _ in range(2)]
    seen: list[list[Any]] = [[], []]
    routers = [world.router(secret, seen[i]) for i, (_, secret) in enumerate(polling)]
    with (
        FaultServer() as pushed,
        SERVERS[kind](world.app().wsgi_app() if kind == "wsgi" else world.app().asgi_app()) as base,
        flnotify.SQLiteTrainingRepository(tmp_path / "fl.db") as repo,
    ):
        push = Receiver(uuid.uuid4(), pushed.url("/status/204"))
        training = repo.create_training(
            actor=push, participants=[push, *(r for r, _ in polling)], model_id=uuid.uuid4()
        )
        repo.update_training(training.id, state=TrainingState.ONGOING)
        clients = [BareClient(base, r.id, s, world.clock) for r, s in polling]
        hook = RecordingHook()
        notifier = Notifier(signer=world.signer, mailbox=world.store, repository=repo, hooks=[hook])
        members = [push, *(r for r, _ in polling)]
        sends = [
            flnotify.TrainingStartNotification(
                receivers=members,
                body=GlobalModelBody(training.model_id),
                training_uuid=training.id,
            ),
            *(
                flnotify.TrainingRoundStartNotification.from_training(
                    repo.update_training(training.id, round=n)
                )
                for n in (1, 2)
            ),
            flnotify.TrainingFinishedNotification(
                receivers=members,
                body=GlobalModelBody(training.model_id),
                training_uuid=training.id,
            ),
        ]
        with notifier:
            for notification in sends:
                sent = pool.submit(notifier.send, notification)
                answered = [
                    handle(client, router, wait=20)  # a long poll, until it comes
                    for client, router in zip(clients, routers, strict=True)
                ]
                report = sent.result(timeout=60)
                assert report.counts()[Outcome.DELIVERED] == 3, report.summary()
                polled = [d for d in report.deliveries if d.receiver.message_endpoint == "mailbox:"]
                assert [d.attempts for d in polled] == [1, 1]
                assert [[d.status_code] for d in polled] == answered  # the router's answers
        for client in clients:
            client.close()
        assert repo.get_training(training.id).state is TrainingState.ONGOING
    for got in seen:
        assert [type(n).__name__ for n in got] == [type(n).__name__ for n in sends]
        assert [getattr(n.body, "round", None) for n in got] == [None, 1, 2, None]
    assert world.store.counts()["done"] == 2 * len(sends)
    assert len(hook.outcomes) == 3 * len(sends)  # the hooks see every outcome once


def test_the_acknowledgement_decides_like_an_http_answer(
    world: World, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    """2xx delivered, 4xx rejected, 5xx retried (offered again, same id) then judged."""
    ok, bad, flaky = (world.client() for _ in range(3))
    recorder = RecordingCallbacks()
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.0, jitter=0.0)
    with asgi_server(world.app().asgi_app()) as base:
        notifier = Notifier(signer=world.signer, mailbox=world.store, retry=retry)
        notification = round_start([ok[0], bad[0], flaky[0]])
        sent = pool.submit(notifier.send, notification, recorder)
        c_ok, c_bad, c_flaky = (BareClient(base, r.id, s, world.clock) for r, s in (ok, bad, flaky))
        (m,) = c_ok.fetch(wait=20)
        assert c_ok.ack((m.id, 200)) == 1
        (m,) = c_bad.fetch(wait=20)
        assert c_bad.ack((m.id, 410)) == 1
        first = c_flaky.fetch(wait=20)
        assert c_flaky.ack((first[0].id, 503)) == 1
        again = c_flaky.fetch(wait=20)  # offered again after the retry delay
        assert [m.id for m in again] == [first[0].id]
        assert c_flaky.ack((again[0].id, 204)) == 1
        report = sent.result(timeout=60)
        notifier.close()
        for c in (c_ok, c_bad, c_flaky):
            c.close()
    outcomes = {d.receiver.id: (d.outcome, d.attempts, d.status_code) for d in report.deliveries}
    assert outcomes == {
        ok[0].id: (Outcome.DELIVERED, 1, 200),
        bad[0].id: (Outcome.REJECTED, 1, 410),
        flaky[0].id: (Outcome.DELIVERED, 2, 204),
    }
    assert sorted(d.receiver.id for d in recorder.calls) == sorted(outcomes)  # once each


def test_a_repeated_fetch_offers_the_same_id_and_the_handler_runs_once(
    world: World, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    receiver, secret = world.client()
    seen: list[Any] = []
    router = world.router(secret, seen)
    with asgi_server(world.app().asgi_app()) as base:
        client = BareClient(base, receiver.id, secret, world.clock)
        notifier = Notifier(signer=world.signer, mailbox=world.store)
        sent = pool.submit(notifier.send, round_start([receiver]))
        (first,) = client.fetch(wait=20)  # fetched, and the client "crashes" before its ack
        assert client.fetch() == []  # hidden while it may still be acknowledged
        world.clock.advance(11)  # the visibility (10 s) passes
        (second,) = client.fetch()
        assert second.id == first.id
        assert second.body == first.body
        assert second.headers["webhook-timestamp"] != first.headers["webhook-timestamp"]
        statuses = [
            router.handle("POST", list(m.headers.items()), m.body).status for m in (first, second)
        ]
        assert client.ack((second.id, statuses[1])) == 1
        report = sent.result(timeout=60)
        notifier.close()
        client.close()
    assert len(seen) == 1  # the router's id store: once, though it came twice
    assert statuses == [202, 200]  # the duplicate is answered as already handled
    (delivery,) = report.deliveries
    assert (delivery.outcome, delivery.attempts) == (Outcome.DELIVERED, 2)


def test_the_same_message_ids_sent_again_are_offered_again_with_one_outcome_each(
    world: World, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    """An outbox retry or a task run again posts the same send with the same ids."""
    recorder = RecordingCallbacks()
    receiver, secret = world.client()
    note = round_start([receiver])
    seen: list[Any] = []
    router = world.router(secret, seen)
    with (
        asgi_server(world.app().asgi_app()) as base,
        Notifier(signer=world.signer, mailbox=world.store) as notifier,
    ):
        client = BareClient(base, receiver.id, secret, world.clock)
        sends = []
        for _ in range(2):
            sent = pool.submit(notifier.send, note, recorder, message_ids=["msg_again"])
            assert handle(client, router, wait=20) in ([202], [200])
            sends.append(sent.result(timeout=60))
        client.close()
    assert [[(d.message_id, d.outcome, d.error) for d in r.deliveries] for r in sends] == [
        [("msg_again", Outcome.DELIVERED, None)]
    ] * 2
    assert len(recorder.calls) == 2  # one outcome per send
    assert len(seen) == 1  # the client's id store: handled once, answered 200 again
    assert world.store.counts() == {"queued": 0, "offered": 0, "answered": 0, "done": 1}


def test_an_unacknowledged_notification_fails_at_its_deadline(
    world: World, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    fetched, silent = world.client(), world.client()
    recorder = RecordingCallbacks()
    with asgi_server(world.app().asgi_app()) as base:
        client = BareClient(base, fetched[0].id, fetched[1], world.clock)
        notifier = Notifier(signer=world.signer, mailbox=world.store)
        sent = pool.submit(notifier.send, round_start([fetched[0], silent[0]]), recorder)
        (message,) = client.fetch(wait=20)
        world.clock.advance(61)  # past the acknowledgement deadline (60 s)
        assert client.ack((message.id, 200)) == 0  # too late: not taken
        world.store.signals.answered()  # wake the waiting send instead of its next look
        report = sent.result(timeout=60)
        notifier.close()
        client.close()
    by_id = {d.receiver.id: d for d in report.deliveries}
    for receiver, what in ((fetched[0], "fetched 1 time(s)"), (silent[0], "never fetched")):
        delivery = by_id[receiver.id]
        assert delivery.outcome is Outcome.FAILED
        assert isinstance(delivery.error, flnotify.errors.TransportError)
        assert delivery.error.kind is TransportErrorKind.DEADLINE
        assert what in str(delivery.error)
    assert len(recorder.calls) == 2


def test_a_server_restart_keeps_the_queue_and_a_dispatcher_settles_it(
    world: World, tmp_path: Path
) -> None:
    """The sender stops before the client polls; the restarted server finishes the job."""
    receiver, secret = world.client()
    with flnotify.SQLiteTrainingRepository(tmp_path / "fl.db") as repo:
        training = repo.create_training(
            actor=receiver, participants=[receiver], model_id=uuid.uuid4()
        )
        repo.update_training(training.id, state=TrainingState.ONGOING)
        notification = flnotify.TrainingRoundStartNotification.from_training(
            repo.update_training(training.id, round=1)
        )
        # the first server: its send is under way when the process goes down
        first = Notifier(signer=world.signer, mailbox=world.store, repository=repo)
        posted = threading.Event()
        world.store.signals.on_mail(lambda _: posted.set())

        async def send_then_stop() -> None:
            task = asyncio.create_task(first.asend(notification))
            await asyncio.to_thread(posted.wait, 30)  # until the letter is posted
            task.cancel()  # the server stops: its send goes with it
            with pytest.raises(asyncio.CancelledError):
                await task

        first.engine.run_sync(send_then_stop())
        first.close()
        world.store.close()
        # the second server: a new process on the same file
        world.store = world.open_store()
        assert world.store.counts()["queued"] == 1  # nothing queued was lost
        seen: list[Any] = []
        with asgi_server(world.app().asgi_app()) as base:
            client = BareClient(base, receiver.id, secret, world.clock)
            assert handle(client, world.router(secret, seen), wait=5) == [202]
            client.close()
        second = Notifier(signer=world.signer, repository=repo)
        dispatcher = MailboxDispatcher(world.store, second)
        assert dispatcher.run_once() == 1  # adopted at once: the stopped send let go
        second.close()
        assert world.store.counts()["done"] == 1
        assert len(seen) == 1
        assert repo.get_training(training.id).state is TrainingState.ONGOING


def test_a_crashed_sender_is_adopted_once_its_lease_ends(world: World) -> None:
    """A sender that vanished without letting go: its lease must end first."""
    receiver, _ = world.client()
    payload = flnotify.codec.Codec().encode(round_start([receiver]))
    world.store.post("snd_x", 1, payload, [(receiver.id, "msg_1")], owner="gone", lease_seconds=30)
    recorder = RecordingCallbacks()
    notifier = Notifier(signer=world.signer)
    dispatcher = MailboxDispatcher(world.store, notifier, callbacks=recorder)
    assert dispatcher.run_once() == 0  # its lease still holds
    world.clock.advance(61)  # the lease (30 s) and the acknowledgement deadline (60 s) end
    assert dispatcher.run_once() == 1
    assert dispatcher.run_once() == 0  # settled: never adopted again
    notifier.close()
    (delivery,) = recorder.calls
    assert (delivery.outcome, delivery.message_id) == (Outcome.FAILED, "msg_1")
    assert delivery.send_id == "snd_x"
    assert delivery.send_size == 1
    assert "never fetched" in str(delivery.error)
    assert world.store.counts()["done"] == 1


def test_wrong_stale_replayed_and_foreign_credentials_get_the_same_401(world: World) -> None:
    alice, alice_secret = world.client()
    bob, bob_secret = world.client()
    world.store.post("snd_1", 1, b"{}", [(alice.id, "msg_a")], owner="o", lease_seconds=60)
    with asgi_server(world.app().asgi_app()) as base, httpx.Client() as http:
        body = fetch_document(alice.id, 0, 10)

        def status(
            headers: dict[str, str], content: bytes = body, path: str = "/fetch"
        ) -> httpx.Response:
            return http.post(base + path, content=content, headers=headers)

        now = int(world.clock())
        refused = [
            status(signed(generate_secret(), body, timestamp=now)),  # a wrong secret
            status(signed(bob_secret, body, timestamp=now)),  # bob asking for alice's mail
            status(signed(alice_secret, body, timestamp=now - 3600)),  # stale
            status(signed(alice_secret, body, timestamp=now + 3600)),  # from the future
            status({"content-type": "application/json"}),  # unsigned
            status(  # a client nobody knows
                signed(generate_secret(), fetch_document(uuid.uuid4(), 0, 1), timestamp=now),
                fetch_document(uuid.uuid4(), 0, 1),
            ),
        ]
        assert {r.status_code for r in refused} == {401}
        assert len({r.content for r in refused}) == 1  # nothing tells them apart
        replayed = signed(alice_secret, body, nonce="req_once", timestamp=now)
        first = status(replayed)
        assert first.status_code == 200
        assert len(first.json()["messages"]) == 1
        assert status(replayed).status_code == 401  # the same request again
        bob_acks_alice = ack_document(bob.id, [])
        forged = ack_document(alice.id, [])
        # bob cannot acknowledge for alice: his signature does not open her mailbox
        assert status(signed(bob_secret, forged, timestamp=now), forged, "/ack").status_code == 401
        assert (
            status(
                signed(bob_secret, bob_acks_alice, timestamp=now), bob_acks_alice, "/ack"
            ).status_code
            == 200
        )
    assert world.store.counts()["offered"] == 1  # only alice's own fetch offered it


class CountingMailbox(Mailbox):
    """A mailbox that records the clients of each fetch: who asked, and who got letters."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.served: list[int] = []
        self.asked: set[uuid.UUID] = set()
        self.all_asked = threading.Event()
        self.expected = 0

    def fetch_many(self, limits: Any) -> dict[uuid.UUID, list[Letter]]:
        found = super().fetch_many(limits)
        if found:
            self.served.append(len(found))
        self.asked.update(limits)
        if len(self.asked) >= self.expected:
            self.all_asked.set()
        return found


def test_polls_woken_by_one_send_are_answered_by_few_store_calls(world: World) -> None:
    store = CountingMailbox(world.path, clock=world.clock, **world.store_options)
    clients = [world.client() for _ in range(24)]
    store.expected = len(clients)
    with (
        asgi_server(world.app(store).asgi_app()) as base,
        concurrent.futures.ThreadPoolExecutor(len(clients)) as polls,
    ):
        bare = [BareClient(base, r.id, secret, world.clock) for r, secret in clients]
        waiting = [polls.submit(c.fetch, 20) for c in bare]
        assert store.all_asked.wait(30)  # every poll looked once, found nothing, and waits
        letters = [(r.id, f"msg_{i}") for i, (r, _) in enumerate(clients)]
        store.post("snd_1", len(letters), b"{}", letters, owner="o", lease_seconds=60)
        got = [f.result(timeout=30) for f in waiting]
        for client in bare:
            client.close()
    store.close()
    assert sorted(m.id for messages in got for m in messages) == sorted(m for _, m in letters)
    assert sum(store.served) == len(clients)
    assert len(store.served) <= len(clients) // 2, store.served  # gathered, not one each


def test_a_shared_secret_never_opens_a_mailbox(world: World) -> None:
    receiver, _ = world.client()
    shared = generate_secret()
    app = MailboxApp(world.store, Signer(shared), clock=world.clock)  # no per-client secrets
    with asgi_server(app.asgi_app()) as base:
        client = BareClient(base, receiver.id, shared, world.clock)
        answer = client.post("/fetch", fetch_document(receiver.id, 0, 1))
        client.close()
    assert answer.status_code == 401


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_limits_of_polls_batches_and_waiting(world: World, kind: str) -> None:
    receiver, secret = world.client()
    letters = [(receiver.id, f"msg_{i}") for i in range(5)]
    world.store.post("snd_1", 5, b"{}", letters, owner="o", lease_seconds=60)
    app = world.app(max_batch=2, max_wait=0.05, max_polls_per_client=1)
    serve = SERVERS[kind]
    with serve(app.wsgi_app() if kind == "wsgi" else app.asgi_app()) as base:
        client = BareClient(base, receiver.id, secret, world.clock)
        assert len(client.fetch(most=100)) == 2  # capped by the server
        assert len(client.fetch(most=1)) == 1  # or by the client
        assert len(client.fetch(most=100)) == 2
        assert client.fetch(wait=3600) == []  # held at most max_wait, then answered empty
        # a second open poll of one client is refused while the first waits
        held = world.app(max_wait=30, max_polls_per_client=1)
        client.close()
    with serve(held.wsgi_app() if kind == "wsgi" else held.asgi_app()) as base:
        first = BareClient(base, receiver.id, secret, world.clock)
        second = BareClient(base, receiver.id, secret, world.clock)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(first.fetch, 30)
            while not held._waiting.open:  # until the first poll waits
                os.sched_yield()
            refused = second.post("/fetch", fetch_document(receiver.id, 5, 1))
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            world.store.post(
                "snd_2", 1, b"{}", [(receiver.id, "msg_new")], owner="o", lease_seconds=60
            )
            assert [m.id for m in waiting.result(timeout=30)] == ["msg_new"]  # woken at once
        first.close()
        second.close()


def test_a_notifier_without_a_mailbox_fails_polling_receivers_clearly(world: World) -> None:
    receiver, _ = world.client()
    with Notifier() as notifier:
        report = notifier.send(round_start([receiver]), RecordingCallbacks())
    (delivery,) = report.deliveries
    assert delivery.outcome is Outcome.FAILED
    assert "has none (Notifier(mailbox=...))" in str(delivery.error)


# -- hostile requests -------------------------------------------------------------------


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/mailbox/fetch", "/mailbox/ack", "/mailbox/other", "/fetch"]),
    document=st.one_of(
        _JSONISH,
        st.fixed_dictionaries(
            {"op": st.sampled_from(["fetch", "ack", "x"]), "client": st.just("ME")},
            optional={"wait": _JSONISH, "max": _JSONISH, "acks": _JSONISH},
        ),
    ),
    raw=st.one_of(st.none(), st.binary(max_size=64)),
    sign=st.sampled_from(["own", "other", "none", "garbage"]),
    skew=st.sampled_from([0, 0, 59, -59, 61, -3600]),
)
def test_hostile_requests_get_a_typed_answer_and_never_touch_another_mailbox(
    world: World, path: str, document: Any, raw: bytes | None, sign: str, skew: int
) -> None:
    import json

    receiver, secret = world.client()
    other, other_secret = world.client()
    world.store.post(
        f"snd_{uuid.uuid4().hex}",
        1,
        b"{}",
        [(other.id, f"msg_{uuid.uuid4().hex}")],
        owner="o",
        lease_seconds=60,
    )
    if raw is None:
        text = json.dumps(document).replace('"ME"', f'"{receiver.id}"')
        body = text.encode()
    else:
        body = raw
    now = int(world.clock()) + skew
    headers = {
        "own": signed(secret, body, timestamp=now),
        "other": signed(other_secret, body, timestamp=now),
        "none": {"content-type": "application/json"},
        "garbage": {
            "webhook-id": "\x00" * 3,
            "webhook-timestamp": "x",
            "webhook-signature": "v1,@@",
        },
    }[sign]
    app = world.app(max_wait=0.01).wsgi_app()
    status, answer = call_wsgi(app, path, headers, body)
    assert status in {200, 400, 401, 404}, (status, answer)
    if status != 200:
        assert json.loads(answer)["error"]  # a typed refusal, never a server's page
    else:
        assert sign == "own"
        assert abs(skew) <= 60
    assert len(world.store.fetch(other.id, 10)) == 1  # the other mailbox is untouched


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_closing_the_app_answers_held_polls_and_refuses_new_ones(world: World, kind: str) -> None:
    receiver, secret = world.client()
    app = world.app(max_wait=30)
    serve = SERVERS[kind]
    with serve(app.wsgi_app() if kind == "wsgi" else app.asgi_app()) as base:
        client = BareClient(base, receiver.id, secret, world.clock)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(client.fetch, 30)
            while not app._waiting.open:  # until the poll waits
                os.sched_yield()
            app.close()
            assert held.result(timeout=10) == []  # answered at once, empty
        refused = client.post("/fetch", fetch_document(receiver.id, 5, 1))
        assert refused.status_code == 503
        assert refused.json()["error"] == "closing"
        assert client.fetch(wait=0) == []  # a plain fetch still works
        client.close()


def test_a_running_dispatcher_adopts_settles_and_survives_a_failing_store(world: World) -> None:
    """``arun``: each look adopts what is orphaned; a look that fails is only logged."""
    receiver, _ = world.client()
    payload = flnotify.codec.Codec().encode(round_start([receiver]))
    world.store.post("snd_y", 1, payload, [(receiver.id, "msg_y")], owner="gone", lease_seconds=1)
    world.clock.advance(61)  # the lease and the acknowledgement deadline have passed
    recorder = RecordingCallbacks()
    notifier = Notifier(signer=world.signer)
    store = world.store

    class FlakyAdoptions:
        """The store, but its first adoption fails."""

        looks = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def adopt(self, *args: Any) -> Any:
            self.looks += 1
            if self.looks == 1:
                raise flnotify.errors.MailboxError("the database is busy")
            return store.adopt(*args)

    flaky = FlakyAdoptions()

    async def main() -> None:
        settled = asyncio.Event()

        async def look_again(_: float) -> None:
            if store.counts()["done"]:  # called back, then recorded
                settled.set()
            await asyncio.sleep(0)

        dispatcher = MailboxDispatcher(flaky, notifier, callbacks=recorder, sleep=look_again)
        task = asyncio.create_task(dispatcher.arun())
        await asyncio.wait_for(settled.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    notifier.engine.run_sync(main())
    notifier.close()
    (delivery,) = recorder.calls
    assert delivery.outcome is Outcome.FAILED
    assert flaky.looks >= 2  # the failed look did not end it
    assert world.store.counts()["done"] == 1


def test_a_polling_outcome_is_marked_done_only_after_its_callbacks_ran(
    world: World, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    """Record, callbacks, mark done: a server killed during the callbacks leaves it to judge."""
    receiver, secret = world.client()
    running, release = threading.Event(), threading.Event()

    async def on_success(_: flnotify.Delivery) -> None:
        running.set()
        await asyncio.to_thread(release.wait, 30)

    callbacks = flnotify.FunctionCallbacks(success=on_success)
    with asgi_server(world.app().asgi_app()) as base:
        notifier = Notifier(signer=world.signer, mailbox=world.store)
        sent = pool.submit(notifier.send, round_start([receiver]), callbacks)
        client = BareClient(base, receiver.id, secret, world.clock)
        (message,) = client.fetch(wait=20)
        assert client.ack((message.id, 202)) == 1
        try:
            assert running.wait(30)
            assert world.store.counts()["done"] == 0  # its callback is still running
        finally:
            release.set()
        report = sent.result(timeout=60)
        client.close()
        notifier.close()
    assert report.deliveries[0].outcome is Outcome.DELIVERED
    assert world.store.counts()["done"] == 1


def test_a_rejecting_polling_client_is_removed_and_told_through_its_mailbox(
    world: World, pool: concurrent.futures.ThreadPoolExecutor, tmp_path: Path
) -> None:
    """The notice waits in its mailbox; the round's send does not wait for it."""
    receiver, secret = world.client()
    actor = Receiver(uuid.uuid4(), MAILBOX_ENDPOINT)
    world.secrets[actor.id] = generate_secret()
    with (
        flnotify.SQLiteTrainingRepository(tmp_path / "fl.db") as repo,
        asgi_server(world.app().asgi_app()) as base,
    ):
        training = repo.create_training(
            actor=actor, participants=[actor, receiver], model_id=uuid.uuid4()
        )
        repo.update_training(training.id, state=TrainingState.ONGOING)
        notifier = Notifier(signer=world.signer, mailbox=world.store)
        callbacks = flnotify.TrainingCallbacks(
            repo, sender=notifier, tell_removed=True, tell_timeout=0.2
        )
        round_one = flnotify.TrainingRoundStartNotification.from_training(
            repo.update_training(training.id, round=1), receivers=[receiver]
        )
        sent = pool.submit(notifier.send, round_one, callbacks)
        client = BareClient(base, receiver.id, secret, world.clock)
        (message,) = client.fetch(wait=20)
        assert client.ack((message.id, 409)) == 1  # "I will not train this round"
        report = sent.result(timeout=60)
        (later,) = client.fetch()  # the notice is in its mailbox, still unacknowledged
        notice = flnotify.codec.decode(later.body)
        client.close()
        notifier.close()
        after = repo.get_training(training.id)
    assert report.deliveries[0].outcome is Outcome.REJECTED
    assert [p.id for p in after.participants] == [actor.id]
    assert isinstance(notice, flnotify.ClientRemovedNotification)
    assert notice.body.client_uuid == receiver.id


def test_the_sends_deadline_fails_a_silent_poller_once_and_for_all(world: World) -> None:
    receiver, _ = world.client()
    recorder = RecordingCallbacks()
    with Notifier(signer=world.signer, mailbox=world.store, deadline=0.2) as notifier:
        report = notifier.send(round_start([receiver]), recorder)
    (delivery,) = report.deliveries
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.TransportError)
    assert delivery.error.kind is TransportErrorKind.DEADLINE
    assert recorder.calls == [delivery]
    assert world.store.counts()["done"] == 1  # recorded: no dispatcher judges it again
    world.clock.advance(3600)
    later = RecordingCallbacks()
    with Notifier(signer=world.signer) as other:
        assert MailboxDispatcher(world.store, other, callbacks=later).run_once() == 0
    assert later.calls == []
