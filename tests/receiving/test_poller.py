"""``MailboxPoller`` against a real loopback mailbox (``mailbox_fake``): dispatch and acks,
deduplication, backoff, ``Retry-After``, stopping, size caps and hostile answers."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import random
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.codec
from flnotify import (
    GlobalModelBody,
    Notification,
    RoundBody,
    Signer,
    TrainingFinishedNotification,
    TrainingRoundStartNotification,
    TrainingStartNotification,
    generate_secret,
)
from flnotify.errors import (
    ConfigurationError,
    ConnectError,
    MailboxStatusError,
    TransportTimeoutError,
)
from flnotify.mailbox._wire import Ack, MailboxProtocolError, parse_messages
from flnotify.receiving import (
    InMemoryIdStore,
    MailboxPoller,
    MessageContext,
    NotificationRouter,
    Reply,
)
from helpers.mailbox_fake import FakeMailbox, Raw
from helpers.servers import FaultServer, refused_url

SECRET = generate_secret()
OTHER_SECRET = generate_secret()
CLIENT = uuid.UUID("0b9d3c64-5d0e-4c11-9a57-2f1d0f3b6d2e")
TRAINING = uuid.UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01")
MODEL = uuid.UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")

ROUND = flnotify.codec.encode(TrainingRoundStartNotification((), RoundBody(3, MODEL), TRAINING))
START = flnotify.codec.encode(TrainingStartNotification((), GlobalModelBody(MODEL), TRAINING))
FINISHED = flnotify.codec.encode(TrainingFinishedNotification((), GlobalModelBody(MODEL), TRAINING))
EMPTY = Raw(200, b'{"messages":[]}')


class Handled:
    """The handlers' side: every notification and its ``webhook-id``, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Notification[Any], str | None]] = []

    def __call__(self, notification: Notification[Any], context: MessageContext) -> None:
        self.calls.append((notification, context.id))

    @property
    def ids(self) -> list[str | None]:
        return [message_id for _, message_id in self.calls]


def make_router(handled: Handled, secret: str = SECRET) -> NotificationRouter:
    router = NotificationRouter(secrets=secret, dedup=InMemoryIdStore())
    router.add_handler(TrainingRoundStartNotification, handled)

    def start(notification: Notification[Any], context: MessageContext) -> Reply:
        handled(notification, context)
        return Reply(200)

    router.add_handler(TrainingStartNotification, start)

    def fails(notification: Notification[Any]) -> None:
        raise RuntimeError("the handler broke")

    router.add_handler(TrainingFinishedNotification, fails)
    return router


class Sleeps:
    """An injected sleep: records each delay and returns at once; stops after ``limit``."""

    def __init__(self, limit: int | None = None) -> None:
        self.delays: list[float] = []
        self.limit = limit
        self.poller: MailboxPoller | None = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.limit is not None and len(self.delays) >= self.limit and self.poller is not None:
            self.poller.stop()


def poller_for(
    url: str,
    router: NotificationRouter | None = None,
    *,
    sleeps: Sleeps | None = None,
    secret: str = SECRET,
    **options: Any,
) -> MailboxPoller:
    poller = MailboxPoller(
        url,
        client_id=CLIENT,
        secret=secret,
        router=router or make_router(Handled()),
        sleep=sleeps or Sleeps(),
        **options,
    )
    if sleeps is not None:
        sleeps.poller = poller
    return poller


