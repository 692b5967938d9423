"""The mailbox against hostile clients and unlucky deployments.

Replays under clock skew between the app's host and the store's, limits that contradict
each other, documents built to crash a parser, and bodies that never finish arriving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.codec
from flnotify import Receiver, RoundBody, Signer, TrainingRoundStartNotification, generate_secret
from flnotify.errors import ConfigurationError
from flnotify.mailbox import MAILBOX_ENDPOINT, Mailbox, MailboxApp, MailboxStore, PostgresMailbox
from flnotify.mailbox._wire import (
    MailboxProtocolError,
    fetch_document,
    parse_ack,
    parse_fetch,
    parse_messages,
)
from flnotify.receiving import InMemoryIdStore, MailboxPoller, NotificationRouter
from flnotify.receiving._poller import _error_code
from helpers.mailbox_env import Clock, asgi_server, call_wsgi, signed, wsgi_server


class Secrets:
    """Per-client secrets, and the server's signer that looks them up."""

    def __init__(self) -> None:
        self.by_client: dict[uuid.UUID, str] = {}
        self.signer = Signer(lookup=lambda r: self.by_client.get(r.id))

    def client(self) -> tuple[uuid.UUID, str]:
        client = uuid.uuid4()
        self.by_client[client] = generate_secret()
        return client, self.by_client[client]


# -- replays under clock skew -------------------------------------------------------------


def _replay_is_refused(store: MailboxStore, app_clock: Callable[[], float]) -> None:
    """One signed fetch, then the same request again: the replay gets nothing."""
    keys = Secrets()
    alice, secret = keys.client()
    store.post("snd_1", 2, b"{}", [(alice, "msg_1"), (alice, "msg_2")], owner="o", lease_seconds=60)
    app = MailboxApp(store, keys.signer, clock=app_clock).wsgi_app()
    body = fetch_document(alice, 0, 1)
    headers = signed(secret, body, nonce="req_once", timestamp=int(app_clock()))
    status, answer = call_wsgi(app, "/mailbox/fetch", headers, body)
    assert status == 200, answer
    assert [m["headers"]["webhook-id"] for m in json.loads(answer)["messages"]] == ["msg_1"]
    assert call_wsgi(app, "/mailbox/fetch", headers, body)[0] == 401  # the same request again
    assert store.counts()["offered"] == 1  # the replay was handed nothing


@pytest.mark.parametrize("skew", [180.0, -180.0, 0.0])
def test_a_replay_is_refused_whatever_the_stores_clock_says(tmp_path: Path, skew: float) -> None:
    """The store's clock is ``skew`` seconds off the app's; each judges by its own."""
    app_clock = Clock()
    with Mailbox(tmp_path / "mail.db", clock=lambda: app_clock() + skew) as store:
        _replay_is_refused(store, app_clock)


def test_a_replay_is_refused_until_the_request_itself_is_too_old(tmp_path: Path) -> None:
    """The nonce outlives the request's tolerance on the store's clock, ahead or not."""
    app_clock = Clock()
    keys = Secrets()
    alice, secret = keys.client()
    with Mailbox(tmp_path / "mail.db", clock=lambda: app_clock() + 180) as store:
        store.post(
            "snd_1", 3, b"{}", [(alice, f"msg_{i}") for i in range(3)], owner="o", lease_seconds=600
        )
        app = MailboxApp(store, keys.signer, clock=app_clock, tolerance=60).wsgi_app()
        body = fetch_document(alice, 0, 1)
        headers = signed(secret, body, nonce="req_once", timestamp=int(app_clock()) + 60)
        assert call_wsgi(app, "/mailbox/fetch", headers, body)[0] == 200
        for _ in range(12):  # the request's whole window: 60 s before its timestamp to 60 after
            app_clock.advance(10)
            assert call_wsgi(app, "/mailbox/fetch", headers, body)[0] == 401
        assert store.counts()["offered"] == 1


def test_a_replay_is_refused_with_the_database_clock_ahead_of_the_apps(postgres_url: str) -> None:
    """PostgreSQL judges nonces by its own clock: here 180 s ahead of the app host's."""

    def app_clock() -> float:
        import time

        return time.time() - 180

    with PostgresMailbox(postgres_url) as store:
        _replay_is_refused(store, app_clock)


# -- limits that contradict each other ----------------------------------------------------


def test_an_app_that_could_not_take_back_a_whole_batch_is_refused(tmp_path: Path) -> None:
    keys = Secrets()
    with Mailbox(tmp_path / "mail.db") as store:
        with pytest.raises(ConfigurationError, match=r"max_acks \(5\).*max_batch \(100\)"):
            MailboxApp(store, keys.signer, max_acks=5)
        with pytest.raises(ConfigurationError, match=r"max_acks \(9\).*max_batch \(10\)"):
            MailboxApp(store, keys.signer, max_acks=9, max_batch=10)
        app = MailboxApp(store, keys.signer, max_acks=5, max_batch=5)
        assert (app.max_acks, app.max_batch) == (5, 5)


