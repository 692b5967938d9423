"""Client side: receive, verify, deduplicate and dispatch notifications to typed handlers.

A [`NotificationRouter`][] turns one HTTP request into one answer. Its core,
[`handle`][flnotify.NotificationRouter.handle] (sync) and
 [`ahandle`][flnotify.NotificationRouter.ahandle] (async),
takes ``(method, headers, body)`` and returns a [`Response`][]; the decisions are
written once and both twins only call (or await) the handler. Thin adapters serve it as an
ASGI 3 app (uvicorn, Starlette, FastAPI ``mount``) or a PEP 3333 WSGI app (wsgiref, gunicorn).

Answers, in the order they are decided:

* not ``POST``: 405 with ``Allow: POST``;
* body over ``max_body_bytes`` (``Content-Length`` is checked before reading): 413;
* signature or timestamp missing, malformed or wrong (when ``secrets`` are set): 401;
* body is not a valid notification: 400, naming the path and the problem;
* unknown or unhandled ``notification_type``: ``unknown_type_status`` (400);
* ``webhook-id`` already handled: 200, the handler is not run again;
* ``webhook-id`` being handled right now by another request: 503, ``Retry-After: 1``;
* the handler raised: 500, logged to the ``flnotify`` logger, no details in the body;
* the handler returned ``None``: 202 for round and test starts, 200 for the others;
* the handler returned an ``int`` or a [`Reply`][]: that status (and body).

Error bodies are JSON ``{"error": "<code>", "detail": "<text>"}``.

Deduplication: a message id counts as handled once its handler answered 2xx; ids whose
handler failed (or said no) are not remembered, so the server's retry runs the handler
again. A duplicate that arrives while the first is still running gets 503 with
``Retry-After`` (retryable for the sender) rather than waiting or running twice; handlers
should therefore answer fast and start long work (a training round) in the background.
The in-flight guard is per process: with several worker processes, give them one shared
[`IdStore`][] (e.g. a database table) and make handlers idempotent.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, runtime_checkable

import attrs

from ._codec import Codec
from ._exceptions import (
    ConfigurationError,
    DecodeError,
    UnknownNotificationTypeError,
    VerificationError,
)
from ._notification import Notification
from ._types import NotificationKind, NotificationType
from ._validators import at_least_one, positive
from .endpoints import DEFAULT_MAX_BODY_BYTES
from .signing import DEFAULT_TOLERANCE, ID_HEADER, TIMESTAMP_HEADER, Verifier

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "ASGIApp",
    "Handler",
    "IdStore",
    "InMemoryIdStore",
    "MessageContext",
    "NotificationRouter",
    "Reply",
    "Response",
    "asgi_app",
    "wsgi_app",
]

logger = logging.getLogger("flnotify")

Handler: TypeAlias = Callable[..., Any]
"""``handler(notification)`` or ``handler(notification, context)``, sync or async; returns
``None``, an ``int`` status or a [`Reply`][]."""

HandlerT = TypeVar("HandlerT", bound=Handler)

ASGIScope: TypeAlias = MutableMapping[str, Any]
ASGIReceive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]
"""A plain ASGI 3 application callable."""

_ACCEPTED_TYPES = frozenset(
    t.value
    for t in (
        NotificationType.UPDATE_ROUND_START,
        NotificationType.SWAG_ROUND_START,
        NotificationType.MODEL_TEST_ROUND,
    )
)
_NO_DEDUP: Any = object()
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


def _valid_status(_: Any, __: Any, value: int) -> None:
    if type(value) is not int or not 200 <= value <= 599:
        msg = f"status must be an int from 200 to 599, not {value!r}"
        raise ValueError(msg)


# --------------------------------------------------------------------------- values


@attrs.frozen
class Reply:
    """What a handler may return to choose the status and body of the answer.

    Args:
        status: The HTTP status (200-599).
        body: ``bytes`` as they are, ``str`` as UTF-8 text, anything else as JSON.
        content_type: Overrides the content type inferred from ``body``.
    """

    status: int = attrs.field(default=200, validator=_valid_status)
    body: Any = None
    content_type: str | None = None


@attrs.frozen
class Response:
    """The router's answer to one request.

    Args:
        status: The HTTP status.
        headers: ``(name, value)`` pairs, names lower-case; always with ``content-length``.
        body: The body bytes.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@attrs.frozen
