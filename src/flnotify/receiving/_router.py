"""[`NotificationRouter`][flnotify.receiving.NotificationRouter]: one request in, one answer out.

The decisions are written once and I/O-free: the request's inspection (the same as
[`parse_notification`][flnotify.receiving.parse_notification]) and `_Dispatch` for the
handler's answer; `handle` (sync) and `ahandle` (async) only call or await the handler
and the id store.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, overload

import attrs

from .._codec import Codec
from .._exceptions import (
    ConfigurationError,
    DecodeError,
    RequestTooLargeError,
    UnknownNotificationTypeError,
    VerificationError,
)
from .._notification import Notification
from .._types import NotificationKind, NotificationType
from .._web.responses import (
    INTERNAL_ERROR,
    Response,
    error,
    json_response,
    response,
    too_large,
    valid_status,
)
from ..signing import DEFAULT_TOLERANCE, Verifier
from ._asgi import ASGIApp, asgi_app
from ._dedupe import AsyncIdStore, IdClaim, IdStore, InMemoryIdStore
from ._parse import (
    RawHeaders,
    ReceivedNotification,
    ReceivingLimits,
    inspect_request,
    read_headers,
)
from ._responses import Reply, reply_response
from ._wsgi import wsgi_app

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["Handler", "HandlerDecorator", "MessageContext", "NotificationRouter"]

logger = logging.getLogger("flnotify")

Handler: TypeAlias = Callable[..., Any]
"""``handler(notification)`` or ``handler(notification, context)``, sync or async; returns
``None``, an ``int`` status or a [`Reply`][flnotify.receiving.Reply]."""

HandlerT = TypeVar("HandlerT", bound=Handler)
N = TypeVar("N", bound=Notification[Any])
R = TypeVar("R")

_ACCEPTED_TYPES = frozenset(
    t.value
    for t in (
        NotificationType.UPDATE_ROUND_START,
        NotificationType.SWAG_ROUND_START,
        NotificationType.MODEL_TEST_ROUND,
    )
)
_NO_DEDUP: Any = object()
_HEADER_LIMITS = frozenset({"max_headers", "max_header_bytes"})


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


class HandlerDecorator(Protocol[N]):
    """What [`router.on(SomeNotification)`][flnotify.receiving.NotificationRouter.on] returns.

    It takes a handler of that notification class (with or without a
    [`MessageContext`][flnotify.receiving.MessageContext] parameter) and returns it unchanged;
    a handler typed for another class is a type error.
    """

    @overload
    def __call__(self, handler: Callable[[N], R], /) -> Callable[[N], R]: ...

    @overload
    def __call__(
        self, handler: Callable[[N, MessageContext], R], /
    ) -> Callable[[N, MessageContext], R]: ...


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


def _refusal(exc: Exception, unknown_type_status: int, limits: ReceivingLimits) -> Response:
    """The answer to each error the request's inspection raises: the one table."""
    if isinstance(exc, RequestTooLargeError):
        if exc.limit in _HEADER_LIMITS:
            return error(431, "headers_too_large", str(exc))
        return too_large(limits.max_body_bytes)
    if isinstance(exc, VerificationError):
        logger.warning("refused a notification: %s", exc)
        return error(401, "verification_failed", str(exc))
    if isinstance(exc, UnknownNotificationTypeError):
        return error(unknown_type_status, "unknown_notification_type", exc.problem)
    if isinstance(exc, DecodeError):
        return error(400, "invalid_notification", f"{exc.path}: {exc.problem}")
    raise exc


_IN_PROGRESS = error(
    503, "in_progress", "this message is being handled; retry later", ("retry-after", "1")
)
_DUPLICATE = json_response(200, {"detail": "duplicate of an already handled message"})
_STORE_DOWN = error(
    503, "dedup_unavailable", "the message store failed; retry later", ("retry-after", "1")
)


def _claim_answer(claim: IdClaim, message_id: str) -> Response | None:
    if claim is IdClaim.CLAIMED:
        return None
    if claim is IdClaim.HANDLED:
        logger.info("message %s was already handled; not handling it again", message_id)
        return _DUPLICATE
    return _IN_PROGRESS


