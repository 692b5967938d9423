"""[`MailboxPoller`][flnotify.receiving.MailboxPoller]: a client behind NAT fetches its mail.

The client opens no port. It long-polls the server's mailbox app
([`MailboxApp`][flnotify.mailbox.MailboxApp]), runs each fetched message through its
[`NotificationRouter`][flnotify.receiving.NotificationRouter] exactly as if it had been pushed
(signature, deduplication, handler) and acknowledges it with the status the router
answered. Every answer of the mailbox is treated as hostile. The decisions (what an answer
means, how long to wait before the next poll) are I/O-free functions; `apoll_once` and
`arun` only make the requests and wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import attrs
import httpx

from .._closing import AsyncClosing
from .._exceptions import (
    ConfigurationError,
    ConnectError,
    ConnectionLostError,
    FlnotifyError,
    MailboxStatusError,
    ProtocolError,
    TransportError,
    TransportErrorKind,
    TransportTimeoutError,
)
from .._http import parse_retry_after
from .._loops import run
from .._validators import at_least_one, positive
from .._version import __version__
from ..mailbox._wire import (
    ACK_PATH,
    FETCH_PATH,
    Ack,
    FetchAnswer,
    MailboxProtocolError,
    WireMessage,
    ack_document,
    fetch_document,
    parse_answer,
)
from ..signing import Signer
from ._router import NotificationRouter

__all__ = ["DEFAULT_MAX_ANSWER_BYTES", "MailboxPoller", "MailboxStatusError"]

logger = logging.getLogger("flnotify")
T = TypeVar("T")

DEFAULT_MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""A fetch answer above 16 MiB is refused (the cap grows to fit one message at the router's
``max_body_bytes``)."""

_MAX_BATCH = 1000
"""Most messages one fetch may ask for (the mailbox app's default ``max_acks``)."""

_ERROR_BODY_BYTES = 4096  # what is read of an answer that is not a 200
_ACK_ANSWER_BYTES = 64 * 1024
_QUICK_EMPTY = 1.0  # an empty answer sooner than half of min(wait, this) is no long poll
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")


class _AnswerTooLargeError(MailboxProtocolError):
    """A fetch answer passed the size cap: the next fetch asks for fewer messages."""


class _StoppedError(Exception):
    """[`stop`][flnotify.receiving.MailboxPoller.stop] cut a wait short."""


# -- the decisions, I/O-free --------------------------------------------------------------


@attrs.frozen
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


@attrs.frozen
class _Polled:
    """What one poll did: messages fetched, how many the router accepted (2xx), how fast."""

    fetched: int
    accepted: int
    elapsed: float

    def progressed(self, wait: float) -> bool:
        """Whether to poll again at once: mail was accepted, or a real long poll came back.

        A server that answers an empty fetch at once, or with messages the router refuses
        one after the other, is backed off from like a failing one, so it never makes the
        client loop hot.
        """
        if self.fetched:
            return self.accepted > 0
        return self.elapsed >= min(wait, _QUICK_EMPTY) / 2


