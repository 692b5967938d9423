"""The mailbox app: where polling clients fetch their notifications and acknowledge them.

Mounted next to the FL server's own API (ASGI or WSGI). Each request is read once (a bad
one is answered 400) and authenticated with the secret of the client it names before the
store is asked anything; a client reads and acknowledges only its own mailbox. A fetch is
a long poll: held open (up to ``max_wait``) until mail arrives, woken at once by a send in
the same process and, for sends in other processes, by one look at the store per
``poll_interval`` for all waiting clients. The ASGI and WSGI adapters share every step
but the waiting itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

import attrs

from .._attempt import attempt_headers
from .._exceptions import ConfigurationError, FlnotifyError
from .._types import Receiver
from .._validators import at_least_one, positive
from .._version import __version__
from .._web.asgi import (
    ASGIApp,
    ASGIReceive,
    ASGIScope,
    ASGISend,
    BodyTooLargeError,
    DisconnectedError,
    lifespan,
    read_body_within,
)
from .._web.responses import Response, error, json_response, status_line
from .._web.wsgi import wsgi_headers
from ..signing import Signer
from ._store import Letter, MailboxStore
from ._wire import (
    ACK_PATH,
    FETCH_PATH,
    MAILBOX_ENDPOINT,
    FetchRequest,
    MailboxProtocolError,
    WireMessage,
    messages_document,
    parse_ack,
    parse_fetch,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["MailboxApp"]

logger = logging.getLogger("flnotify")

_UNAUTHORIZED = error(401, "unauthorized", "the request is not signed by this client's secret")
_UNAVAILABLE = error(503, "unavailable", "the mailbox is unavailable; try again later")
_MAX_HEADERS = 100
_MAX_HEADER_BYTES = 32 * 1024
_READ_CHUNK = 64 * 1024
_BARE = contextvars.Context()
"""The context of a poll's timer: it reads no context variable, so it needs no copy."""
_I = TypeVar("_I")
_R = TypeVar("_R")


class _Waiter:
    """One long poll waiting for mail: its request's task (ASGI) or an event (WSGI).

    An asyncio poll waits in its own task for its client to leave (the ASGI ``receive``,
    the only way to learn it), and nothing else: a wake-up (mail, its time being up, the
    app closing) cancels that wait, and the poll takes the cancellation as its own and
    looks for mail. A wake-up while it looks is kept (``pending``) for after the look. No
    second task, no future per poll: a held poll is mostly objects that outlive several
    garbage collections, and it keeps as few as it can.
    """

    __slots__ = ("cancelling", "event", "expired", "idle", "loop", "pending", "task")

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None, task: asyncio.Task[Any] | None = None
    ) -> None:
        self.loop = loop
        self.task = task
        self.event = threading.Event() if loop is None else None
        self.expired = False  # its time is up: the next look is its last
        self.pending = False  # woken while not waiting: look again before waiting
        self.idle = False  # its task waits for the client to leave (cancel to wake it)
        self.cancelling = False  # a wake-up cancelled that wait

    def wake(self) -> None:
        """Wake the poll (on its own loop's thread, for an asyncio poll)."""
        if self.event is not None:
            self.event.set()
            return
        self.pending = True
        if self.idle and not self.cancelling and self.task is not None:
            self.cancelling = True
            self.task.cancel()

    def expire(self) -> None:
        """The poll's time is up: wake it for the last time."""
        self.expired = True
        self.wake()

    def woken(self) -> bool:
        """Whether the cancellation its task caught is this waiter's wake-up alone.

        Not if it did not cancel, or if someone else cancelled the task too (the server
        shutting down): that cancellation goes on.
        """
        if not self.cancelling:
            return False
        self.cancelling = False
        uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+
        return uncancel is None or uncancel() == 0