@attrs.define
class _Dispatch:
    """A request that passed every check: which handler to call and how to answer after."""

    handler: _Registered
    received: ReceivedNotification
    context: MessageContext

    @property
    def message_id(self) -> str | None:
        return self.received.id

    def call(self) -> Any:
        notification = self.received.notification
        if self.handler.wants_context:
            return self.handler.func(notification, self.context)
        return self.handler.func(notification)

    def _answer(self, result: Any) -> Response:
        if result is None:
            wire = self.received.notification.notification_type.value
            return response(self.handler.status or (202 if wire in _ACCEPTED_TYPES else 200))
        if isinstance(result, Reply):
            return reply_response(result)
        if type(result) is int and 200 <= result <= 599:
            return response(result)
        msg = f"returned {result!r}; expected None, an int status from 200 to 599 or a Reply"
        raise TypeError(msg)

    def finish(self, result: Any) -> Response:
        """Turn the handler's result into the answer."""
        try:
            return self._answer(result)
        except Exception as exc:  # a nonsense result, or a Reply body that is not JSON
            return self.fail(exc)

    def fail(self, exc: BaseException) -> Response:
        """Log the handler's exception and answer 500 without revealing it."""
        logger.error(
            "handler for %s (message %s) failed",
            self.received.notification.notification_type.value,
            self.context.id,
            exc_info=exc,
        )
        return error(500, "handler_error", "the handler failed; see the client's log")


def _store_failed(action: str, message_id: str) -> None:
    logger.exception("could not %s message id %s", action, message_id)