def run(poller: MailboxPoller, step: Callable[[MailboxPoller], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with poller:
            return await step(poller)

    return asyncio.run(main())


def once(poller: MailboxPoller) -> int:
    result = run(poller, MailboxPoller.apoll_once)
    assert isinstance(result, int)
    return result


@pytest.fixture
def mailbox() -> Any:
    with FakeMailbox(CLIENT, SECRET) as box:
        yield box


# -- dispatch and acknowledgements ---------------------------------------------------------


def test_messages_go_through_the_router_and_are_acked_with_its_status(
    mailbox: FakeMailbox,
) -> None:
    handled = Handled()
    ids = [
        mailbox.post(ROUND),
        mailbox.post(START),
        mailbox.post(ROUND, secret=OTHER_SECRET),  # not signed with the client's secret
        mailbox.post(FINISHED),  # its handler raises
        mailbox.post(b'{"notification_type": "NOPE"}'),
    ]
    assert once(poller_for(mailbox.url, make_router(handled))) == 5
    assert mailbox.acks == [
        [Ack(ids[0], 202), Ack(ids[1], 200), Ack(ids[2], 401), Ack(ids[3], 500), Ack(ids[4], 400)]
    ]
    assert handled.ids == ids[:2]  # the forged one never reached a handler
    fetch, ack = mailbox.seen
    assert (fetch.path, fetch.status, fetch.fetch_max, fetch.fetch_wait) == ("/fetch", 200, 100, 25)
    assert (ack.path, ack.status) == ("/ack", 200)
    assert fetch.nonce.startswith("req_")
    assert ack.nonce.startswith("req_")
    assert fetch.nonce != ack.nonce


def test_a_message_offered_again_runs_its_handler_once_and_is_acked_again(
    mailbox: FakeMailbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flnotify")
    handled = Handled()
    router = make_router(handled)
    message_id = mailbox.post(ROUND)
    mailbox.script_acks(Raw(503, b'{"error":"unavailable"}'))  # the first ack is lost
    assert once(poller_for(mailbox.url, router, ack_attempts=1)) == 1
    assert mailbox.pending == [message_id]  # so the mailbox offers it again
    assert "could not acknowledge 1 mailbox message(s)" in caplog.text
    assert once(poller_for(mailbox.url, router)) == 1
    assert handled.ids == [message_id]  # the router's id store: once
    assert mailbox.acks == [[Ack(message_id, 200)]]  # answered as already handled
    assert mailbox.pending == []


def test_a_repeated_id_in_one_batch_is_handled_once_and_acked_once(mailbox: FakeMailbox) -> None:
    handled = Handled()
    message_id = mailbox.post(ROUND)
    mailbox.post(ROUND, message_id)
    assert once(poller_for(mailbox.url, make_router(handled))) == 2
    assert handled.ids == [message_id]
    assert mailbox.acks == [[Ack(message_id, 202)]]


def test_a_failed_acknowledgement_is_retried_with_backoff_then_given_up(
    mailbox: FakeMailbox,
) -> None:
    mailbox.post(ROUND)
    mailbox.script_acks(*[Raw(503)] * 3)
    sleeps = Sleeps()
    assert once(poller_for(mailbox.url, sleeps=sleeps, rng=lambda: 0.5)) == 1
    assert [s.status for s in mailbox.seen if s.path == "/ack"] == [503, 503, 503]
    assert sleeps.delays == [0.25, 0.5]  # full jitter (0.5 drawn) of 0.5 s, then 1 s
    assert mailbox.acks == []


def test_an_acknowledgement_refused_as_malformed_is_not_retried(mailbox: FakeMailbox) -> None:
    mailbox.post(ROUND)
    mailbox.script_acks(Raw(400, b'{"error":"malformed"}'))
    sleeps = Sleeps()
    assert once(poller_for(mailbox.url, sleeps=sleeps)) == 1
    assert [s.status for s in mailbox.seen if s.path == "/ack"] == [400]
    assert sleeps.delays == []


# -- backoff -------------------------------------------------------------------------------


def test_a_wrong_secret_is_a_401_logged_and_backed_off_to_the_cap(
    mailbox: FakeMailbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flnotify")
    sleeps = Sleeps(limit=4)
    poller = poller_for(
        mailbox.url, sleeps=sleeps, secret=OTHER_SECRET, rng=random.Random(3).random
    )
    run(poller, MailboxPoller.arun)
    assert [s.status for s in mailbox.seen] == [401] * 4
    assert len(set(sleeps.delays)) == 4  # jittered
    assert all(15.0 <= d <= 30.0 for d in sleeps.delays)  # about backoff_max at once
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    assert "refused this client's credentials (401)" in errors[0].getMessage()
    assert "check the client id" in errors[0].getMessage()
    assert OTHER_SECRET not in caplog.text
    assert OTHER_SECRET.removeprefix("whsec_") not in repr(poller)

    with pytest.raises(MailboxStatusError) as refused:
        once(poller_for(mailbox.url, secret=OTHER_SECRET))
    assert refused.value.unauthorized
    assert (refused.value.operation, refused.value.status) == ("fetch", 401)
    assert refused.value.code == "unauthorized"


def test_a_closed_port_backs_off_growing_and_capped() -> None:
    url = refused_url("/mailbox")
    sleeps = Sleeps(limit=9)
    run(poller_for(url, sleeps=sleeps, rng=lambda: 1.0), MailboxPoller.arun)
    assert sleeps.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    with pytest.raises(ConnectError):
        once(poller_for(url))


def test_the_backoff_is_jittered_below_its_ceiling() -> None:
    sleeps = Sleeps(limit=8)
    run(poller_for(refused_url(), sleeps=sleeps, rng=random.Random(5).random), MailboxPoller.arun)
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert all(0 <= d <= c for d, c in zip(sleeps.delays, ceilings, strict=True))
    assert sleeps.delays != ceilings
    assert len(set(sleeps.delays)) == len(sleeps.delays)


def test_the_backoff_starts_over_after_a_good_answer(mailbox: FakeMailbox) -> None:
    handled = Handled()
    message_id = mailbox.post(ROUND)
    mailbox.script_fetches(Raw(503), Raw(502), None, Raw(500))
    sleeps = Sleeps(limit=3)
    run(
        poller_for(mailbox.url, make_router(handled), sleeps=sleeps, rng=lambda: 1.0),
        MailboxPoller.arun,
    )
    assert [s.status for s in mailbox.seen] == [503, 502, 200, 200, 500]  # the 200 /ack
    assert sleeps.delays == [0.5, 1.0, 0.5]
    assert handled.ids == [message_id]


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    now = 1_700_000_000.0
    when = email.utils.formatdate(now + 12, usegmt=True)
    with FakeMailbox(CLIENT, SECRET, tolerance=1e12) as mailbox:  # its clock is not ours
        mailbox.script_fetches(
            Raw(429, headers=(("retry-after", "7"),)),
            Raw(503, headers=(("retry-after", "3600"),)),
            Raw(429, headers=(("retry-after", when),)),
            Raw(429, headers=(("retry-after", "soon"),)),
        )
        sleeps = Sleeps(limit=4)
        poller = poller_for(mailbox.url, sleeps=sleeps, rng=lambda: 0.0, wall_clock=lambda: now)
        run(poller, MailboxPoller.arun)
    assert sleeps.delays == [7.0, 30.0, 12.0, 0.0]  # a nonsense value counts as none


def test_an_empty_answer_at_once_is_backed_off_not_looped(mailbox: FakeMailbox) -> None:
    mailbox.script_fetches(EMPTY, EMPTY, EMPTY)
    sleeps = Sleeps(limit=3)
    run(
        poller_for(mailbox.url, sleeps=sleeps, rng=lambda: 1.0, clock=lambda: 0.0),
        MailboxPoller.arun,
    )
    assert sleeps.delays == [0.5, 1.0, 2.0]


def test_empty_answers_after_a_long_poll_are_polled_again_at_once(mailbox: FakeMailbox) -> None:
    mailbox.script_fetches(EMPTY, EMPTY, EMPTY)
    ticks = iter(range(0, 10_000, 25))  # each look at the clock: one whole wait later
    sleeps = Sleeps()

    async def main(poller: MailboxPoller) -> None:
        task = asyncio.create_task(poller.arun())
        await asyncio.to_thread(mailbox.holding_started.wait, 30)  # the 4th fetch is held
        poller.stop()
        await asyncio.wait_for(task, 30)

    run(poller_for(mailbox.url, sleeps=sleeps, clock=lambda: float(next(ticks))), main)
    assert sleeps.delays == []
    assert [s.path for s in mailbox.seen] == ["/fetch"] * 3  # the held 4th is not answered


def test_a_batch_the_router_refuses_entirely_is_backed_off(mailbox: FakeMailbox) -> None:
    forged = mailbox.post(ROUND, secret=OTHER_SECRET)
    sleeps = Sleeps()

    async def main(poller: MailboxPoller) -> None:
        task = asyncio.create_task(poller.arun())
        await asyncio.to_thread(mailbox.holding_started.wait, 30)
        poller.stop()
        await asyncio.wait_for(task, 30)

    run(poller_for(mailbox.url, sleeps=sleeps, rng=lambda: 1.0), main)
    assert mailbox.acks == [[Ack(forged, 401)]]
    assert sleeps.delays == [0.5]


# -- stopping ------------------------------------------------------------------------------


def test_stop_from_another_thread_ends_a_held_long_poll_at_once(mailbox: FakeMailbox) -> None:
    async def main(poller: MailboxPoller) -> int:
        task = asyncio.create_task(poller.arun())
        await asyncio.to_thread(mailbox.holding_started.wait, 30)
        await asyncio.to_thread(poller.stop)
        await asyncio.wait_for(task, 20)  # a guard against a hang (the hold is 25 s)
        return mailbox.holding

    poller = poller_for(mailbox.url)
    assert run(poller, main) == 1  # the mailbox still holds it: nobody waited for its answer
    assert poller.stopped
    assert once(poller) == 0  # stopping is final
    assert len(mailbox.seen) == 0


def test_stop_cancels_a_pending_poll_once(mailbox: FakeMailbox) -> None:
    async def main(poller: MailboxPoller) -> tuple[int, int]:
        task = asyncio.create_task(poller.apoll_once())
        await asyncio.to_thread(mailbox.holding_started.wait, 30)
        poller.stop()
        return await asyncio.wait_for(task, 20), mailbox.holding

    assert run(poller_for(mailbox.url), main) == (0, 1)


def test_stop_ends_a_wait_between_polls() -> None:
    class Forever:
        """A sleep that never ends by itself; says when it started."""

        def __init__(self) -> None:
            self.delays: list[float] = []
            self.started: asyncio.Event | None = None

        async def __call__(self, delay: float) -> None:
            self.delays.append(delay)
            assert self.started is not None
            self.started.set()
            await asyncio.Event().wait()

    sleep = Forever()

    async def main(poller: MailboxPoller) -> None:
        sleep.started = asyncio.Event()
        task = asyncio.create_task(poller.arun())
        await sleep.started.wait()  # the fetch failed; the poller waits to try again
        poller.stop()
        await asyncio.wait_for(task, 20)

    poller = MailboxPoller(
        refused_url(), client_id=CLIENT, secret=SECRET, router=make_router(Handled()), sleep=sleep
    )
    run(poller, main)
    assert len(sleep.delays) == 1


def test_aclose_waits_for_the_run_to_end(mailbox: FakeMailbox) -> None:
    async def main() -> bool:
        poller = poller_for(mailbox.url)
        task = asyncio.create_task(poller.arun())
        await asyncio.to_thread(mailbox.holding_started.wait, 30)
        await poller.aclose()
        return task.done()

    assert asyncio.run(main())


def test_a_second_concurrent_run_is_refused(mailbox: FakeMailbox) -> None:
    async def main(poller: MailboxPoller) -> None:
        task = asyncio.create_task(poller.arun())
        await asyncio.to_thread(mailbox.holding_started.wait, 30)
        try:
            with pytest.raises(ConfigurationError, match="already running"):
                await poller.arun()
        finally:
            poller.stop()
            await asyncio.wait_for(task, 20)

    run(poller_for(mailbox.url), main)


# -- sizes and slow peers ------------------------------------------------------------------


def test_an_answer_over_the_cap_is_refused_and_the_batch_shrinks(mailbox: FakeMailbox) -> None:
    handled = Handled()
    ids = [mailbox.post(ROUND) for _ in range(3)]
    one = len(mailbox._offer(mailbox.state.letters[:1]))
    poller = poller_for(
        mailbox.url, make_router(handled), max_messages=4, max_answer_bytes=one + 100, wait=0.01
    )
    results: list[int | str] = []

    async def main(poller: MailboxPoller) -> None:
        for _ in range(6):
            try:
                results.append(await poller.apoll_once())
            except MailboxProtocolError as exc:
                results.append(str(exc))

    run(poller, main)
    too_large = f"the fetch answer is larger than {one + 100} bytes"
    assert results == [too_large, too_large, 1, 1, 1, 0]
    assert [s.fetch_max for s in mailbox.seen if s.path == "/fetch"] == [4, 2, 1, 1, 1, 1]
    assert handled.ids == ids
    assert once(poller_for(mailbox.url, max_messages=4, wait=0.01)) == 0
    assert mailbox.seen[-1].fetch_max == 4  # the backlog drained: full batches again


def test_more_messages_than_asked_for_are_refused_unhandled(mailbox: FakeMailbox) -> None:
    handled = Handled()
    for _ in range(3):
        mailbox.post(ROUND)
    mailbox.script_fetches(Raw(200, mailbox._offer(mailbox.state.letters)))  # all three
    with pytest.raises(MailboxProtocolError, match="more than the 2 asked for"):
        once(poller_for(mailbox.url, make_router(handled), max_messages=2))
    assert handled.calls == []
    assert mailbox.acks == []


@pytest.mark.parametrize("behaviour", ["drip/0.01/200", "hang"])
def test_a_slow_or_silent_mailbox_times_out_as_a_whole(behaviour: str) -> None:
    with FaultServer() as server:
        poller = poller_for(
            server.url(f"/{behaviour}"), wait=0.2, request_timeout=0.3, max_answer_bytes=10**9
        )
        with pytest.raises(TransportTimeoutError):
            once(poller)


def test_a_huge_declared_answer_is_refused_unread() -> None:
    with FaultServer() as server:
        poller = poller_for(server.url("/drip/1/200"))  # Content-Length: 100000000
        with pytest.raises(MailboxProtocolError, match="larger than 16777216 bytes"):
            once(poller)


def test_a_redirect_is_not_followed() -> None:
    with FaultServer() as server:
        with pytest.raises(MailboxStatusError) as refused:
            once(poller_for(server.url("/redirect/307")))
        assert refused.value.status == 307
        assert [r.path for r in server.requests] == ["/redirect/307/fetch"]


def test_a_host_client_is_used_and_not_closed(mailbox: FakeMailbox) -> None:
    mailbox.post(ROUND)

    async def main() -> tuple[int, bool]:
        async with httpx.AsyncClient() as http:
            async with poller_for(mailbox.url, client=http) as poller:
                handled = await poller.apoll_once()
            return handled, http.is_closed

    assert asyncio.run(main()) == (1, False)


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://example.org/"}, "url must be an http:// or https:// URL"),
        ({"url": "https://example.org/mailbox?x=1"}, "must not carry a query"),
        ({"client_id": str(CLIENT)}, "client_id must be a UUID"),
        ({"secret": "whsec_not base64!"}, "secret is not valid base64"),
        ({"secret": None}, "secret must be the client's whsec_... string"),
        ({"router": object()}, "router must be a NotificationRouter"),
        ({"wait": 0}, "MailboxPoller.wait must be a number > 0"),
        ({"max_messages": 0}, "MailboxPoller.max_messages must be an integer >= 1"),
        ({"max_messages": 1001}, "max_messages must be at most 1000"),
        ({"backoff_initial": 5.0, "backoff_max": 1.0}, "backoff_max (1.0) must not be below"),
        ({"ack_attempts": 0}, "ack_attempts must be an integer >= 1"),
        ({"client": object()}, "client must be an httpx.AsyncClient"),
    ],
)
def test_bad_configuration_is_refused_by_name(options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "url": "https://example.org/mailbox",
        "client_id": CLIENT,
        "secret": SECRET,
        "router": make_router(Handled()),
        **options,
    }
    url = arguments.pop("url")
    with pytest.raises(ConfigurationError, match=re.escape(message)) as refused:
        MailboxPoller(url, **arguments)
    assert "not base64!" not in str(refused.value)


def test_a_router_that_checks_no_signature_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flnotify")
    MailboxPoller(
        "https://example.org/mailbox/",
        client_id=CLIENT,
        secret=SECRET,
        router=NotificationRouter(),
    )
    assert "router checks no signatures" in caplog.text


# -- hostile answers -----------------------------------------------------------------------

_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_message = st.one_of(
    st.tuples(st.just("genuine")),
    st.tuples(st.just("genuine")),
    st.tuples(st.just("tampered")),  # signed, then the body changed
    st.tuples(st.just("stale")),  # signed with the right secret an hour ago
    st.tuples(
        st.just("forged"),
        st.dictionaries(
            st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "x"])
            | st.text(max_size=10),
            st.text(max_size=40),
            max_size=6,
        ),
        st.binary(max_size=64) | st.just(ROUND),
    ),
    st.tuples(st.just("junk"), _json),
)
_status = st.one_of(st.just(200), st.just(200), st.just(200), st.integers(201, 599))
_answer = st.tuples(
    _status,
    st.one_of(
        st.lists(_message, max_size=5),
        st.lists(_message, min_size=1, max_size=5),
        st.binary(max_size=256),
        _json.map(lambda j: json.dumps(j).encode()),
    ),
)


