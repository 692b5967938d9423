"""Hostile components for the delivery invariants: what a peer, a host or a plug-in may do.

A ``World`` (drawn by hypothesis with ``worlds()``) says, per receiver and per attempt, what
the transport does (raise anything, return any status and any headers, return junk), and
which other components misbehave: the signer, the endpoint check's resolver, the hooks, the
callbacks, the jitter source. ``check_invariants`` is what every driver must keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import flnotify
import flnotify.errors
import flnotify.hooks
from flnotify import Delivery, Outcome, Receiver
from flnotify.testing import seams
from flnotify.transports import HttpResponse
from flnotify.transports._base import Done, Job, drive_each

MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
TRAINING = uuid.UUID(int=77)

_EXCEPTIONS: list[BaseException] = [
    ValueError("bad value"),
    RuntimeError("the transport broke"),
    KeyError("missing"),
    TypeError("wrong type"),
    OSError(104, "Connection reset by peer"),
    ConnectionResetError("reset"),
    TimeoutError("timed out"),
    ZeroDivisionError("division by zero"),
    RecursionError("maximum recursion depth exceeded"),
    UnicodeError("\udcff"),
    flnotify.errors.ConnectError("refused"),
    flnotify.errors.TransportTimeoutError("slow"),
    flnotify.errors.ConnectionLostError("lost"),
    flnotify.errors.ProtocolError("nonsense"),
    flnotify.errors.InvalidURLError("no"),
    flnotify.errors.DNSError("nxdomain"),
    flnotify.errors.TransportError("generic", kind=flnotify.errors.TransportErrorKind.DEADLINE),
]

_RETRY_AFTER = st.one_of(
    st.sampled_from(
        [
            *("1", "0", " 2 ", "1.5", "-1", "+3", "٣", "²", "3\u00a0", "1e3", "9" * 20),
            *("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00", "Sun, 06 Nov 9999"),
            *("", "soon", "\x00", "Fri, 31 Dec 99999 23:59:59 GMT"),
        ]
    ),
    st.text(max_size=30),
)


class ExplodingHeaders(Mapping[str, str]):
    """Response headers whose every read raises."""

    def __getitem__(self, key: str) -> str:
        raise RuntimeError("header read exploded")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("header read exploded")

    def __len__(self) -> int:
        return 1


@attrs.frozen
class Answer:
    """What the transport does on one attempt."""

    kind: str  # "status", "raise", "junk", "exploding-headers"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    error: int = 0  # index into _EXCEPTIONS
    junk: int = 0

    def act(self) -> HttpResponse:
        if self.kind == "raise":
            raise _copy(_EXCEPTIONS[self.error])
        if self.kind == "junk":
            return [None, "200", object(), HttpResponse(True), 202.0][self.junk]  # type: ignore[return-value]
        if self.kind == "exploding-headers":
            return HttpResponse(self.status, ExplodingHeaders())
        return HttpResponse(self.status, dict(self.headers))


def _copy(exc: BaseException) -> BaseException:
    if isinstance(exc, flnotify.errors.TransportError):
        return type(exc)(str(exc), kind=exc.kind)
    return type(exc)(*exc.args)


def answers() -> st.SearchStrategy[Answer]:
    statuses = st.one_of(
        st.sampled_from([200, 202, 204, 301, 302, 400, 404, 409, 429, 500, 502, 503, 504]),
        st.integers(min_value=-5, max_value=1200),
    )
    headers = st.lists(
        st.one_of(
            st.tuples(st.just("retry-after"), _RETRY_AFTER),
            st.tuples(st.sampled_from(["location", "x-any", "content-type"]), st.text(max_size=20)),
        ),
        max_size=3,
    ).map(tuple)
    return st.one_of(
        st.builds(Answer, kind=st.just("status"), status=statuses, headers=headers),
        st.builds(Answer, kind=st.just("raise"), error=st.integers(0, len(_EXCEPTIONS) - 1)),
        st.builds(Answer, kind=st.just("junk"), junk=st.integers(0, 4)),
        st.builds(Answer, kind=st.just("exploding-headers"), status=statuses),
    )


@attrs.frozen
class World:
    """Everything that misbehaves in one example."""

    scripts: tuple[tuple[Answer, ...], ...]  # per receiver, per attempt (the last repeats)
    bad_signer: frozenset[int] = frozenset()  # receivers whose signature raises
    bad_callbacks: frozenset[int] = frozenset()  # receivers whose callback raises
    async_callbacks: bool = False
    bad_hook: str | None = None  # a hook method that raises
    bad_rng: float | None = None  # a jitter value out of [0, 1)
    bad_resolver: int | None = None  # the resolved-address check raises this exception
    max_attempts: int = 3

    @property
    def n(self) -> int:
        return len(self.scripts)


_HOOK_METHODS = (
    "on_send_started",
    "on_send_ended",
    "on_attempt_started",
    "on_attempt_ended",
    "on_outcome",
)


@st.composite
def worlds(draw: st.DrawFn, max_receivers: int = 6) -> World:
    n = draw(st.integers(1, max_receivers))
    scripts = tuple(tuple(draw(st.lists(answers(), min_size=1, max_size=4))) for _ in range(n))
    indices = st.frozensets(st.integers(0, n - 1), max_size=n)
    return World(
        scripts=scripts,
        bad_signer=draw(indices),
        bad_callbacks=draw(indices),
        async_callbacks=draw(st.booleans()),
        bad_hook=draw(
            st.sampled_from([None, "on_attempt_started", "on_attempt_ended", "on_outcome"])
        ),
        bad_rng=draw(st.sampled_from([None, None, math.nan, 2.0, -1.0, math.inf])),
        bad_resolver=draw(st.one_of(st.none(), st.integers(0, len(_EXCEPTIONS) - 1))),
        max_attempts=draw(st.integers(1, 4)),
    )


def receivers(world: World, base: str = "http://client") -> list[Receiver]:
    return [Receiver(uuid.UUID(int=i + 1), f"{base}-{i}.test/fl/{i}") for i in range(world.n)]


def notification(rs: list[Receiver]) -> flnotify.TrainingRoundStartNotification:
    return flnotify.TrainingRoundStartNotification(
        receivers=rs,
        body=flnotify.RoundBody(round=1, global_model_uuid=MODEL),
        training_uuid=TRAINING,
    )


class HostileTransport:
    """Plays each receiver's script, attempt by attempt; remembers every request."""

    def __init__(self, world: World, urls: list[str]) -> None:
        self.world = world
        self.index = {url: i for i, url in enumerate(urls)}
        self.seen: dict[int, list[Mapping[str, str]]] = {}
        self.lock = threading.Lock()

    async def apost(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        await asyncio.sleep(0)
        i = self.index[url]
        with self.lock:
            seen = self.seen.setdefault(i, [])
            seen.append(dict(headers))
            script = self.world.scripts[i]
            answer = script[min(len(seen) - 1, len(script) - 1)]
        return answer.act()

    async def aclose(self) -> None:
        return None


class DrivingHostileTransport(HostileTransport):
    """The same scripts, also offered to the engine's fast lane (``drive``)."""

    bounds_attempts: ClassVar[bool] = True  # each scripted answer comes at once

    async def drive(
        self,
        body: bytes,
        headers: Mapping[str, str],
        jobs: Iterator[Job],
        done: Done,
        concurrency: int,
    ) -> None:
        await drive_each(self.apost, body, headers, jobs, done, concurrency)


def hostile_transport(world: World, urls: list[str], lane: bool) -> HostileTransport:
    """The world's transport; with ``lane`` the engine may run first attempts in its fast lane."""
    return (DrivingHostileTransport if lane else HostileTransport)(world, urls)


class HostileSigner:
    """Signs, except for some receivers, where it raises (a broken per-receiver lookup)."""

    def __init__(self, world: World) -> None:
        self._signer = flnotify.Signer(secrets=flnotify.generate_secret())
        self._bad = {uuid.UUID(int=i + 1) for i in world.bad_signer}

    def headers(
        self, message_id: str, timestamp: int, body: bytes, receiver: Any
    ) -> dict[str, str]:
        if receiver.id in self._bad:
            raise ValueError("no secret for this receiver")
        return self._signer.headers(message_id, timestamp, body, receiver)


class HostilePolicy:
    """The address guard on, with a resolver that raises; everything else as the default."""

    block_private = True

    def __init__(self, world: World) -> None:
        assert world.bad_resolver is not None
        self._fault = world.bad_resolver
        self._inner = flnotify.EndpointPolicy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def acheck_host(self, host: str, port: int, *, url: str | None = None) -> list[str]:
        raise _copy(_EXCEPTIONS[self._fault])

    def check_host(self, host: str, port: int, *, url: str | None = None) -> list[str]:
        raise _copy(_EXCEPTIONS[self._fault])


def world_rng(world: World) -> Callable[[], float] | None:
    """The world's broken jitter source, if it has one (for ``flnotify.testing.seams``)."""
    if world.bad_rng is None:
        return None
    bad = world.bad_rng
    return lambda: bad


def notifier_options(world: World) -> dict[str, Any]:
    """The hostile components of ``world`` as Notifier (and CeleryDelivery) arguments."""
    options: dict[str, Any] = {
        "retry": retry_policy(world),
        "signer": HostileSigner(world),
        "hooks": [HostileHook(world.bad_hook)],
    }
    if world.bad_resolver is not None:
        options["policy"] = HostilePolicy(world)
    return options


class OutcomeHook(flnotify.hooks.NullHook):
    """A hook of sends and outcomes only, that may raise from one of its methods."""

    def __init__(self, method: str | None) -> None:
        self.method = method

    def _maybe(self, name: str) -> None:
        if self.method == name:
            raise RuntimeError(f"hook {name} broke")

    def on_send_started(self, details: Any, /) -> None:
        self._maybe("on_send_started")

    def on_send_ended(self, report: Any, /) -> None:
        self._maybe("on_send_ended")

    def on_outcome(self, delivery: Delivery, /) -> None:
        self._maybe("on_outcome")


class HostileHook(OutcomeHook):
    """A hook that may raise from one of its methods; it still notes every attempt."""

    def __init__(self, method: str | None) -> None:
        super().__init__(method)
        self.started: list[tuple[str, str, int]] = []
        self.ended: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def on_attempt_started(self, details: flnotify.hooks.AttemptStarted, /) -> None:
        with self.lock:
            self.started.append((details.send_id, details.message_id, details.attempt))
        self._maybe("on_attempt_started")

    def on_attempt_ended(self, details: flnotify.hooks.AttemptEnded, /) -> None:
        started = details.started
        with self.lock:
            self.ended.append((started.send_id, started.message_id, started.attempt))
        self._maybe("on_attempt_ended")


def check_attempts_paired(notifier: flnotify.Notifier) -> None:
    """Every attempt the hooks were told started was told ended, once."""
    for hook in notifier.settings.hooks:
        if isinstance(hook, HostileHook):
            assert sorted(hook.started) == sorted(hook.ended)
            assert len(set(hook.started)) == len(hook.started)


class CountingCallbacks:
    """Counts calls per receiver from any thread; raises for some, sync or async."""

    def __init__(self, world: World) -> None:
        self.bad = {uuid.UUID(int=i + 1) for i in world.bad_callbacks}
        self.calls: dict[uuid.UUID, list[Delivery]] = {}
        self.lock = threading.Condition()
        self.asynchronous = world.async_callbacks

    def _call(self, delivery: Delivery) -> None:
        with self.lock:
            self.calls.setdefault(delivery.receiver.id, []).append(delivery)
            self.lock.notify_all()
        if delivery.receiver.id in self.bad:
            raise flnotify.errors.RepositoryError("the repository is down")

    def on_success(self, delivery: Delivery, /) -> Any:
        return self._async(delivery) if self.asynchronous else self._call(delivery)

    def on_error(self, delivery: Delivery, /) -> Any:
        return self._async(delivery) if self.asynchronous else self._call(delivery)

    async def _async(self, delivery: Delivery) -> None:
        await asyncio.sleep(0)
        self._call(delivery)

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.calls) >= n, timeout):
                raise TimeoutError(f"only {len(self.calls)} of {n} receivers called back")