@attrs.define(init=False, repr=False)
class NotificationRouter:
    """Verifies received notifications and dispatches them to handlers per type.

    Answers, in the order they are decided:

    * not ``POST``: 405 with ``Allow: POST``;
    * more than ``limits.max_headers`` headers, or more than ``limits.max_header_bytes``
      of them: 431;
    * body over ``max_body_bytes`` (adapters check ``Content-Length`` before reading): 413;
    * signature or timestamp missing, malformed or wrong (when ``secrets`` are set), or
      more than ``limits.max_signatures`` signature entries: 401;
    * body is not a valid notification, or nests deeper than ``limits.max_depth``: 400,
      naming the path and the problem;
    * unknown or unhandled ``notification_type``: ``unknown_type_status`` (400);
    * ``webhook-id`` already handled: 200, the handler is not run again;
    * ``webhook-id`` being handled right now by another request (in any process sharing
      the store): 503, ``Retry-After: 1``; the id store failing: 503 as well;
    * the handler raised: 500, logged to the ``flnotify`` logger, no details in the body;
    * the handler returned ``None``: 202 for round and test starts, 200 for the others;
    * the handler returned an ``int`` or a [`Reply`][flnotify.receiving.Reply]: that status
      (and body).

    Error bodies are JSON ``{"error": "<code>", "detail": "<text>"}``; a bug inside the
    router itself is still answered with its own JSON 500, never the server's page.

    Deduplication: before the handler runs, the message id is claimed in ``dedup``
    atomically; a 2xx answer marks it handled, anything else releases the claim so the
    server's retry runs the handler again. Handlers should answer fast and start long
    work (a training round) in the background.

    Args:
        secrets: The ``whsec_...`` secret(s) requests must be signed with; ``None``
            accepts unsigned requests (anyone who can reach the port can then send).
        tolerance: How many seconds a ``webhook-timestamp`` may lie from ``clock()``.
        codec: Decodes bodies; defaults to the six training notifications.
        dedup: Where message ids are claimed ([`IdStore`][flnotify.receiving.IdStore], also
            [`AsyncIdStore`][flnotify.receiving.AsyncIdStore]); the default
            [`InMemoryIdStore`][flnotify.receiving.InMemoryIdStore] serves one process only;
            ``None`` turns deduplication off.
        max_body_bytes: Larger request bodies are answered 413 (overrides ``limits``).
        limits: The request limits; see [`ReceivingLimits`][flnotify.receiving.ReceivingLimits].
        unknown_type_status: The status for unknown or unhandled notification types.
        clock: The wall clock for timestamp checks; inject one in tests.
        handlers: Initial handlers, ``{type or class or wire string: handler}``.
        sync_handlers_in_thread: In `ahandle`, run sync handlers in a worker thread
            (default) so they cannot block the event loop; ``False`` calls them directly.

    Raises:
        ConfigurationError: A secret is malformed or a limit is out of range.
    """

    codec: Codec
    dedup: IdStore | None
    limits: ReceivingLimits
    unknown_type_status: int
    sync_handlers_in_thread: bool
    _verifier: Verifier | None
    _handlers: dict[str, _Registered]

    def __init__(
        self,
        *,
        secrets: str | Sequence[str] | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        codec: Codec | None = None,
        dedup: IdStore | None = _NO_DEDUP,
        max_body_bytes: int | None = None,
        limits: ReceivingLimits | None = None,
        unknown_type_status: int = 400,
        clock: Callable[[], float] = time.time,
        handlers: Mapping[NotificationKind | type[Notification[Any]] | str, Handler] | None = None,
        sync_handlers_in_thread: bool = True,
    ) -> None:
        limits = ReceivingLimits() if limits is None else limits
        if max_body_bytes is not None:
            if type(max_body_bytes) is not int or max_body_bytes <= 0:
                msg = f"max_body_bytes must be a positive integer, not {max_body_bytes!r}"
                raise ConfigurationError(msg)
            limits = attrs.evolve(limits, max_body_bytes=max_body_bytes)
        try:
            valid_status(None, None, unknown_type_status)
        except ValueError as exc:
            msg = f"unknown_type_status: {exc}"
            raise ConfigurationError(msg) from None
        if dedup is not None and dedup is not _NO_DEDUP and not isinstance(dedup, IdStore):
            msg = f"dedup must be an IdStore (claim/complete/release), not {type(dedup).__name__}"
            raise ConfigurationError(msg)
        self.__attrs_init__(
            codec=Codec() if codec is None else codec,
            dedup=InMemoryIdStore() if dedup is _NO_DEDUP else dedup,
            limits=limits,
            unknown_type_status=unknown_type_status,
            sync_handlers_in_thread=sync_handlers_in_thread,
            verifier=None
            if secrets is None
            else Verifier(
                secrets, tolerance=tolerance, clock=clock, max_signatures=limits.max_signatures
            ),
            handlers={},
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

    @property
    def max_body_bytes(self) -> int:
        """Larger request bodies are answered 413 (``limits.max_body_bytes``)."""
        return self.limits.max_body_bytes

    # ---------------------------------------------------------------- registration

    def _wire_type(self, kind: NotificationKind | type[Notification[Any]] | str) -> str:
        """The wire string of ``kind``, which must be known to the codec's registry."""
        if isinstance(kind, type) and issubclass(kind, Notification):
            wire = getattr(kind.notification_type, "value", None)
        else:
            wire = kind if isinstance(kind, str) else getattr(kind, "value", None)
        if not isinstance(wire, str):
            msg = f"cannot route on {kind!r}: expected a notification type, class or wire string"
            raise ConfigurationError(msg)
        registry = self.codec.registry
        if wire not in registry:
            known = sorted(cls.notification_type.value for cls in registry)
            close = difflib.get_close_matches(wire.upper(), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = (
                f"{wire!r} is not a known notification type{hint} "
                f"(known: {', '.join(known)}; register new classes with the codec's registry)"
            )
            raise ConfigurationError(msg)
        if isinstance(kind, type) and registry.get(wire) is not kind:
            msg = f"{kind.__qualname__} is not the class registered for {wire!r}"
            raise ConfigurationError(msg)
        return wire

    @overload
    def add_handler(
        self,
        kind: type[N],
        handler: Callable[[N], object] | Callable[[N, MessageContext], object],
        *,
        status: int | None = None,
    ) -> None: ...

    @overload
    def add_handler(
        self, kind: NotificationKind | str, handler: Handler, *, status: int | None = None
    ) -> None: ...

    def add_handler(
        self,
        kind: NotificationKind | type[Notification[Any]] | str,
        handler: Handler,
        *,
        status: int | None = None,
    ) -> None:
        """Route notifications of ``kind`` to ``handler``.

        Args:
            kind: A notification class (then the handler's type is checked), a
                [`NotificationType`][flnotify.NotificationType] or an exact wire string.
            handler: ``handler(notification)`` or ``handler(notification, context)``,
                sync or async.
            status: The answer when the handler returns ``None`` (default: 202 for round
                and test starts, 200 otherwise).

        Raises:
            ConfigurationError: ``kind`` is not a notification type the codec knows (the
                message lists the known ones), already has a handler, or ``handler`` is
                not callable.
        """
        wire = self._wire_type(kind)
        if not callable(handler):
            msg = f"the handler for {wire!r} is not callable"
            raise ConfigurationError(msg)
        if status is not None:
            try:
                valid_status(None, None, status)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        if wire in self._handlers:
            msg = f"{wire!r} already has a handler"
            raise ConfigurationError(msg)
        self._handlers[wire] = _Registered(
            handler, _is_async(handler), _wants_context(handler), status
        )

    @overload
    def on(
        self, kind: type[N], /, *kinds: type[N], status: int | None = None
    ) -> HandlerDecorator[N]: ...

    @overload
    def on(
        self,
        kind: NotificationKind | str,
        /,
        *kinds: NotificationKind | type[Notification[Any]] | str,
        status: int | None = None,
    ) -> Callable[[HandlerT], HandlerT]: ...

    def on(
        self,
        *kinds: NotificationKind | type[Notification[Any]] | str,
        status: int | None = None,
    ) -> Any:
        """Decorator form of [`add_handler`][flnotify.receiving.NotificationRouter.add_handler].

        With notification classes only, a type checker makes sure the handler takes them
        (put a type or wire string first to register a mix, unchecked):

            @router.on(TrainingRoundStartNotification)
            async def start_round(notification: TrainingRoundStartNotification) -> None: ...
        """
        if not kinds:
            msg = "on() needs at least one notification type"
            raise ConfigurationError(msg)
        wires = [self._wire_type(kind) for kind in kinds]  # refuse before registering any

        def register(handler: HandlerT) -> HandlerT:
            for wire in wires:
                self.add_handler(wire, handler, status=status)
            return handler

        return register

    # ---------------------------------------------------------------- the core

    def _early(self, method: str) -> Response | None:
        """The answer decided before anything else is looked at (the method), if any."""
        if method.upper() != "POST":
            return error(
                405, "method_not_allowed", f"{method} is not allowed; use POST", ("allow", "POST")
            )
        return None

    def _precheck(
        self, method: str, headers: RawHeaders
    ) -> tuple[Response | None, list[tuple[str, str]], int]:
        """For adapters, before the body is read: an early answer, headers, Content-Length.

        The early answer is ``None`` when the request may go on; the length is -1 when
        the request has no ``Content-Length``.
        """
        early = self._early(method)
        if early is not None:
            return early, [], -1
        try:
            pairs = read_headers(headers, self.limits)
        except RequestTooLargeError as exc:
            return error(431, "headers_too_large", str(exc)), [], -1
        raw = next((v for k, v in pairs if k == "content-length"), None)
        if raw is None:
            return None, pairs, -1
        text = raw.strip()
        if not text.isascii() or not text.isdigit():
            return error(400, "bad_request", "invalid Content-Length header"), pairs, -1
        length = int(text)
        if length > self.limits.max_body_bytes:
            return too_large(self.limits.max_body_bytes), pairs, length
        return None, pairs, length

    def _prepare(self, method: str, headers: RawHeaders, body: bytes) -> Response | _Dispatch:
        """Everything up to the id claim; the answer, or what to call."""
        early = self._early(method)
        if early is not None:
            return early
        try:
            received = inspect_request(
                headers, body, verifier=self._verifier, codec=self.codec, limits=self.limits
            )
        except (RequestTooLargeError, VerificationError, DecodeError) as exc:
            return _refusal(exc, self.unknown_type_status, self.limits)
        wire = received.notification.notification_type.value
        handler = self._handlers.get(wire)
        if handler is None:
            return error(
                self.unknown_type_status, "unhandled_notification_type", f"no handler for {wire!r}"
            )
        context = MessageContext(
            received.id, received.timestamp, received.verified, received.headers
        )
        return _Dispatch(handler, received, context)

    def _safe_prepare(self, method: str, headers: RawHeaders, body: bytes) -> Response | _Dispatch:
        try:
            return self._prepare(method, headers, body)
        except Exception:
            logger.exception("the router failed on a request")
            return INTERNAL_ERROR

    def handle(self, method: str, headers: RawHeaders, body: bytes) -> Response:
        """Answer one request, calling the handler in this thread (for WSGI and tests).

        An async handler is run with `asyncio.run`; inside a running event loop that
        is impossible and answers 500 (use
        [`ahandle`][flnotify.receiving.NotificationRouter.ahandle]).

        Args:
            method: The HTTP method.
            headers: A mapping or ``(name, value)`` pairs (``str`` or ``bytes``).
            body: The whole request body.
        """
        step = self._safe_prepare(method, headers, body)
        if isinstance(step, Response):
            return step
        store, message_id = self.dedup, step.message_id
        if store is None or message_id is None:
            return self._run(step)
        try:
            refused = _claim_answer(store.claim(message_id), message_id)
        except Exception:
            _store_failed("claim", message_id)
            return _STORE_DOWN
        if refused is not None:
            return refused
        answer: Response | None = None
        try:
            answer = self._run(step)
            return answer
        finally:
            try:
                if answer is not None and 200 <= answer.status < 300:
                    store.complete(message_id)
                else:
                    store.release(message_id)
            except Exception:
                _store_failed("record", message_id)

    def _run(self, step: _Dispatch) -> Response:
        try:
            result = step.call()
            if inspect.isawaitable(result):
                result = _resolve_sync(result)
        except Exception as exc:
            return step.fail(exc)
        return step.finish(result)

    async def ahandle(self, method: str, headers: RawHeaders, body: bytes) -> Response:
        """Answer one request; async handlers are awaited, sync ones run in a thread.

        See [`handle`][flnotify.receiving.NotificationRouter.handle] for the arguments;
        ``sync_handlers_in_thread=False`` calls sync handlers directly on the event loop.
        An [`AsyncIdStore`][flnotify.receiving.AsyncIdStore] is awaited; a sync-only
        store is called in a worker thread.
        """
        step = self._safe_prepare(method, headers, body)
        if isinstance(step, Response):
            return step
        store, message_id = self.dedup, step.message_id
        if store is None or message_id is None:
            return await self._arun(step)
        try:
            if isinstance(store, AsyncIdStore):
                claim = await store.aclaim(message_id)
            else:
                claim = await asyncio.to_thread(store.claim, message_id)
        except Exception:
            _store_failed("claim", message_id)
            return _STORE_DOWN
        refused = _claim_answer(claim, message_id)
        if refused is not None:
            return refused
        answer: Response | None = None
        try:
            answer = await self._arun(step)
            return answer
        finally:
            # also on cancellation: a shielded release, so the id is not blocked for a lease
            await asyncio.shield(self._arecord(store, message_id, answer))

    async def _arecord(self, store: IdStore, message_id: str, answer: Response | None) -> None:
        done = answer is not None and 200 <= answer.status < 300
        try:
            if isinstance(store, AsyncIdStore):
                await (store.acomplete(message_id) if done else store.arelease(message_id))
            else:
                await asyncio.to_thread(store.complete if done else store.release, message_id)
        except Exception:
            _store_failed("record", message_id)

    async def _arun(self, step: _Dispatch) -> Response:
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
        """The router as an ASGI 3 application; see [`asgi_app`][flnotify.receiving.asgi_app]."""
        return asgi_app(self)

    def wsgi_app(self) -> WSGIApplication:
        """The router as a WSGI application; see [`wsgi_app`][flnotify.receiving.wsgi_app]."""
        return wsgi_app(self)