def _document(specs: list[tuple[Any, ...]]) -> tuple[bytes, set[str]]:
    """A fetch answer of these messages, and the ids of the genuine ones."""
    now = int(time.time())
    genuine: set[str] = set()
    items: list[Any] = []
    for spec in specs:
        kind = spec[0]
        if kind in ("genuine", "tampered", "stale"):
            message_id = f"msg_{uuid.uuid4().hex}"
            stamp = now - 3600 if kind == "stale" else now
            headers = Signer(SECRET).headers(message_id, stamp, ROUND)
            body = ROUND if kind != "tampered" else ROUND.replace(b"3", b"4", 1)
            if kind == "genuine":
                genuine.add(message_id)
            items.append({"headers": headers, "body": _b64(body)})
        elif kind == "forged":
            items.append({"headers": spec[1], "body": _b64(spec[2])})
        else:
            items.append(spec[1])
    return json.dumps({"messages": items}).encode(), genuine


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_hostile_answers_never_crash_reach_a_handler_unverified_or_ack_unknown_ids() -> None:
    tls = ssl.create_default_context()  # loaded once, not by each example's client
    with FakeMailbox(CLIENT, SECRET) as mailbox:

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(answer=_answer)
        def check(answer: tuple[int, Any]) -> None:
            status, content = answer
            genuine: set[str] = set()
            if isinstance(content, list):
                content, genuine = _document(content)
            before = len(mailbox.acks)
            mailbox.script_fetches(Raw(status, content))
            handled = Handled()
            poller = poller_for(mailbox.url, make_router(handled), wait=0.01, verify=tls)
            try:
                count = once(poller)
            except (MailboxStatusError, MailboxProtocolError) as exc:  # others fail the test
                event(type(exc).__name__)
                count = None
            acks = mailbox.acks[before:]
            assert set(handled.ids) <= genuine  # only verified messages reached a handler
            for notification, _ in handled.calls:
                assert flnotify.codec.encode(notification) == ROUND
            if status != 200 or count is None:
                assert acks == []
                return
            offered = [m.id for m in parse_messages(content, max_messages=100)]
            assert count == len(offered)
            if not offered:
                assert acks == []
                return
            (batch,) = acks
            event("acked, some genuine" if genuine else "acked, none genuine")
            assert [a.id for a in batch] == list(dict.fromkeys(offered))  # each once, in order
            for ack in batch:
                assert (200 <= ack.status < 300) == (ack.id in genuine), ack

        check()