class MessageContext:
    """What a two-argument handler gets besides the notification.

    Args:
        id: The ``webhook-id``, when the request carried one.
        timestamp: The ``webhook-timestamp``, when the request carried a valid one.
        verified: Whether the signature was checked (``secrets`` configured).
        headers: The request headers, names lower-case.
    """

    id: str | None
    timestamp: int | None
    verified: bool
    headers: Mapping[str, str]


def _response(
    status: int, body: bytes = b"", content_type: str | None = None, *extra: tuple[str, str]
) -> Response:
    headers = [("content-length", str(len(body)))]
    if content_type is not None:
        headers.append(("content-type", content_type))
    headers.extend(extra)
    return Response(status, tuple(headers), body)


def _json_response(status: int, document: Any, *extra: tuple[str, str]) -> Response:
    body = json.dumps(document, separators=(",", ":")).encode()
    return _response(status, body, "application/json", *extra)


def _error(status: int, error: str, detail: str, *extra: tuple[str, str]) -> Response:
    return _json_response(status, {"error": error, "detail": detail}, *extra)


def _reply_response(reply: Reply) -> Response:
    body, content_type = reply.body, reply.content_type
    if body is None:
        return _response(reply.status, b"", content_type)
    if isinstance(body, (bytes, bytearray, memoryview)):
        return _response(reply.status, bytes(body), content_type or "application/octet-stream")
    if isinstance(body, str):
        return _response(reply.status, body.encode(), content_type or "text/plain; charset=utf-8")
    encoded = json.dumps(body, separators=(",", ":")).encode()
    return _response(reply.status, encoded, content_type or "application/json")


# --------------------------------------------------------------------------- dedup


@runtime_checkable
class IdStore(Protocol):
    """Remembers the ids of handled messages.

    Implement it over a database table (a primary key on the id and an insertion time
    for expiry) to survive restarts or share it between worker processes.
    """

    def seen(self, message_id: str) -> bool:
        """Whether ``message_id`` was handled (within the store's window)."""
        ...

    def add(self, message_id: str) -> None:
        """Remember that ``message_id`` was handled."""
        ...