def test_a_poller_asking_for_more_than_the_app_gives_acknowledges_everything(
    tmp_path: Path,
) -> None:
    """The app caps each fetch at ``max_batch``, so one acknowledgement always fits."""
    keys = Secrets()
    client, secret = keys.client()
    receiver = Receiver(client, MAILBOX_ENDPOINT)
    payload = flnotify.codec.Codec().encode(
        TrainingRoundStartNotification(
            receivers=[receiver],
            body=RoundBody(round=1, global_model_uuid=uuid.uuid4()),
            training_uuid=uuid.uuid4(),
        )
    )
    router = NotificationRouter(secrets=secret, dedup=InMemoryIdStore())
    router.add_handler(flnotify.NotificationType.UPDATE_ROUND_START, lambda _: None)
    with Mailbox(tmp_path / "mail.db") as store:
        letters = [(client, f"msg_{i}") for i in range(12)]
        store.post("snd_1", 12, payload, letters, owner="o", lease_seconds=60)
        app = MailboxApp(store, keys.signer, max_batch=5, max_acks=5)
        with asgi_server(app.asgi_app()) as base:
            poller = MailboxPoller(base, client, secret, router, wait=0.01, max_messages=1000)

            async def poll() -> list[int]:
                try:
                    return [await poller.apoll_once() for _ in range(3)]
                finally:
                    await poller.aclose()

            assert asyncio.run(poll()) == [5, 5, 2]
        assert store.counts()["answered"] == 12  # every acknowledgement was taken


# -- documents built to crash a parser ----------------------------------------------------

_CLIENT = str(uuid.UUID(int=7))

_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**308, max_value=10**1000)
    | st.integers(min_value=-(10**1000), max_value=-(10**308))
    | st.floats()  # nan and infinities included
    | st.text(max_size=20)  # lone surrogates included
)
_JSONISH = st.recursive(
    _SCALAR,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["fetch", "ack"]) | _JSONISH,
        "client": st.just(_CLIENT) | _JSONISH,
        "wait": _JSONISH,
        "max": _JSONISH,
        "acks": st.lists(
            st.fixed_dictionaries(
                {}, optional={"id": st.just("msg_1") | _JSONISH, "status": _JSONISH}
            )
            | _JSONISH,
            max_size=3,
        )
        | _JSONISH,
        "messages": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "headers": st.dictionaries(st.text(max_size=12), _JSONISH, max_size=3)
                    | st.just({"webhook-id": "msg_1"})
                    | _JSONISH,
                    "body": st.just("e30=") | _JSONISH,
                },
            )
            | _JSONISH,
            max_size=3,
        )
        | _JSONISH,
        "error": st.just("busy") | _JSONISH,
    },
)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


_RAW = st.one_of(
    _JSONISH.map(lambda v: json.dumps(v).encode()),
    _SHAPED.map(lambda v: json.dumps(v).encode()),
    st.tuples(
        st.sampled_from(["wait", "max", "op", "client", "acks", "messages", "error"]),
        st.integers(300, 5000),
        st.sampled_from([b"", b"-"]),
    ).map(
        lambda t: (
            b'{"op":"fetch","client":"%s","%s":%s%s}'
            % (_CLIENT.encode(), t[0].encode(), t[2], b"9" * t[1])
        )
    ),
    st.integers(1, 100_000).map(_deep),
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(max_size=40).map(lambda t: t.encode("utf-16", "surrogatepass")),
)


def _only_documented_errors(raw: bytes) -> None:
    """Each parser returns, or raises its documented error naming what is wrong."""
    messages: list[str] = []
    for parse in (
        parse_fetch,
        lambda r: parse_ack(r, max_acks=5),
        lambda r: parse_messages(r, max_messages=5),
    ):
        try:
            parse(raw)
        except MailboxProtocolError as exc:
            messages.append(str(exc))
    assert all(messages)
    assert isinstance(_error_code(raw), str)  # the poller reads error bodies: never raises


@settings(max_examples=400, deadline=None)
@given(raw=_RAW)
def test_every_mailbox_parser_raises_only_its_documented_error(raw: bytes) -> None:
    _only_documented_errors(raw)