def _wake(waiters: Iterable[_Waiter]) -> None:
    """Wake ``waiters`` from any thread: one hand-off per event loop, not one per poll.

    A send wakes every poll of its clients at once; each hand-off to a loop is a write
    to its self-pipe and a turn of the loop.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter]] = {}
    for waiter in waiters:
        if waiter.loop is None:
            waiter.wake()
        else:
            by_loop.setdefault(waiter.loop, []).append(waiter)
    for loop, woken in by_loop.items():
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
            loop.call_soon_threadsafe(_wake_all, woken)


def _wake_all(waiters: list[_Waiter]) -> None:
    for waiter in waiters:
        waiter.wake()


class _Waiting:
    """The long polls of this process, and the thread that looks for their mail."""

    def __init__(self, store: MailboxStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.lock = threading.Lock()
        self.by_client: dict[UUID, set[_Waiter]] = {}
        self.open = 0
        self.closed = False
        self.watcher: threading.Thread | None = None
        self.unsubscribe = store.signals.on_mail(self.wake)

    def add(self, client: UUID, waiter: _Waiter, per_client: int, most: int) -> str | None:
        """Register ``waiter``; why not (too many polls), or ``None``."""
        with self.lock:
            if self.closed:
                return "closed"
            waiters = self.by_client.setdefault(client, set())
            if len(waiters) >= per_client:
                return "client"
            if self.open >= most:
                return "server"
            waiters.add(waiter)
            self.open += 1
            if self.watcher is None:
                self.watcher = threading.Thread(
                    target=self._watch, name="flnotify-mailbox-watch", daemon=True
                )
                self.watcher.start()
        return None

    def remove(self, client: UUID, waiter: _Waiter) -> None:
        with self.lock:
            waiters = self.by_client.get(client)
            if waiters is not None and waiter in waiters:
                waiters.discard(waiter)
                self.open -= 1
                if not waiters:
                    del self.by_client[client]

    def close(self) -> None:
        """Refuse new polls and wake every open one (each answers what it has, or nothing)."""
        self.unsubscribe()  # the store outlives the app: it keeps no reference to it
        with self.lock:
            self.closed = True
            found = [w for waiters in self.by_client.values() for w in waiters]
        _wake(found)

    def wake(self, clients: Iterable[UUID]) -> None:
        with self.lock:
            by_client = self.by_client
            found = [w for c in clients if c in by_client for w in by_client[c]]
        _wake(found)

    def _watch(self) -> None:
        """Every ``interval``, wake the polls whose mail another process queued."""
        stop = threading.Event()
        while True:
            stop.wait(self.interval)
            with self.lock:
                clients = list(self.by_client)
                if not clients:
                    self.watcher = None
                    return
            try:
                ready = self.store.fetchable(clients)
            except Exception:
                logger.warning("mailbox: could not look for mail", exc_info=True)
                continue
            if ready:
                self.wake(ready)


class _Gathered(Generic[_I, _R]):
    """Store calls of one event loop's requests, gathered: one call for all that queue.

    A send wakes every poll of its clients at once, and their next fetches come in
    together; each request asks here, and the requests that asked while the store
    answered the previous ones share the next call of ``run`` (one transaction or so,
    not one per request), which answers each in order.
    """

    def __init__(
        self, run: Callable[[list[_I]], list[_R]], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.run = run
        self.loop = loop
        self.queue: list[tuple[_I, asyncio.Future[_R]]] = []
        self.task: asyncio.Task[None] | None = None

    def __call__(self, item: _I) -> asyncio.Future[_R]:
        """``item``'s answer (to await), from a call shared with the other requests."""
        future: asyncio.Future[_R] = self.loop.create_future()
        self.queue.append((item, future))
        if self.task is None:
            self.task = self.loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            while self.queue:
                await asyncio.sleep(0)  # the other requests of this moment queue meanwhile
                batch, self.queue = self.queue, []
                try:
                    found = await asyncio.to_thread(self.run, [item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(batch, found, strict=True):
                    if not future.done():  # a request whose client left
                        future.set_result(answer)
        finally:
            self.task = None


def _fetch_many(store: MailboxStore, asked: list[tuple[UUID, int]]) -> list[list[Letter]]:
    """Each (client, limit)'s letters, from one store call; polls of one client share."""
    limits: dict[UUID, int] = {}
    for client, limit in asked:
        limits[client] = limits.get(client, 0) + limit
    found = store.fetch_many(limits)
    answers = []
    for client, limit in asked:
        letters = found.get(client, [])
        answers.append(letters[:limit])
        found[client] = letters[limit:]
    return answers


@attrs.define(frozen=True)
class _Admit:
    """What a signed request asks of the store: its nonce recorded, its answers taken."""

    client: UUID
    nonce: str
    acks: Sequence[tuple[str, int]]


@attrs.frozen
class _Fetching:
    """A fetch admitted: whose, how many letters and how long to wait, what it found."""

    receiver: Receiver
    limit: int
    wait: float
    offered: Response | None


_Begun = tuple[int | None, list[Letter]]
"""A request admitted: the answers it carried that were taken (``None``: a replay), and
the letters offered to it (a fetch)."""
_Gathers = tuple[_Gathered[tuple[_Admit, int], _Begun], _Gathered[tuple[UUID, int], list[Letter]]]


@attrs.define(eq=False)
class MailboxApp:
    """Serves a mailbox to its polling clients: ``POST .../fetch`` and ``POST .../ack``.

    Every request must be signed the Standard Webhooks way with the client's own secret
    (the ``signer``'s ``lookup``; shared secrets never authenticate a client), carry a
    timestamp within ``tolerance`` and a ``webhook-id`` never used before (replays are
    refused across processes: nonces are kept in the store, for twice ``tolerance`` by
    the store's own clock, however far it is off the app's). Whatever is wrong (unknown
    client, wrong or stale signature, a replay) is answered the same 401, after the same
    HMAC work. A fetched message carries the headers a push would: made by the delivery
    core's header function at each offer, so its timestamp is fresh and its signature
    the client's.

    Args:
        mailbox: The store the server's [`Notifier`][flnotify.Notifier] posts to.
        signer: The server's signer (the Notifier's): it signs each offered message and
            authenticates each client with its own secret.
        max_wait: Longest long poll (seconds), below the idle timeouts of common proxies.
        max_batch: Most messages per fetch (a client may ask for fewer).
        max_acks: Most acknowledgements per request; at least ``max_batch``, so that one
            request acknowledges a whole fetch.
        max_polls_per_client: Open long polls of one client in this process; more are
            answered 429.
        max_open_polls: Open long polls in this process; more are answered 503.
        tolerance: Seconds a request's timestamp may lie from the server's clock.
        poll_interval: Seconds between looks for mail posted by other processes.
        max_body_bytes: Largest request body.
        read_timeout: Seconds a request's body may take to arrive, from the end of its
            headers; a slower one is answered 408 and its connection closed. Under ASGI
            the app cuts a stalled body itself (uvicorn has no body timeout); under WSGI
            it checks as the body's pieces arrive, and a peer that sends nothing at all
            is cut by the server's own read timeout.
        user_agent: The ``User-Agent`` header of offered messages (as a push's).
        clock: Epoch seconds (timestamps of offered messages, request tolerance).
        monotonic: Monotonic seconds, by which the WSGI app times a body's arrival (the
            ASGI app uses its event loop's clock).

    Raises:
        ConfigurationError: A limit is out of range, or ``max_acks`` is below
            ``max_batch``.
    """

    mailbox: MailboxStore
    signer: Signer
    max_wait: float = attrs.field(default=25.0, validator=positive)
    max_batch: int = attrs.field(default=100, validator=at_least_one)
    max_acks: int = attrs.field(default=1000, validator=at_least_one)
    max_polls_per_client: int = attrs.field(default=2, validator=at_least_one)
    max_open_polls: int = attrs.field(default=10_000, validator=at_least_one)
    tolerance: float = attrs.field(default=60.0, validator=positive)
    poll_interval: float = attrs.field(default=0.5, validator=positive)
    max_body_bytes: int = attrs.field(default=256 * 1024, validator=at_least_one)
    read_timeout: float = attrs.field(default=5.0, validator=positive)
    user_agent: str = f"flnotify/{__version__}"
    clock: Callable[[], float] = attrs.field(default=time.time, repr=False)
    monotonic: Callable[[], float] = attrs.field(default=time.monotonic, repr=False)
    _waiting: _Waiting = attrs.field(init=False, repr=False)
    _gathered: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gathers] = attrs.field(
        init=False, repr=False, factory=weakref.WeakKeyDictionary
    )
    _last: tuple[weakref.ref[asyncio.AbstractEventLoop], _Gathers] | None = attrs.field(
        init=False, repr=False, default=None
    )

    def __attrs_post_init__(self) -> None:
        if self.max_acks < self.max_batch:
            msg = (
                f"max_acks ({self.max_acks}) must be at least max_batch ({self.max_batch}): "
                "a client acknowledges a whole fetch in one request, and a larger one "
                "would be refused, its messages failing at their deadline"
            )
            raise ConfigurationError(msg)
        self._waiting = _Waiting(self.mailbox, self.poll_interval)

    # -- the steps, without waiting ------------------------------------------------------

    def _precheck(
        self, method: str, path: str, headers: Sequence[tuple[str | bytes, str | bytes]]
    ) -> Response | None:
        """The refusal of a misdirected, wrong-method or over-large request, or ``None``.

        Headers are counted and measured as text (WSGI) or as bytes (ASGI) alike.
        """
        if not path.endswith((FETCH_PATH, ACK_PATH)):
            return error(404, "not_found", "the mailbox answers at .../fetch and .../ack")
        if method != "POST":
            return error(405, "method_not_allowed", "use POST", ("allow", "POST"))
        if len(headers) > _MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > (
            _MAX_HEADER_BYTES
        ):
            return error(431, "headers_too_large", "too many or too large headers")
        return None

    def _verify(
        self,
        client: UUID,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        acks: Sequence[tuple[str, int]],
    ) -> _Admit | Response:
        """The request to admit, if the client it names signed it; else the refusal."""
        receiver = Receiver(client, MAILBOX_ENDPOINT)
        now = self.clock()
        try:
            verified = self.signer.verify_from(
                receiver, headers, body, tolerance=self.tolerance, now=now
            )
        except FlnotifyError:
            return _UNAUTHORIZED
        return _Admit(client, f"{client}:{verified.id}", acks)

    def _admit_many(self, admits: list[_Admit]) -> list[int | None]:
        """Record the nonces, take the answers of the fresh ones: two transactions in all.

        Each request's count of answers taken, or ``None``: a replay.
        """
        until = self._nonce_until()
        fresh = self.mailbox.remember_many([(a.nonce, until) for a in admits])
        taking = [i for i, new in enumerate(fresh) if new and admits[i].acks]
        answers = [(admits[i].client, admits[i].acks) for i in taking]
        counts = self.mailbox.ack_many(answers) if answers else []
        found: list[int | None] = [0 if new else None for new in fresh]
        for i, count in zip(taking, counts, strict=True):
            found[i] = count
        return found

    def _nonce_until(self) -> float:
        """Until when a nonce is kept, on the store's clock (the one its sweep reads).

        A request passes for ``tolerance`` either side of its timestamp, so at most for
        twice that from its first use, on any clock that runs at the rate of the app's:
        whatever the store's clock reads, it keeps the nonce that long (and a second).
        """
        return self.mailbox.now() + 2 * self.tolerance + 1.0

    def _read(
        self, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Response | tuple[_Admit, FetchRequest | None]:
        """Parse the request (once) and check its signature: what the store must admit.

        The fetch it is, or ``None`` for an ack; a refusal is answered at once.
        """
        request: FetchRequest | None = None
        try:
            if path.endswith(ACK_PATH):
                client, acks = parse_ack(body, max_acks=self.max_acks)
            else:
                request = parse_fetch(body, max_acks=self.max_acks)
                # the acknowledgements of the previous fetch, carried by this one
                client, acks = request.client, list(request.acks)
            who = self._verify(client, headers, body, [(a.id, a.status) for a in acks])
        except MailboxProtocolError as exc:
            return error(400, "malformed", str(exc))
        except Exception:
            logger.exception("mailbox: a request failed")
            return _UNAVAILABLE
        if isinstance(who, Response):
            return who
        return who, request

    def _begin_many(self, begun: list[tuple[_Admit, int]]) -> list[_Begun]:
        """Admit requests, then fetch for the fresh fetches: one worker call for all.

        ``begun``: each request and its fetch limit (0: an ack). Each request's count of
        answers taken (``None``: a replay) and the letters offered to it; a fetch's own
        acknowledgements are taken before it looks for mail.
        """
        taken = self._admit_many([admit for admit, _ in begun])
        asked = [i for i, (_, limit) in enumerate(begun) if limit and taken[i] is not None]
        found: list[_Begun] = [(count, []) for count in taken]
        if asked:
            fetched = _fetch_many(self.mailbox, [(begun[i][0].client, begun[i][1]) for i in asked])
            for i, letters in zip(asked, fetched, strict=True):
                found[i] = (taken[i], letters)
        return found

    def _limit(self, request: FetchRequest | None) -> int:
        """How many letters a request may be offered (0: an ack, none)."""
        return 0 if request is None else min(request.max, self.max_batch)

    def _begin(self, admit: _Admit, request: FetchRequest | None) -> _Begun | Response:
        """`_begin_many` of one request, now; a store error is answered 503."""
        try:
            return self._begin_many([(admit, self._limit(request))])[0]
        except Exception:
            logger.exception("mailbox: a request failed")
            return _UNAVAILABLE

    async def _abegin(
        self, admit: _Admit, request: FetchRequest | None, loop: asyncio.AbstractEventLoop
    ) -> _Begun | Response:
        """`_begin` on ``loop``, gathered with the other requests of the moment."""
        try:
            return await self._gathers(loop)[0]((admit, self._limit(request)))
        except Exception:
            logger.exception("mailbox: a request failed")
            return _UNAVAILABLE

    def _begun(
        self, admit: _Admit, request: FetchRequest | None, found: _Begun | Response
    ) -> Response | _Fetching:
        """After the store admitted the request: answer an ack, or the fetch and its offer.

        The offer is ``None`` if the fetch found no mail.
        """
        if isinstance(found, Response):
            return found
        taken, letters = found
        if taken is None:
            return _UNAUTHORIZED  # a replay
        if request is None:
            return json_response(200, {"accepted": taken})
        receiver = Receiver(admit.client, MAILBOX_ENDPOINT)
        offered = self._answer(receiver, letters) if letters else None
        return _Fetching(receiver, self._limit(request), request.wait, offered)

    def _gathers(self, loop: asyncio.AbstractEventLoop) -> _Gathers:
        """The gathered store calls of ``loop`` (the running one): beginning, fetching."""
        last = self._last
        if last is not None and last[0]() is loop:  # the one loop of a server, mostly
            return last[1]
        gathers = self._gathered.get(loop)
        if gathers is None:
            gathers = self._gathered[loop] = (
                _Gathered(self._begin_many, loop),
                _Gathered(functools.partial(_fetch_many, self.mailbox), loop),
            )
        self._last = (weakref.ref(loop), gathers)
        return gathers

    def _offer(self, receiver: Receiver, limit: int) -> Response | None:
        """The client's messages now (up to ``limit``), as an answer; ``None``: none."""
        try:
            letters = self.mailbox.fetch(receiver.id, limit)
        except Exception:
            logger.exception("mailbox: a fetch failed")
            return _UNAVAILABLE
        if not letters:
            return None
        return self._answer(receiver, letters)

    async def _aoffer(
        self, receiver: Receiver, limit: int, loop: asyncio.AbstractEventLoop
    ) -> Response | None:
        """`_offer` on an event loop: the fetch gathered with the other polls' of the loop."""
        try:
            letters = await self._gathers(loop)[1]((receiver.id, limit))
        except Exception:
            logger.exception("mailbox: a fetch failed")
            return _UNAVAILABLE
        if not letters:
            return None
        return self._answer(receiver, letters)

    def _answer(self, receiver: Receiver, letters: list[Letter]) -> Response:
        timestamp = int(self.clock())
        messages = [
            WireMessage(
                attempt_headers(
                    letter.message_id,
                    timestamp,
                    letter.body,
                    receiver,
                    self.signer,
                    self.user_agent,
                ),
                letter.body,
            )
            for letter in letters
        ]
        body = messages_document(messages)
        return Response(
            200,
            (("content-length", str(len(body))), ("content-type", "application/json")),
            body,
        )

    def close(self) -> None:
        """Stop serving long polls: open ones answer at once, new ones are refused (503).

        Call it before the server shuts down (each open poll holds a thread under WSGI),
        and before the store is closed. Idempotent; acknowledgements are still taken.
        """
        self._waiting.close()

    def _hold(self, fetching: _Fetching, waiter: _Waiter) -> Response | float:
        """Answer a fetch at once, or hold it: the seconds to wait, ``waiter`` registered.

        At once: it found mail, asked not to wait, or is one poll too many.
        """
        receiver, offered = fetching.receiver, fetching.offered
        wait = min(fetching.wait, self.max_wait)
        if offered is not None or wait <= 0:
            return offered or self._answer(receiver, [])
        why = self._waiting.add(receiver.id, waiter, self.max_polls_per_client, self.max_open_polls)
        if why is not None:
            return self._too_many(why)
        return wait

    def _look(
        self, receiver: Receiver, offered: Response | None, last: bool = False
    ) -> Response | None:
        """After a wake-up: the answer, or ``None``: hold on.

        The answer is the mail if some came, else empty if the app closes or this is the
        ``last`` look (the poll's time is up).
        """
        if offered is not None or last or self._waiting.closed:
            return offered or self._answer(receiver, [])
        return None

    def _too_slow(self, *extra: tuple[str, str]) -> Response:
        detail = f"the body did not arrive within {self.read_timeout:g} s"
        return error(408, "request_timeout", detail, *extra)

    def _too_many(self, why: str) -> Response:
        if why == "closed":
            return error(503, "closing", "the mailbox is shutting down", ("retry-after", "1"))
        if why == "client":
            return error(
                429, "too_many_polls", "this client has too many open polls", ("retry-after", "1")
            )
        return error(503, "busy", "too many open polls; try again later", ("retry-after", "1"))

    # -- ASGI ------------------------------------------------------------------------------

    async def _aserve(self, scope: ASGIScope, receive: ASGIReceive) -> Response:
        loop = asyncio.get_running_loop()
        begun = await self._astart(scope, receive, loop)
        if isinstance(begun, Response):
            return begun
        waiter = _Waiter(loop, asyncio.current_task())
        wait = self._hold(begun, waiter)
        if isinstance(wait, Response):
            return wait
        receiver, limit = begun.receiver, begun.limit
        del begun  # its offer was None
        timer = loop.call_later(wait, waiter.expire, context=_BARE)
        try:
            while True:
                if not waiter.pending:
                    await _until_woken(receive, waiter)
                waiter.pending = False
                last = waiter.expired
                answer = self._look(receiver, await self._aoffer(receiver, limit, loop), last)
                if answer is not None:
                    return answer
        finally:
            timer.cancel()
            self._waiting.remove(receiver.id, waiter)

    async def _astart(
        self, scope: ASGIScope, receive: ASGIReceive, loop: asyncio.AbstractEventLoop
    ) -> Response | _Fetching:
        """A request up to its first look for mail: the answer, or the fetch to hold.

        Its own coroutine, so that what it read is freed before a poll is held.
        """
        method: str = scope["method"]
        path: str = scope.get("path", "")
        raw: Sequence[tuple[bytes, bytes]] = scope["headers"]
        refused = self._precheck(method, path, raw)
        if refused is not None:
            return refused
        # the signature's headers are all that is read (names lower-case, as ASGI says)
        headers = [
            (k.decode("latin-1").lower(), v.decode("latin-1"))
            for k, v in raw
            if k[:8].lower() == b"webhook-"
        ]
        try:
            body = await read_body_within(receive, self.max_body_bytes, self.read_timeout)
        except BodyTooLargeError:
            return error(413, "payload_too_large", f"the body exceeds {self.max_body_bytes} bytes")
        except asyncio.TimeoutError:
            return self._too_slow(("connection", "close"))
        read = self._read(path, headers, body)
        if isinstance(read, Response):
            return read
        admit, fetch = read
        return self._begun(admit, fetch, await self._abegin(admit, fetch, loop))

    def asgi_app(self) -> ASGIApp:
        """The app as a plain ASGI 3 application (mount it at e.g. ``/mailbox``)."""

        async def app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
            kind = scope["type"]
            if kind == "lifespan":
                await lifespan(receive, send)
                return
            if kind != "http":
                if kind == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                return
            try:
                response = await self._aserve(scope, receive)
            except DisconnectedError:
                return
            except Exception:
                logger.exception("mailbox: the ASGI app failed on a request")
                response = error(500, "internal_error", "the mailbox failed")
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers
                    ],
                }
            )
            await send({"type": "http.response.body", "body": response.body})

        return app

    # -- WSGI ------------------------------------------------------------------------------

    def _serve(self, environ: WSGIEnvironment) -> Response:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        headers = wsgi_headers(environ)
        refused = self._precheck(method, path, headers)
        if refused is not None:
            return refused
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if length < 0:
            return error(411, "length_required", "a Content-Length header is required")
        if length > self.max_body_bytes:
            return error(413, "payload_too_large", f"the body exceeds {self.max_body_bytes} bytes")
        try:
            body = _read_within(
                environ["wsgi.input"], length, self.monotonic() + self.read_timeout, self.monotonic
            )
        except OSError:  # the server's own read timeout, or the peer went away
            return error(408, "request_timeout", "the body did not arrive in time")
        if body is None:
            return self._too_slow()  # the server closes: WSGI apps may not say so
        read = self._read(path, headers, body)
        if isinstance(read, Response):
            return read
        admit, fetch = read
        begun = self._begun(admit, fetch, self._begin(admit, fetch))
        if isinstance(begun, Response):
            return begun
        waiter = _Waiter(None)
        wait = self._hold(begun, waiter)
        if isinstance(wait, Response):
            return wait
        receiver, limit = begun.receiver, begun.limit
        event = waiter.event
        assert event is not None  # noqa: S101 - a threading waiter
        try:
            until = time.monotonic() + wait
            while (left := until - time.monotonic()) > 0:
                event.wait(left)
                event.clear()
                answer = self._look(receiver, self._offer(receiver, limit))
                if answer is not None:
                    return answer
            return self._answer(receiver, [])
        finally:
            self._waiting.remove(receiver.id, waiter)

    def wsgi_app(self) -> WSGIApplication:
        """The app as a PEP 3333 WSGI application; each open poll holds a thread."""

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            try:
                response = self._serve(environ)
            except Exception:
                logger.exception("mailbox: the WSGI app failed on a request")
                response = error(500, "internal_error", "the mailbox failed")
            start_response(status_line(response.status), list(response.headers))
            return [response.body]

        return app