@attrs.define
class InMemoryIdStore:
    """A bounded, thread-safe [`IdStore`][] in memory, for one process.

    Args:
        max_entries: At most this many ids are kept; the oldest are forgotten first.
        window_seconds: Ids are forgotten this long after they were handled (default 24 h;
            keep it longer than the server's retry deadline).
        clock: A monotonic clock in seconds; inject one in tests.
    """

    max_entries: int = attrs.field(default=10_000, validator=at_least_one)
    window_seconds: float = attrs.field(default=24 * 3600.0, validator=positive)
    clock: Callable[[], float] = time.monotonic
    _expiry: OrderedDict[str, float] = attrs.field(init=False, factory=OrderedDict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def _expire(self, now: float) -> None:
        entries = self._expiry
        while entries:
            oldest, expires = next(iter(entries.items()))
            if expires > now:
                break
            del entries[oldest]

    def seen(self, message_id: str) -> bool:
        """Whether ``message_id`` was added within the window."""
        with self._lock:
            self._expire(self.clock())
            return message_id in self._expiry

    def add(self, message_id: str) -> None:
        """Remember ``message_id`` for ``window_seconds``, forgetting the oldest if full."""
        with self._lock:
            now = self.clock()
            self._expiry[message_id] = now + self.window_seconds
            self._expiry.move_to_end(message_id)
            self._expire(now)
            while len(self._expiry) > self.max_entries:
                self._expiry.popitem(last=False)

    def __len__(self) -> int:
        return len(self._expiry)


# --------------------------------------------------------------------------- router


def _is_async(func: Handler) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def _wants_context(func: Handler) -> bool:
    """Whether the handler takes a second positional argument (the context)."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


@attrs.frozen
class _Registered:
    func: Handler
    is_async: bool
    wants_context: bool
    status: int | None


def _wire_type(kind: NotificationKind | type[Notification[Any]] | str) -> str:
    if isinstance(kind, str):
        return kind
    if isinstance(kind, type) and issubclass(kind, Notification):
        kind = kind.notification_type
    wire = getattr(kind, "value", None)
    if not isinstance(wire, str):
        msg = f"cannot route on {kind!r}: expected a notification type, class or wire string"
        raise ConfigurationError(msg)
    return wire


def _header_pairs(headers: Mapping[str, str] | Iterable[tuple[Any, Any]]) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs = []
    for name, value in items:
        n = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        v = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        pairs.append((n.lower(), v))
    return pairs


def _too_large(limit: int) -> Response:
    return _error(413, "payload_too_large", f"the body exceeds {limit} bytes")


def _resolve_sync(awaitable: Awaitable[Any]) -> Any:
    """Run an async handler's awaitable to completion from sync code."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        msg = "an async handler cannot run in handle() inside an event loop; use ahandle()"
        raise ConfigurationError(msg)

    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())


@attrs.define
class _Dispatch:
    """A request that passed every check: which handler to call and how to answer after."""

    router: NotificationRouter
    handler: _Registered
    notification: Notification[Any]
    context: MessageContext
    claimed: str | None

    def call(self) -> Any:
        if self.handler.wants_context:
            return self.handler.func(self.notification, self.context)
        return self.handler.func(self.notification)

    def _answer(self, result: Any) -> Response:
        if result is None:
            wire = self.notification.notification_type.value
            return _response(self.handler.status or (202 if wire in _ACCEPTED_TYPES else 200))
        if isinstance(result, Reply):
            return _reply_response(result)
        if type(result) is int and 200 <= result <= 599:
            return _response(result)
        msg = f"returned {result!r}; expected None, an int status from 200 to 599 or a Reply"
        raise TypeError(msg)

    def finish(self, result: Any) -> Response:
        """Turn the handler's result into the answer; remember the id after a 2xx."""
        try:
            response = self._answer(result)
        except Exception as exc:  # a nonsense result, or a Reply body that is not JSON
            return self.fail(exc)
        if self.claimed is not None and 200 <= response.status < 300:
            store = self.router.dedup
            try:
                if store is not None:
                    store.add(self.claimed)
            except Exception:
                logger.exception("could not remember message id %s", self.claimed)
        return response

    def fail(self, exc: BaseException) -> Response:
        """Log the handler's exception and answer 500 without revealing it."""
        logger.error(
            "handler for %s (message %s) failed",
            self.notification.notification_type.value,
            self.context.id,
            exc_info=exc,
        )
        return _error(500, "handler_error", "the handler failed; see the client's log")

    def __enter__(self) -> _Dispatch:
        return self

    def __exit__(self, *_: object) -> None:
        if self.claimed is not None:
            self.router._release(self.claimed)