@pytest.mark.parametrize("field", ["op", "client", "wait", "max", "acks", "messages", "error"])
def test_nesting_at_every_depth_up_to_the_recursion_limit_is_refused_typed(field: str) -> None:
    """Deep enough for the JSON parser, maybe too deep for ``repr``: still a typed error."""
    for depth in range(1, 1200, 7):
        raw = b'{"op":"ack","client":"%s","%s":%s}' % (
            _CLIENT.encode(),
            field.encode(),
            _deep(depth),
        )
        _only_documented_errors(raw)
        raw = (
            b'{"acks":[{"id":"msg_1","status":%s}],"messages":[{"headers":{"webhook-id":%s}}]}'
            % (
                _deep(depth),
                _deep(depth),
            )
        )
        _only_documented_errors(raw)


def test_a_wait_of_400_digits_is_read_as_a_long_wait() -> None:
    request = parse_fetch(
        b'{"op":"fetch","client":"%s","wait":%s}' % (_CLIENT.encode(), b"9" * 400)
    )
    assert request.wait > 1e300
    with pytest.raises(MailboxProtocolError, match="'wait' must be a number of seconds >= 0"):
        parse_fetch(b'{"op":"fetch","client":"%s","wait":-%s}' % (_CLIENT.encode(), b"9" * 400))


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_an_anonymous_wait_of_400_digits_gets_a_401_and_no_error_in_the_log(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Secrets()
    body = b'{"op":"fetch","client":"%s","wait":%s}' % (_CLIENT.encode(), b"9" * 400)
    headers = {"content-type": "application/json"}
    with Mailbox(tmp_path / "mail.db") as store, caplog.at_level(logging.WARNING, "flnotify"):
        app = MailboxApp(store, keys.signer)
        if kind == "wsgi":
            status, answer = call_wsgi(app.wsgi_app(), "/mailbox/fetch", headers, body)
        else:
            status, answer = _call_asgi(app, "/mailbox/fetch", headers, body)
    assert (status, json.loads(answer)["error"]) == (401, "unauthorized")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def _call_asgi(
    app: MailboxApp, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    """One POST through the ASGI app in this thread: its status and body."""
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }

    async def main() -> None:
        await app.asgi_app()(scope, receive, send)

    asyncio.run(main())
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


# -- bodies that never finish arriving ----------------------------------------------------


def _head(base: str, length: int) -> tuple[tuple[str, int], bytes]:
    """The address of ``base`` and a request head announcing ``length`` body bytes."""
    host, port = base.split("//")[1].split("/")[0].split(":")
    head = (
        f"POST /mailbox/fetch HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()
    return (host, int(port)), head


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset ends it too)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_a_body_that_stops_arriving_is_answered_408_under_uvicorn(tmp_path: Path) -> None:
    keys = Secrets()
    with Mailbox(tmp_path / "mail.db") as store:
        app = MailboxApp(store, keys.signer, read_timeout=0.2)
        with asgi_server(app.asgi_app()) as base:
            address, head = _head(base, 100)
            with socket.create_connection(address, timeout=30) as sock:
                sock.sendall(head + b'{"op":"fetch",')  # and nothing more
                answer = _answer(sock)  # the server closed the connection
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "request_timeout"


class SteppedClock:
    """Monotonic seconds that jump ``later`` seconds at the third reading.

    The app reads it to start the body's deadline, then after each piece of the body:
    the first piece finds no time passed, the next one finds ``later`` seconds gone.
    """

    def __init__(self, later: float) -> None:
        self.later = later
        self.readings = 0
        self.first_piece_read = threading.Event()

    def __call__(self) -> float:
        self.readings += 1
        if self.readings == 2:
            self.first_piece_read.set()
        return 1000.0 + (self.later if self.readings > 2 else 0.0)


def test_a_body_that_drips_is_answered_408_under_wsgi(tmp_path: Path) -> None:
    """The server would wait a minute for each byte; the app gives the body 5 s in all."""
    keys = Secrets()
    stepped = SteppedClock(later=6)
    with Mailbox(tmp_path / "mail.db") as store:
        app = MailboxApp(store, keys.signer, read_timeout=5, monotonic=stepped)
        with wsgi_server(app.wsgi_app(), read_timeout=60, request_timeout=60) as base:
            address, head = _head(base, 100)
            with socket.create_connection(address, timeout=30) as sock:
                sock.sendall(head + b'{"op":"fetch",')
                assert stepped.first_piece_read.wait(30)
                sock.sendall(b" ")  # one more byte, 6 s later as the app's clock says
                answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.0 408 "), answer[:80]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "request_timeout"


def test_a_read_timeout_must_be_positive(tmp_path: Path) -> None:
    with (
        Mailbox(tmp_path / "mail.db") as store,
        pytest.raises(ConfigurationError, match="read_timeout"),
    ):
        MailboxApp(store, Secrets().signer, read_timeout=0)