def retry_policy(world: World) -> flnotify.RetryPolicy:
    return flnotify.RetryPolicy(
        max_attempts=world.max_attempts,
        initial_backoff=0.001,
        max_backoff=0.01,
        max_retry_after=0.01,
    )


# What an internal error may blame: each step of the core names the component that broke.
COMPONENTS = (
    "the transport raised",
    "the retry policy raised",
    "building the headers raised",
    "checking the endpoint raised",
    "checking the resolved address raised",
    "sleep raised",
    "the mailbox raised",
)


def check_component_named(error: BaseException) -> None:
    """An internal error names the component that broke, never the engine's last resort.

    The engine catches what escapes the core ("the engine raised ..."): that catch firing
    means a component's failure was blamed on the wrong part and its attempt left unpaired.
    """
    if isinstance(error, flnotify.errors.InternalError):
        text = str(error)
        assert not text.startswith("the engine"), f"the engine's last-resort catch fired: {text}"
        assert text.startswith(COMPONENTS), f"no component named: {text}"


def check_invariants(
    world: World,
    rs: list[Receiver],
    deliveries: list[Delivery],
    callbacks: CountingCallbacks,
    seen: dict[int, list[Mapping[str, str]]],
    *,
    over_sockets: bool = False,
) -> None:
    """Exactly one delivery and one callback per receiver, typed errors, stable ids.

    ``over_sockets``: the requests were counted by a real server, which misses a request
    written into a connection it had closed, and sees a transport's one retry of a request
    that died on a reused connection; so each attempt was seen at most twice.
    """
    assert sorted(d.receiver.id for d in deliveries) == sorted(r.id for r in rs)
    assert set(callbacks.calls) == {r.id for r in rs}
    assert all(len(calls) == 1 for calls in callbacks.calls.values()), callbacks.calls
    for d in deliveries:
        i = d.receiver.id.int - 1
        assert callbacks.calls[d.receiver.id][0] is d
        d.describe()  # readable, whatever the peer sent
        assert d.outcome in Outcome
        assert 0 <= d.attempts <= world.max_attempts
        if over_sockets:
            assert len(seen.get(i, [])) <= 2 * d.attempts
        else:
            assert d.attempts == len(seen.get(i, []))
        if d.outcome is Outcome.DELIVERED:
            assert d.status_code is not None
            assert 200 <= d.status_code < 300
            assert d.error is None
        elif d.outcome is Outcome.REJECTED:
            assert d.status_code is not None
            assert not 200 <= d.status_code < 300
        else:
            if d.error is None:  # a retryable status until the budget ran out
                assert d.status_code is not None
            else:
                assert isinstance(d.error, flnotify.errors.FlnotifyError)
                check_component_named(d.error)
        ids = {h["webhook-id"] for h in seen.get(i, [])}
        assert ids <= {d.message_id}


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""The settings of the invariant properties."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The hostile components make flnotify log a lot at ERROR; that is expected here."""
    logger = logging.getLogger("flnotify")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def no_wait(_: float) -> None:
    """A sleeper that only yields to the loop."""
    await asyncio.sleep(0)


def hostile_notifier(world: World, transport: HostileTransport) -> flnotify.Notifier:
    """A Notifier over ``world``'s hostile components, never really sleeping.

    Over a transport that drives, its hook watches outcomes only, so that first attempts
    may take the engine's fast lane (a hook watching attempts keeps them off it).
    """
    options = notifier_options(world)
    if isinstance(transport, DrivingHostileTransport):
        options["hooks"] = [OutcomeHook(world.bad_hook)]
    with seams(sleep=no_wait, rng=world_rng(world)):
        return flnotify.Notifier(transport=transport, **options)