def _read_within(
    stream: Any, length: int, deadline: float, clock: Callable[[], float]
) -> bytes | None:
    """Up to ``length`` bytes of a WSGI body, piece by piece; ``None``: past ``deadline``.

    ``read1`` (wsgiref's and flnotify's servers have it) returns each piece as it
    arrives, so a body that drips is cut when the next drop comes; a plain ``read``
    returns only when its piece is complete.
    """
    read: Callable[[int], bytes] = getattr(stream, "read1", None) or stream.read
    chunks: list[bytes] = []
    left = length
    while left > 0:
        chunk = read(min(left, _READ_CHUNK))
        if not chunk:  # the peer ended the body early: it will not parse
            break
        chunks.append(chunk)
        left -= len(chunk)
        if left > 0 and clock() > deadline:
            return None
    return b"".join(chunks)


async def _until_woken(receive: ASGIReceive, waiter: _Waiter) -> None:
    """Wait for ``waiter``'s wake-up; if the client goes away first, `DisconnectedError`.

    After the body, ``receive`` answers only when the client leaves; a wake-up cancels
    it (see `_Waiter`). A held poll whose client left is abandoned, nothing fetched.
    """
    waiter.idle = True
    try:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                raise DisconnectedError
    except asyncio.CancelledError:
        if not waiter.woken():
            raise
    except DisconnectedError:
        raise
    except Exception as exc:  # a server whose receive fails: the client is as good as gone
        raise DisconnectedError from exc
    finally:
        waiter.idle = False