@attrs.define(init=False, repr=False)
class NotificationRouter:
    """Verifies received notifications and dispatches them to handlers per type.

    Args:
        secrets: The ``whsec_...`` secret(s) requests must be signed with; ``None``
            accepts unsigned requests (anyone who can reach the port can then send).
        tolerance: How many seconds a ``webhook-timestamp`` may lie from ``clock()``.
        codec: Decodes bodies; defaults to the six training notifications.
        dedup: Where handled message ids are kept; ``None`` turns deduplication off.
        max_body_bytes: Larger request bodies are answered 413 unread.
        unknown_type_status: The status for unknown or unhandled notification types.
        clock: The wall clock for timestamp checks; inject one in tests.
        handlers: Initial handlers, ``{type or class or wire string: handler}``.
        sync_handlers_in_thread: In [`ahandle`][], run sync handlers in a worker thread
            (default) so they cannot block the event loop; ``False`` calls them directly.

    Raises:
        ConfigurationError: A secret is malformed or a limit is out of range.
    """

    codec: Codec
    dedup: IdStore | None
    max_body_bytes: int
    unknown_type_status: int
    sync_handlers_in_thread: bool
    _verifier: Verifier | None
    _handlers: dict[str, _Registered]
    _in_flight: set[str]
    _lock: threading.Lock

    def __init__(
        self,
        *,
        secrets: str | Sequence[str] | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        codec: Codec | None = None,
        dedup: IdStore | None = _NO_DEDUP,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        unknown_type_status: int = 400,
        clock: Callable[[], float] = time.time,
        handlers: Mapping[NotificationKind | type[Notification[Any]] | str, Handler] | None = None,
        sync_handlers_in_thread: bool = True,
    ) -> None:
        if type(max_body_bytes) is not int or max_body_bytes <= 0:
            msg = f"max_body_bytes must be a positive integer, not {max_body_bytes!r}"
            raise ConfigurationError(msg)
        try:
            _valid_status(None, None, unknown_type_status)
        except ValueError as exc:
            msg = f"unknown_type_status: {exc}"
            raise ConfigurationError(msg) from None
        self.__attrs_init__(
            codec=Codec() if codec is None else codec,
            dedup=InMemoryIdStore() if dedup is _NO_DEDUP else dedup,
            max_body_bytes=max_body_bytes,
            unknown_type_status=unknown_type_status,
            sync_handlers_in_thread=sync_handlers_in_thread,
            verifier=None
            if secrets is None
            else Verifier(secrets, tolerance=tolerance, clock=clock),
            handlers={},
            in_flight=set(),
            lock=threading.Lock(),
        )
        for kind, handler in (handlers or {}).items():
            self.add_handler(kind, handler)

    def __repr__(self) -> str:
        signed = "signed" if self._verifier is not None else "unsigned"
        return f"NotificationRouter(<{signed}>, handlers={sorted(self._handlers)})"

    @property
    def verifies(self) -> bool:
        """Whether requests must carry a valid signature."""
        return self._verifier is not None

    # ---------------------------------------------------------------- registration

    def add_handler(
        self,
        kind: NotificationKind | type[Notification[Any]] | str,
        handler: Handler,
        *,
        status: int | None = None,
    ) -> None:
        """Route notifications of ``kind`` to ``handler``.

        Args:
            kind: A [`NotificationType`][], a notification class or a wire string.
            handler: ``handler(notification)`` or ``handler(notification, context)``,
                sync or async.
            status: The answer when the handler returns ``None`` (default: 202 for round
                and test starts, 200 otherwise).

        Raises:
            ConfigurationError: ``kind`` already has a handler, or is not a type.
        """
        wire = _wire_type(kind)
        if not callable(handler):
            msg = f"the handler for {wire!r} is not callable"
            raise ConfigurationError(msg)
        if status is not None:
            try:
                _valid_status(None, None, status)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        if wire in self._handlers:
            msg = f"{wire!r} already has a handler"
            raise ConfigurationError(msg)
        self._handlers[wire] = _Registered(
            handler, _is_async(handler), _wants_context(handler), status
        )

    def on(
        self, *kinds: NotificationKind | type[Notification[Any]] | str, status: int | None = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Decorator form of [`add_handler`][], for one or more kinds.

        Example::

            @router.on(NotificationType.UPDATE_ROUND_START)
            async def start_round(notification: TrainingRoundStartNotification) -> None: ...
        """
        if not kinds:
            msg = "on() needs at least one notification type"
            raise ConfigurationError(msg)

        def register(handler: HandlerT) -> HandlerT:
            for kind in kinds:
                self.add_handler(kind, handler, status=status)
            return handler

        return register

    # ---------------------------------------------------------------- the core

    def _early(self, method: str, length: int | None) -> Response | None:
        """The answer decided before the body is read (method, size), if any."""
        if method.upper() != "POST":
            return _error(
                405, "method_not_allowed", f"{method} is not allowed; use POST", ("allow", "POST")
            )
        if length is not None and length > self.max_body_bytes:
            return _too_large(self.max_body_bytes)
        return None

    def _precheck(self, method: str, content_length: str | None) -> tuple[Response | None, int]:
        """For adapters: the early answer (if any) and the parsed Content-Length (-1: none)."""
        if content_length is None:
            return self._early(method, None), -1
        text = content_length.strip()
        if not text.isascii() or not text.isdigit():
            return _error(400, "bad_request", "invalid Content-Length header"), -1
        length = int(text)
        return self._early(method, length), length

    def _prepare(
        self, method: str, headers: Mapping[str, str] | Iterable[tuple[Any, Any]], body: bytes
    ) -> Response | _Dispatch:
        """Everything up to the handler call; the answer, or what to call."""
        early = self._early(method, len(body))
        if early is not None:
            return early
        pairs = _header_pairs(headers)
        header_map = dict(pairs)
        message_id: str | None
        timestamp: int | None
        if self._verifier is not None:
            try:
                verified = self._verifier.verify(pairs, body)
            except VerificationError as exc:
                logger.warning("refused a notification: %s", exc)
                return _error(401, "verification_failed", str(exc))
            message_id, timestamp = verified.id, verified.timestamp
        else:
            message_id = header_map.get(ID_HEADER) or None
            raw = header_map.get(TIMESTAMP_HEADER, "").strip()
            timestamp = int(raw) if _TIMESTAMP.fullmatch(raw) else None
        try:
            notification = self.codec.decode(bytes(body))
        except UnknownNotificationTypeError as exc:
            return _error(self.unknown_type_status, "unknown_notification_type", exc.problem)
        except DecodeError as exc:
            return _error(400, "invalid_notification", f"{exc.path}: {exc.problem}")
        wire = notification.notification_type.value
        handler = self._handlers.get(wire)
        if handler is None:
            return _error(
                self.unknown_type_status, "unhandled_notification_type", f"no handler for {wire!r}"
            )
        claimed = None
        if message_id is not None and self.dedup is not None:
            refused = self._claim(message_id)
            if refused is not None:
                return refused
            claimed = message_id
        context = MessageContext(message_id, timestamp, self._verifier is not None, header_map)
        return _Dispatch(self, handler, notification, context, claimed)

    def _claim(self, message_id: str) -> Response | None:
        """Mark ``message_id`` in flight; the answer instead if it is a duplicate."""
        with self._lock:
            if message_id in self._in_flight:
                return _error(
                    503,
                    "in_progress",
                    "this message is being handled; retry later",
                    ("retry-after", "1"),
                )
            self._in_flight.add(message_id)
        try:
            seen = self.dedup is not None and self.dedup.seen(message_id)
        except Exception:
            self._release(message_id)
            logger.exception("could not look up message id %s", message_id)
            return _error(500, "dedup_error", "the message store failed; see the client's log")
        if seen:
            self._release(message_id)
            logger.info("message %s was already handled; not handling it again", message_id)
            return _json_response(200, {"detail": "duplicate of an already handled message"})
        return None

    def _release(self, message_id: str) -> None:
        with self._lock:
            self._in_flight.discard(message_id)

    def handle(
        self, method: str, headers: Mapping[str, str] | Iterable[tuple[Any, Any]], body: bytes
    ) -> Response:
        """Answer one request, calling the handler in this thread (for WSGI and tests).

        An async handler is run with `asyncio.run`; inside a running event loop that
        is impossible and answers 500 (use [`ahandle`][] there).

        Args:
            method: The HTTP method.
            headers: A mapping or ``(name, value)`` pairs (``str`` or ``bytes``).
            body: The whole request body.
        """
        step = self._prepare(method, headers, body)
        if isinstance(step, Response):
            return step
        with step:
            try:
                result = step.call()
                if inspect.isawaitable(result):
                    result = _resolve_sync(result)
            except Exception as exc:
                return step.fail(exc)
            return step.finish(result)

    async def ahandle(
        self, method: str, headers: Mapping[str, str] | Iterable[tuple[Any, Any]], body: bytes
    ) -> Response:
        """Answer one request; async handlers are awaited, sync ones run in a thread.

        See [`handle`][] for the arguments; ``sync_handlers_in_thread=False`` calls
        sync handlers directly on the event loop instead.
        """
        step = self._prepare(method, headers, body)
        if isinstance(step, Response):
            return step
        with step:
            try:
                if step.handler.is_async or not self.sync_handlers_in_thread:
                    result = step.call()
                else:
                    result = await asyncio.to_thread(step.call)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                return step.fail(exc)
            return step.finish(result)

    # ---------------------------------------------------------------- adapters

    def asgi_app(self) -> ASGIApp:
        """The router as an ASGI 3 application; see [`asgi_app`][]."""
        return asgi_app(self)

    def wsgi_app(self) -> WSGIApplication:
        """The router as a WSGI application; see [`wsgi_app`][]."""
        return wsgi_app(self)


# --------------------------------------------------------------------------- ASGI


class _BodyTooLargeError(Exception):
    pass


class _DisconnectedError(Exception):
    pass


async def _read_asgi_body(receive: ASGIReceive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _DisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _lifespan(receive: ASGIReceive, send: ASGISend) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def asgi_app(router: NotificationRouter) -> ASGIApp:
    """Serve ``router`` as a plain ASGI 3 application (any path answers).

    Handles ``http`` (the body is read up to ``max_body_bytes``, a larger Content-Length
    is refused unread) and ``lifespan``; ``websocket`` connections are closed.
    """

    async def app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if kind != "http":
            return
        method: str = scope["method"]
        headers = _header_pairs(scope.get("headers", ()))
        raw_length = next((v for k, v in headers if k == "content-length"), None)
        response, _ = router._precheck(method, raw_length)
        if response is None:
            try:
                body = await _read_asgi_body(receive, router.max_body_bytes)
            except _DisconnectedError:
                return
            except _BodyTooLargeError:
                response = _too_large(router.max_body_bytes)
            else:
                response = await router.ahandle(method, headers, body)
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    return app


# --------------------------------------------------------------------------- WSGI


def _wsgi_headers(environ: WSGIEnvironment) -> list[tuple[str, str]]:
    pairs = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            pairs.append((key[5:].replace("_", "-").lower(), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            pairs.append((key.replace("_", "-").lower(), value))
    return pairs


def _status_line(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"{status} {phrase}"


def wsgi_app(router: NotificationRouter) -> WSGIApplication:
    """Serve ``router`` as a PEP 3333 WSGI application (any path answers).

    The body is read by ``Content-Length`` (a POST without one is answered 411 unless the
    server sets ``wsgi.input_terminated``); a larger length is refused unread.
    """

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        headers = _wsgi_headers(environ)
        response, length = router._precheck(method, environ.get("CONTENT_LENGTH") or None)
        if response is None:
            stream = environ["wsgi.input"]
            if length >= 0:
                response = router.handle(method, headers, stream.read(length))
            elif environ.get("wsgi.input_terminated"):
                body = stream.read(router.max_body_bytes + 1)
                response = router.handle(method, headers, body)
            else:
                response = _error(411, "length_required", "a Content-Length header is required")
        start_response(_status_line(response.status), list(response.headers))
        return [response.body]

    return app