def _error_code(body: bytes) -> str:
    """The ``error`` code of a JSON error body (``"too_many_polls"``), or ``""``."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    code = document.get("error") if isinstance(document, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""


def _refusal(operation: str, answer: _Answer, now: float) -> MailboxStatusError:
    return MailboxStatusError(
        operation,
        answer.status,
        retry_after=parse_retry_after(answer.headers, lambda: now),
        code=_error_code(answer.body),
    )


def _fetched(answer: _Answer, most: int, now: float) -> FetchAnswer:
    """The messages of a fetch answer, and whether the app takes acks in fetches.

    Raises:
        MailboxStatusError: It is not a 200.
        MailboxProtocolError: Its body is not a fetch answer of at most ``most`` messages.
    """
    if answer.status != 200:
        raise _refusal("fetch", answer, now)
    return parse_answer(answer.body, max_messages=most)


def _acks(answers: Sequence[tuple[str, int]]) -> list[Ack]:
    """One acknowledgement per id, in the order ids first came: its first 2xx, else its last."""
    chosen: dict[str, int] = {}
    for message_id, status in answers:
        if not 200 <= chosen.get(message_id, 0) < 300:
            chosen[message_id] = status
    return [Ack(message_id, status) for message_id, status in chosen.items()]


def _backoff(failures: int, initial: float, cap: float, draw: float) -> float:
    """Full jitter: ``draw`` (in [0, 1)) of ``initial`` doubled per failure, at most ``cap``."""
    return min(cap, initial * 2.0 ** min(failures - 1, 64)) * draw


def _delay(exc: BaseException, failures: int, initial: float, cap: float, draw: float) -> float:
    """How long to wait after the ``failures``-th failed poll in a row, failing with ``exc``.

    Refused credentials wait about ``cap`` at once (they will not fix themselves soon); a
    ``Retry-After`` is honoured up to ``cap``; anything else backs off with full jitter.
    """
    if isinstance(exc, MailboxStatusError):
        if exc.unauthorized:
            return cap * (0.5 + draw / 2)
        if exc.retry_after is not None:
            return min(cap, max(exc.retry_after, _backoff(failures, initial, cap, draw)))
    return _backoff(failures, initial, cap, draw)


def _ack_retryable(exc: FlnotifyError) -> bool:
    """Whether another try of an acknowledgement may succeed: not after a 4xx but 408/429."""
    if isinstance(exc, MailboxStatusError):
        return exc.status in (408, 425, 429) or exc.status >= 500
    return True


def _transport_error(exc: httpx.HTTPError, url: str) -> TransportError:
    """The flnotify error for what httpx raised: the one table at this edge."""
    kind: type[TransportError] = TransportError
    if isinstance(exc, httpx.TimeoutException):
        kind = TransportTimeoutError
    elif isinstance(exc, httpx.ConnectError):
        kind = ConnectError
    elif isinstance(exc, (httpx.RemoteProtocolError, httpx.DecodingError)):
        kind = ProtocolError
    elif isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.CloseError)):
        kind = ConnectionLostError
    return kind(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, url=url)


def _base_url(url: object) -> str:
    if not isinstance(url, str):
        msg = f"url must be a string, not {type(url).__name__}"
        raise ConfigurationError(msg)
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"url must be an http:// or https:// URL with a host, not {url!r:.100}"
        raise ConfigurationError(msg)
    if parts.query or parts.fragment or parts.username or parts.password:
        msg = "url must not carry a query, a fragment or credentials (the requests are signed)"
        raise ConfigurationError(msg)
    return url.strip().rstrip("/")


def _signer(secret: object) -> Signer:
    if not isinstance(secret, str):
        msg = f"secret must be the client's whsec_... string, not {type(secret).__name__}"
        raise ConfigurationError(msg)
    return Signer(secret)  # its errors name the problem, never the secret


def _answer_cap(router: NotificationRouter) -> int:
    """16 MiB, or room for one message as large as the router accepts (base64, headers)."""
    limits = router.limits
    one = -(-limits.max_body_bytes // 3) * 4 + 6 * limits.max_header_bytes + 1024
    return max(DEFAULT_MAX_ANSWER_BYTES, one)


async def _read(response: httpx.Response, limit: int, *, strict: bool) -> bytes:
    """The body up to ``limit`` bytes; beyond, refused (``strict``) or cut off unread."""
    declared = response.headers.get("content-length", "")
    if strict and declared.isdigit() and int(declared) > limit:
        msg = f"the fetch answer is larger than {limit} bytes"
        raise _AnswerTooLargeError(msg)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if strict:
                msg = f"the fetch answer is larger than {limit} bytes"
                raise _AnswerTooLargeError(msg)
            chunks.append(chunk[: len(chunk) - (size - limit)])
            break
        chunks.append(chunk)
    return b"".join(chunks)


# -- the poller ---------------------------------------------------------------------------


@attrs.define(init=False, repr=False, eq=False)
class MailboxPoller(AsyncClosing):
    """Fetches a client's notifications from its mailbox and hands them to its router.

    Each fetch is a long poll, signed the Standard Webhooks way with the client's own
    secret (a fresh ``req_...`` nonce and the current time each request). The messages
    go one after the other, in order, through
    [`router.ahandle`][flnotify.receiving.NotificationRouter.ahandle], which verifies their
    signatures, deduplicates them by ``webhook-id`` and runs the handlers; then one
    acknowledgement carries the status the router answered each of them. In
    [`arun`][flnotify.receiving.MailboxPoller.arun], to an app that takes them (it says so in its
    fetch answers), the acknowledgements ride on the next fetch, which follows at once:
    one request and one nonce fewer per batch; they go on their own before a wait between
    polls and when the poller stops, and always with
    [`apoll_once`][flnotify.receiving.MailboxPoller.apoll_once] and to older apps. An
    acknowledgement that is lost (tried ``ack_attempts`` times) only means the mailbox
    offers the message again later, under the same id, and the router's id store answers
    it as already handled. Nothing is acknowledged that did not go through the router.

    [`arun`][flnotify.receiving.MailboxPoller.arun] polls until
    [`stop`][flnotify.receiving.MailboxPoller.stop]. Between polls it waits only after a
    failure: no answer, an error status, an answer that is not the protocol's or larger
    than the cap (the next fetches ask for half as many messages, until the mailbox runs
    short), an empty answer
    that came back at once, or a batch the router refused entirely. It waits
    ``backoff_initial`` doubled per failure in a row, at most ``backoff_max``, with full
    jitter, and at least what a ``Retry-After`` asks (up to ``backoff_max``). A 401
    (wrong client id or secret, a clock off by more than the mailbox tolerates) is logged
    as an error and waits about ``backoff_max`` at once. The first good answer resets the
    backoff.

    Args:
        url: The mailbox app's base URL (``https://fl.example/mailbox``); requests go to
            ``{url}/fetch`` and ``{url}/ack``.
        client_id: The client's id: the receiver id the server sends to.
        secret: The client's own ``whsec_...`` secret, which signs its requests.
        router: Verifies, deduplicates and dispatches each message; give it the same
            secret (the mailbox signs the messages with it) and an id store that outlives
            the process ([`SQLiteIdStore`][flnotify.receiving.SQLiteIdStore]) if handlers
            must not run twice across restarts.
        wait: Seconds the mailbox may hold a fetch while it has nothing (it caps this).
        max_messages: Most messages per fetch (at most 1000).
        request_timeout: Seconds a request may take beyond the mailbox's hold: a fetch
            gets ``wait + request_timeout`` in all, an acknowledgement ``request_timeout``.
        backoff_initial: The first wait after a failure, seconds.
        backoff_max: The longest wait between polls, seconds.
        ack_attempts: Tries of one acknowledgement (the first included).
        max_answer_bytes: Largest fetch answer read; default
            [`DEFAULT_MAX_ANSWER_BYTES`][flnotify.receiving.DEFAULT_MAX_ANSWER_BYTES], or
            room for one message of the router's ``max_body_bytes`` if that is more.
        client: An ``httpx.AsyncClient`` of the host's (proxies, TLS, client certificates,
            ``httpx.MockTransport``), closed by the host; by default the poller makes one
            on first use (TLS verified, no redirects) and closes it in
            [`aclose`][flnotify.receiving.MailboxPoller.aclose]; it honours the
            environment's proxy settings (``HTTPS_PROXY``, ``NO_PROXY``).
        verify: TLS verification for the client the poller makes: ``True`` or an
            ``ssl.SSLContext`` (e.g. trusting a private CA).
        sleep: Awaited to wait between polls; inject a fake in tests.
        rng: The jitter's source, floats in [0, 1).
        clock: Monotonic seconds, to tell a long poll from an answer that came at once.
        wall_clock: Epoch seconds, for the requests' timestamps and ``Retry-After`` dates.

    Raises:
        ConfigurationError: The URL, client id, secret or router is not usable, or a
            number is out of range; the message names which, never the secret.
    """

    url: str
    client_id: UUID
    router: NotificationRouter
    wait: float = attrs.field(validator=positive)
    max_messages: int = attrs.field(validator=at_least_one)
    request_timeout: float = attrs.field(validator=positive)
    backoff_initial: float = attrs.field(validator=positive)
    backoff_max: float = attrs.field(validator=positive)
    ack_attempts: int = attrs.field(validator=at_least_one)
    max_answer_bytes: int = attrs.field(validator=at_least_one)
    client: httpx.AsyncClient | None
    verify: bool | ssl.SSLContext
    sleep: Callable[[float], Awaitable[object]]
    rng: Callable[[], float]
    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    _signer: Signer
    _own: httpx.AsyncClient | None
    _batch: int
    _stopped: threading.Event
    _lock: threading.Lock
    _loop: asyncio.AbstractEventLoop | None
    _wake: asyncio.Event | None
    _running: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None
    _takes_acks: bool
    _unsent: list[Ack]

    def __init__(
        self,
        url: str,
        client_id: UUID,
        secret: str,
        router: NotificationRouter,
        *,
        wait: float = 25.0,
        max_messages: int = 100,
        request_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        ack_attempts: int = 3,
        max_answer_bytes: int | None = None,
        client: httpx.AsyncClient | None = None,
        verify: bool | ssl.SSLContext = True,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        base = _base_url(url)
        if not isinstance(client_id, UUID):
            msg = f"client_id must be a UUID, not {type(client_id).__name__}"
            raise ConfigurationError(msg)
        signer = _signer(secret)
        if not isinstance(router, NotificationRouter):
            msg = f"router must be a NotificationRouter, not {type(router).__name__}"
            raise ConfigurationError(msg)
        if type(max_messages) is int and max_messages > _MAX_BATCH:
            msg = f"max_messages must be at most {_MAX_BATCH}, not {max_messages}"
            raise ConfigurationError(msg)
        if client is not None and not isinstance(client, httpx.AsyncClient):
            msg = f"client must be an httpx.AsyncClient, not {type(client).__name__}"
            raise ConfigurationError(msg)
        self.__attrs_init__(
            url=base,
            client_id=client_id,
            router=router,
            wait=wait,
            max_messages=max_messages,
            request_timeout=request_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            ack_attempts=ack_attempts,
            max_answer_bytes=_answer_cap(router) if max_answer_bytes is None else max_answer_bytes,
            client=client,
            verify=verify,
            sleep=sleep,
            rng=rng,
            clock=clock,
            wall_clock=wall_clock,
            signer=signer,
            own=None,
            batch=max_messages,
            stopped=threading.Event(),
            lock=threading.Lock(),
            loop=None,
            wake=None,
            running=None,
            takes_acks=False,
            unsent=[],
        )
        if backoff_max < backoff_initial:
            msg = f"backoff_max ({backoff_max}) must not be below backoff_initial"
            raise ConfigurationError(msg)
        if not router.verifies:
            logger.warning(
                "the mailbox poller's router checks no signatures: give it the client's "
                "secret, or anyone answering at %s can make it run handlers",
                base,
            )

    def __repr__(self) -> str:
        return f"MailboxPoller({self.url!r}, client_id={self.client_id}, <secret>)"

    # -- stopping ------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """Whether [`stop`][flnotify.receiving.MailboxPoller.stop] was called."""
        return self._stopped.is_set()

    def stop(self) -> None:
        """End [`arun`][flnotify.receiving.MailboxPoller.arun]; safe from any thread.

        A pending fetch is cancelled at once (its messages, if the mailbox had already
        taken them, are offered again later) and so is a wait between polls; messages
        already being handled are finished and acknowledged first. Stopping is final:
        afterwards `arun` returns at once and `apoll_once` fetches nothing.
        """
        self._stopped.set()
        with self._lock:
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing waits
                loop.call_soon_threadsafe(wake.set)

    def _wake_event(self) -> asyncio.Event:
        """The event `stop` sets, made for the running loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is not loop or self._wake is None:
                self._loop, self._wake = loop, asyncio.Event()
                if self._stopped.is_set():
                    self._wake.set()
            return self._wake

    async def _bounded(
        self, awaitable: Awaitable[T], timeout: float | None, url: str, *, stoppable: bool = True
    ) -> T:
        """``awaitable``'s result, cancelled by `stop` (if ``stoppable``) or after ``timeout``.

        Raises:
            _StoppedError: `stop` came first.
            TransportTimeoutError: ``timeout`` seconds passed first.
        """
        work = asyncio.ensure_future(awaitable)
        waits: set[asyncio.Future[Any]] = {work}
        stopper = asyncio.ensure_future(self._wake_event().wait()) if stoppable else None
        if stopper is not None:
            waits.add(stopper)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
            if not work.done():
                work.cancel()
                await asyncio.wait({work})
        if not work.cancelled():
            return work.result()
        if stopper is not None and stopper.done() and not stopper.cancelled():
            raise _StoppedError
        msg = f"no complete answer within {timeout:g} s"
        raise TransportTimeoutError(msg, url=url)

    # -- one exchange --------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self.client is not None:
            return self.client
        if self._own is None:
            self._own = httpx.AsyncClient(
                verify=self.verify,
                follow_redirects=False,
                headers={"user-agent": f"flnotify/{__version__}"},
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
            )
        return self._own

    async def _post(self, path: str, body: bytes, limit: int, total: float) -> _Answer:
        """One signed POST of ``body`` to ``{url}{path}``; the answer, read up to ``limit``."""
        url = self.url + path
        headers = self._signer.headers("req_" + secrets.token_hex(16), int(self.wall_clock()), body)
        headers["content-type"] = "application/json"
        headers["accept"] = "application/json"
        timeout = httpx.Timeout(total, connect=min(total, self.request_timeout))
        try:
            async with self._http().stream(
                "POST", url, content=body, headers=headers, timeout=timeout, follow_redirects=False
            ) as response:
                ok = response.status_code == 200
                data = await _read(response, limit if ok else _ERROR_BODY_BYTES, strict=ok)
                return _Answer(response.status_code, response.headers, data)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, url) from exc
        except FlnotifyError:
            raise
        except Exception as exc:  # anything else the HTTP stack raised: still a typed error
            msg = f"the request failed: {type(exc).__name__}: {exc}"
            raise TransportError(msg, url=url, kind=TransportErrorKind.INTERNAL) from exc

    async def _exchange(self, path: str, body: bytes, limit: int, total: float) -> _Answer:
        """`_post`, bounded as a whole by ``total`` seconds (a slow drip included)."""
        url = self.url + path
        stoppable = path == FETCH_PATH  # an acknowledgement is short and worth finishing
        return await self._bounded(
            self._post(path, body, limit, total), total, url, stoppable=stoppable
        )

    async def _handle(self, messages: Sequence[WireMessage]) -> list[tuple[str, int]]:
        """Each message through the router, in order: ``(webhook-id, status)`` pairs."""
        answers = []
        for message in messages:
            try:
                answer = await self.router.ahandle(
                    "POST", list(message.headers.items()), message.body
                )
                status = answer.status
            except Exception:  # the router answers its own bugs with 500; this is the net
                logger.exception("the router failed on mailbox message %s", message.id)
                status = 500
            answers.append((message.id, status))
        return answers

    async def _acknowledge(self, acks: Sequence[Ack]) -> bool:
        """Send ``acks`` in one request, tried up to ``ack_attempts`` times; whether it went."""
        body = ack_document(self.client_id, acks)
        failure: FlnotifyError | None = None
        for attempt in range(1, self.ack_attempts + 1):
            try:
                answer = await self._exchange(
                    ACK_PATH, body, _ACK_ANSWER_BYTES, self.request_timeout
                )
            except FlnotifyError as exc:
                failure = exc
            else:
                if answer.status == 200:
                    logger.debug("acknowledged %d mailbox message(s)", len(acks))
                    return True
                failure = _refusal("ack", answer, self.wall_clock())
            if attempt == self.ack_attempts or not _ack_retryable(failure):
                break
            draw = self.rng()
            try:
                await self._bounded(
                    self.sleep(
                        _delay(failure, attempt, self.backoff_initial, self.backoff_max, draw)
                    ),
                    None,
                    self.url + ACK_PATH,
                )
            except _StoppedError:
                break
        logger.warning(
            "could not acknowledge %d mailbox message(s) (%s); the mailbox will offer them "
            "again and the router's id store answers them as already handled",
            len(acks),
            failure,
        )
        return False

    async def _poll(self, *, carry: bool = False) -> _Polled:
        """One fetch, its messages through the router, their acknowledgement.

        ``carry``: leave the acknowledgement for the next fetch, if the app takes it so.
        Acknowledgements left by the previous poll go with this fetch (and are kept, to
        go on their own, if the fetch fails).
        """
        if self._stopped.is_set():
            raise _StoppedError
        most = self._batch
        started = self.clock()
        carried, self._unsent = self._unsent, []
        try:
            answer = await self._exchange(
                FETCH_PATH,
                fetch_document(self.client_id, self.wait, most, carried),
                self.max_answer_bytes,
                self.wait + self.request_timeout,
            )
            fetched = _fetched(answer, most, self.wall_clock())
        except _AnswerTooLargeError:
            self._batch = max(1, most // 2)
            raise
        except BaseException:
            self._unsent = carried + self._unsent  # not known to have arrived: send again
            raise
        messages = fetched.messages
        self._takes_acks = fetched.takes_acks
        elapsed = self.clock() - started
        if len(messages) < most:  # the backlog is drained: full batches again
            self._batch = self.max_messages
        answers = await self._handle(messages)
        if answers:
            if carry and self._takes_acks:
                self._unsent = _acks(answers)
            else:
                await self._acknowledge(_acks(answers))
        accepted = sum(1 for _, status in answers if 200 <= status < 300)
        return _Polled(len(messages), accepted, elapsed)

    async def _flush(self) -> None:
        """Send the acknowledgements left for a fetch that is not coming at once."""
        unsent, self._unsent = self._unsent, []
        if unsent:
            await self._acknowledge(unsent)

    # -- the public drivers --------------------------------------------------------------

    async def apoll_once(self) -> int:
        """Fetch once (a long poll), handle what came, acknowledge it.

        Returns:
            How many messages went through the router (0 when the mailbox had none, or
            after [`stop`][flnotify.receiving.MailboxPoller.stop]).

        Raises:
            MailboxStatusError: The mailbox answered the fetch with an error status
                (``unauthorized`` for a 401).
            MailboxProtocolError: The answer is not a fetch answer, holds more messages
                than asked for, or is larger than ``max_answer_bytes``.
            TransportError: No answer (refused, reset, timed out); its subclass says how.
        """
        try:
            polled = await self._poll()
        except _StoppedError:
            return 0
        return polled.fetched

    async def arun(self) -> None:
        """Poll until [`stop`][flnotify.receiving.MailboxPoller.stop], whatever the mailbox does.

        A failing or hostile mailbox never ends it: each failure is logged and backed off
        from (see the class).

        Raises:
            ConfigurationError: The poller is already running.
        """
        running = asyncio.Event()
        with self._lock:
            if self._running is not None and not self._running[1].is_set():
                msg = "this MailboxPoller is already running"
                raise ConfigurationError(msg)
            self._running = (asyncio.get_running_loop(), running)
        failures = 0
        try:
            while not self._stopped.is_set():
                try:
                    polled = await self._poll(carry=True)
                except _StoppedError:
                    break
                except FlnotifyError as exc:
                    failures += 1
                    delay = _delay(
                        exc, failures, self.backoff_initial, self.backoff_max, self.rng()
                    )
                    self._log_failure(exc, failures, delay)
                except Exception as exc:  # a bug must not end the client's polling
                    failures += 1
                    delay = _delay(
                        exc, failures, self.backoff_initial, self.backoff_max, self.rng()
                    )
                    logger.exception("polling the mailbox at %s failed unexpectedly", self.url)
                else:
                    if polled.progressed(self.wait):
                        if failures:
                            logger.info("the mailbox at %s answers again", self.url)
                        failures = 0
                        continue
                    failures += 1
                    delay = _backoff(failures, self.backoff_initial, self.backoff_max, self.rng())
                    logger.debug(
                        "the mailbox answered at once with nothing to accept; next poll in %.1f s",
                        delay,
                    )
                await self._flush()  # not held back by the wait
                try:
                    await self._bounded(self.sleep(delay), None, self.url)
                except _StoppedError:
                    break
            await self._flush()  # stopped: what was handled is acknowledged first
        finally:
            running.set()

    def _log_failure(self, exc: FlnotifyError, failures: int, delay: float) -> None:
        if isinstance(exc, MailboxStatusError) and exc.unauthorized:
            logger.error(
                "the mailbox at %s refused this client's credentials (401): check the client "
                "id (%s), its secret and this host's clock; next poll in %.1f s",
                self.url,
                self.client_id,
                delay,
            )
            return
        logger.warning(
            "polling the mailbox at %s failed (%s; %d in a row); next poll in %.1f s",
            self.url,
            exc,
            failures,
            delay,
        )

    def run(self) -> None:
        """Poll until `stop` (called from another thread or a signal handler), then close.

        A blocking shell of [`arun`][flnotify.receiving.MailboxPoller.arun] on a new event
        loop; inside a running loop use `arun` itself.
        """

        async def main() -> None:
            try:
                await self.arun()
            finally:
                await self.aclose()

        run(main())  # on uvloop if installed (FLNOTIFY_EVENT_LOOP)

    async def aclose(self) -> None:
        """Stop, wait for `arun` to end and close the client the poller made.

        Call it on the loop that runs `arun`; from another loop it only stops (the
        client is then closed by `run`, or by an `aclose` on the running loop).
        """
        self.stop()
        running = self._running
        if running is not None and not running[1].is_set():
            if running[0] is not asyncio.get_running_loop():
                return
            await running[1].wait()
        own, self._own = self._own, None
        if own is not None:
            await own.aclose()
