"""The delivery core: one attempt, from endpoint check to outcome, without any I/O.

Every driver (the in-process [`Notifier`][flnotify.Notifier], Celery workers, the outbox
and mailbox dispatchers) runs a receiver's attempts through one
[`flow`][flnotify._attempt.Core.flow] per receiver of a send: a generator that owns the order
of the steps and yields only the I/O it needs done (the model is httpx's ``auth_flow``)::

    Resolve(host, port)  -> the driver resolves and checks, and sends the addresses back
                            (or throws what the check raised)
    Post(headers, address) -> the driver POSTs and sends the response back (or throws
                            what the transport raised)
    Wait(seconds)        -> the driver sleeps (or defers the receiver to a later run),
                            then resumes the flow

and returns the receiver's one final [`Delivery`][flnotify.Delivery]. Before every attempt,
retries included, the endpoint is checked again (URL, address guard, circuit breaker). The
steps the flow is made of (``check``, ``host_checked``, ``request``, ``judge``) and ``fail``
(deadline passed, driver could not go on) are methods of the core too, so a driver whose
answers arrive otherwise (a mailbox's acknowledgements) judges them the same way.

Each step catches whatever a component raises (the endpoint policy, a resolver, the signer,
the transport, the retry policy) and turns it into a FAILED [`Delivery`][flnotify.Delivery]
with a typed error, so every receiver ends with exactly one outcome. Only cancellation
(``BaseException``) passes through. The core owns the headers of an attempt, the judgement
of its answer, the construction of each ``Delivery`` and the calls of the hooks.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, cast

import attrs

from ._exceptions import (
    BlockedAddressError,
    CircuitOpenError,
    ConfigurationError,
    EndpointError,
    FlnotifyError,
    InternalError,
    InvalidURLError,
    TransportError,
    TransportErrorKind,
)
from ._hooks import AttemptEnded, AttemptStarted, HeaderHook, HookSet
from ._notification import Notification
from ._report import Delivery
from ._retry import RetryPolicy
from ._types import HttpResponse, Outcome, ReceiverLike
from .endpoints import EndpointPolicy
from .health import CircuitBreaker, healthy_answer
from .signing import Signer
from .transports._base import header_lines

__all__ = [
    "Core",
    "Course",
    "Flow",
    "Post",
    "Resolve",
    "Step",
    "Wait",
    "attempt_headers",
    "build_delivery",
    "internal_error",
    "message_ids_for",
    "new_send_id",
    "refused_endpoint",
]

logger = logging.getLogger("flnotify")


def message_ids_for(
    notification: Notification[Any], message_ids: Sequence[str] | None
) -> Sequence[str]:
    """One ``webhook-id`` per receiver: the given ones (checked), or new unique ones.

    Raises:
        ConfigurationError: ``message_ids`` does not have one string id per receiver.
    """
    n = len(notification.receivers)
    if message_ids is None:  # one random 96-bit prefix per send, then the receiver's index
        prefix = "msg_" + secrets.token_hex(12)
        return [f"{prefix}_{i:x}" for i in range(n)]
    if len(message_ids) != n:
        msg = f"{len(message_ids)} message ids for {n} receivers"
        raise ConfigurationError(msg)
    for message_id in message_ids:
        if not isinstance(message_id, str) or not message_id:
            msg = f"message id {message_id!r} is not a non-empty string"
            raise ConfigurationError(msg)
    return message_ids


def new_send_id() -> str:
    """A fresh id for one send (all receivers of one notification sent together)."""
    return "snd_" + secrets.token_hex(12)


def refused_endpoint(exc: EndpointError | TransportError, url: str) -> TransportError:
    """The failure of a receiver whose endpoint was refused before any POST.

    An invalid URL becomes an [`InvalidURLError`][flnotify.errors.InvalidURLError], a guarded
    address a ``TransportError`` of kind ``BLOCKED`` (both never retried); a failed name
    resolution of the guard is kept as it is. The policy's error stays as ``__cause__``.
    """
    if isinstance(exc, TransportError):
        return exc
    error: TransportError
    if isinstance(exc, BlockedAddressError):
        error = TransportError(str(exc), url=url, kind=TransportErrorKind.BLOCKED)
    else:
        error = InvalidURLError(str(exc), url=url)
    error.__cause__ = exc
    return error


def internal_error(what: str, exc: BaseException, url: str = "") -> InternalError:
    """An [`InternalError`][flnotify.errors.InternalError] saying which component broke, and how."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    error = InternalError(f"{what} raised {detail}", url=url)
    error.__cause__ = exc
    return error


def attempt_headers(
    message_id: str,
    timestamp: int,
    body: bytes,
    receiver: ReceiverLike,
    signer: Signer | None,
    user_agent: str,
) -> dict[str, str]:
    """The headers of one attempt: the only place they are made.

    JSON, ``User-Agent``, ``webhook-id`` (the same on every attempt), ``webhook-timestamp``
    (the attempt's time) and, when signing, ``webhook-signature``. The core calls it for
    each POST; the mailbox app for each offer of a message to a polling client, so a
    fetched notification carries exactly what a push would.
    """
    headers = {
        "content-type": "application/json",
        "user-agent": user_agent,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
    }
    if signer is not None:
        headers.update(signer.headers(message_id, timestamp, body, receiver))
    return headers


@attrs.frozen(slots=True)
class Resolve:
    """Step of a flow: resolve ``host`` and check its addresses (the address guard).

    Send back the checked addresses, best first; throw what the check raised.
    """

    host: str
    port: int


@attrs.frozen(slots=True)
class Post:
    """Step of a flow: POST the send's body with ``headers``; send back the response.

    ``address`` is where to connect: the guard's checked addresses, tried in order
    (``None``: the URL's host).
    Throw what the transport raised.
    """

    headers: dict[str, str]
    address: tuple[str, ...] | None


@attrs.frozen(slots=True)
class Wait:
    """Step of a flow: the next attempt comes after ``seconds``; resume the flow then."""

    seconds: float


Step = Resolve | Post | Wait
Flow = Generator[Step, Any, "Delivery"]
"""A receiver's attempts: yields [`Step`][flnotify._attempt.Step]s, returns its delivery."""


class Course:
    """One receiver's way through a send: what the core needs between its steps."""

    __slots__ = (
        "address",
        "attempts",
        "begun",
        "flow",
        "in_flight",
        "index",
        "last",
        "message_id",
        "receiver",
        "started",
        "url",
    )

    def __init__(
        self,
        index: int,
        receiver: ReceiverLike,
        message_id: str,
        attempts: int = 0,
        started: float | None = None,
    ) -> None:
        self.index = index
        self.receiver = receiver
        self.message_id = message_id
        self.url = ""
        self.attempts = attempts  # attempts made, earlier runs (Celery retries) included
        self.started = started  # driver clock at the first attempt
        self.last: HttpResponse | None = None  # last answer, while waiting for a retry
        self.begun = 0.0  # driver clock at the start of the current attempt
        self.in_flight = False  # hooks were told an attempt started and not yet its end
        # the checked addresses to connect to, in order (guard on a host name)
        self.address: tuple[str, ...] | None = None
        self.flow: Flow | None = None  # the driver's flow of this receiver, while it runs


class Core:
    """The steps of every attempt of one send; see the module docstring.

    Args:
        notification: What is sent.
        body: Its encoded bytes (encoded once for the whole send).
        retry: Judges each answer or error.
        signer: Signs each attempt, if set.
        policy: Which endpoints may be POSTed to.
        user_agent: The ``User-Agent`` header.
        clock: The driver's clock (seconds) for ``elapsed`` and attempt durations.
        wall_clock: Epoch seconds, for ``webhook-timestamp`` and ``Retry-After`` dates.
        rng: Jitter in [0, 1).
        hooks: Observers of attempts and outcomes.
        breaker: Skips endpoints that keep failing, if set.
        send_id: The send's id, on every delivery (for failure policies).
        send_size: The send's receivers in all (for failure policies).
        pins: Whether the driver's transport can connect to a given address
            (``connect_to=``); if not, a guarded host name is refused rather than
            resolved a second time by the transport.
    """

    __slots__ = (
        "_breaker",
        "_clock",
        "_extra",
        "_hooks",
        "_pins",
        "_plain_retry",
        "_policy",
        "_retry",
        "_rng",
        "_signer",
        "_tell",
        "_user_agent",
        "_wall_clock",
        "_watch",
        "body",
        "notification",
        "send_id",
        "send_size",
    )

    def __init__(
        self,
        notification: Notification[Any],
        body: bytes,
        *,
        retry: RetryPolicy,
        signer: Signer | None,
        policy: EndpointPolicy,
        user_agent: str,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        rng: Callable[[], float],
        hooks: HookSet,
        breaker: CircuitBreaker | None = None,
        send_id: str = "",
        send_size: int = 0,
        pins: bool = True,
    ) -> None:
        self.notification = notification
        self.body = body
        self._retry = retry
        self._signer = signer
        self._policy = policy
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng
        self._hooks = hooks
        self._pins = pins
        self._tell = bool(hooks.hooks)  # any hook at all
        self._watch = hooks.attempts  # any hook that watches attempts
        # hooks that add headers to attempts (trace context): their optional method
        self._extra = tuple(h.attempt_headers for h in hooks.hooks if isinstance(h, HeaderHook))
        self._user_agent = user_agent
        self._breaker = breaker
        self.send_id = send_id
        self.send_size = send_size
        self._plain_retry = type(retry) is RetryPolicy  # its decide() is known: 2xx is final

    # -- the fast lane -------------------------------------------------------------------

    @property
    def plain(self) -> bool:
        """Whether a 2xx ends a receiver with nothing to decide or tell per attempt.

        The plain retry policy, no hook that watches attempts or adds headers: a driver
        may then run first attempts its own way and call
        [`delivered`][flnotify._attempt.Core.delivered] for each 2xx.
        """
        return self._plain_retry and not self._watch and not self._extra

    def shared_headers(self) -> dict[str, str]:
        """The headers every first attempt of a driven send shares (sent once per send)."""
        return {"content-type": "application/json", "user-agent": self._user_agent}

    def own_lines(self) -> Callable[[str, str, ReceiverLike], str]:
        """``own(message_id, timestamp, receiver)``: a first attempt's own header lines.

        ``webhook-id``, ``webhook-timestamp`` and the signature, as
        [`request`][flnotify._attempt.Core.request] makes them, as checked ``Name: value``
        lines, each ending in CRLF (a driving transport writes them as they are); the
        signer's per-send work (the body, its keys' state) is done once, here. It raises
        ``ValueError`` for what it cannot write as it is (a message id with a control
        character, a signer's header a transport owns): the general path takes that one.
        """
        signer, body = self._signer, self.body
        shared = tuple(self.shared_headers())
        if signer is not None and type(signer).headers is not Signer.headers:
            # a signer with headers of its own: as in request(), each line checked
            def signed(message_id: str, timestamp: str, receiver: ReceiverLike) -> str:
                headers = {"webhook-id": message_id, "webhook-timestamp": timestamp}
                headers.update(signer.headers(message_id, int(timestamp), body, receiver))
                return header_lines(headers.items(), shared)

            return signed
        sign = None if signer is None else signer.prepared(body)

        def own(message_id: str, timestamp: str, receiver: ReceiverLike) -> str:
            if not message_id.isprintable():  # a given id with a control character
                raise ValueError(message_id)
            signature = None if sign is None else sign(message_id, timestamp, receiver)
            if signature is None:
                return f"webhook-id: {message_id}\r\nwebhook-timestamp: {timestamp}\r\n"
            return (
                f"webhook-id: {message_id}\r\nwebhook-timestamp: {timestamp}\r\n"
                f"webhook-signature: {signature}\r\n"
            )

        return own

    def delivered(
        self, receiver: ReceiverLike, message_id: str, status: int, started: float
    ) -> Delivery:
        """The DELIVERED outcome of a first attempt the driver ran (see ``plain``)."""
        delivery = Delivery(  # positional: the fast lane makes one per receiver
            receiver,
            self.notification,
            Outcome.DELIVERED,
            message_id,
            1,  # attempts
            self._clock() - started,  # elapsed
            status,  # status_code
            None,  # error
            None,  # response
            self.send_id,
            self.send_size,
        )
        if self._tell:
            self._hooks.outcome(delivery)
        return delivery

    # -- the flow ------------------------------------------------------------------------

    def flow(self, course: Course) -> Flow:
        """The receiver's attempts, from the endpoint check to its final delivery.

        The driver does the I/O of each yielded step (see the module docstring); whatever
        it sends back or throws in is judged here, so every driver takes the same steps
        in the same order. Only cancellation (``BaseException``) passes through.
        """
        while True:
            checked = self.check(course)
            if type(checked) is tuple:
                try:
                    addresses = yield Resolve(*checked)
                except Exception as exc:
                    checked = self.host_checked(course, exc)
                else:
                    checked = self.host_checked(course, None, addresses)
            if checked is not None:
                return cast(Delivery, checked)
            headers = self.request(course)
            if type(headers) is not dict:
                return cast(Delivery, headers)
            try:
                response = yield Post(headers, course.address)
            except Exception as exc:
                step = self.judge(course, exc=exc)
            else:
                step = self.judge(course, response)
            if type(step) is not float:
                return cast(Delivery, step)
            yield Wait(step)

    # -- before each attempt ---------------------------------------------------------------

    def check(self, course: Course) -> Delivery | tuple[str, int] | None:
        """Check the receiver's endpoint without I/O.

        Returns:
            A FAILED delivery if it is refused; ``(host, port)`` if the address guard must
            check the resolved address (the driver resolves, then calls
            [`host_checked`][flnotify._attempt.Core.host_checked]); ``None`` if it may be
            POSTed to.
        """
        try:
            course.address = None
            url = course.url = course.receiver.message_endpoint
            policy = self._policy
            endpoint = policy.check_url(url) if policy.block_private else None
            if endpoint is None:
                policy.validate_url(url)
            if self._breaker is not None:
                refused = self._admit(course)
                if refused is not None:
                    return refused
            if endpoint is not None:
                return (endpoint.host, endpoint.port)
        except (EndpointError, TransportError) as exc:
            return self.finish(
                course,
                Outcome.FAILED,
                response=course.last,
                error=refused_endpoint(exc, course.url),
            )
        except Exception as exc:
            error = internal_error("checking the endpoint", exc, course.url)
            return self.finish(course, Outcome.FAILED, error=error)
        return None

    def host_checked(
        self, course: Course, exc: BaseException | None, addresses: object = ()
    ) -> Delivery | None:
        """The result of the driver's resolved-address check: refused, or ``None`` (go on).

        Args:
            course: The receiver.
            exc: What the check raised, if it did.
            addresses: What it returned: the checked addresses, best first. They become
                ``course.address``, where the transport must connect, trying them in order
                (no second lookup of the name); an IP literal needs no pinning.
        """
        if exc is None:
            try:
                host = self._policy.check_url(course.url).host
                checked = tuple(cast(Sequence[object], addresses))
                if not checked or not all(isinstance(a, str) and a for a in checked):
                    msg = f"the check returned {addresses!r}, not a list of addresses"
                    raise TypeError(msg)
                first = cast(str, checked[0])
            except Exception as failure:
                exc = failure
            else:
                if first == host:
                    return None  # an IP literal: the transport connects to it as it is
                if not self._pins:
                    exc = TransportError(
                        "the address guard is on but the transport cannot connect to the"
                        f" checked address {first} (it would look {host!r} up again)",
                        url=course.url,
                        kind=TransportErrorKind.BLOCKED,
                    )
                else:
                    course.address = cast(tuple[str, ...], checked)
                    return None
        if isinstance(exc, (EndpointError, TransportError)):
            return self.finish(
                course,
                Outcome.FAILED,
                response=course.last,
                error=refused_endpoint(exc, course.url),
            )
        error = internal_error("checking the resolved address", exc, course.url)
        return self.finish(course, Outcome.FAILED, error=error)

    # -- one attempt -----------------------------------------------------------------------

    def request(self, course: Course) -> dict[str, str] | Delivery:
        """Start the next attempt: its headers, or a FAILED delivery if they cannot be made.

        The headers are the core's: JSON, ``User-Agent``, ``webhook-id`` (the same on
        every attempt), ``webhook-timestamp`` (taken now) and the signature if signing. A
        hook may add others (a trace context) with an optional method
        ``attempt_headers(details: AttemptStarted) -> Mapping[str, str] | None``, called
        after ``on_attempt_started`` (the ``HeaderHook`` capability);
        it never replaces one of the core's.
        """
        course.attempts += 1
        now = self._clock()
        if course.started is None:
            course.started = now
        course.begun = now
        message_id = course.message_id
        try:
            headers = attempt_headers(
                message_id,
                int(self._wall_clock()),
                self.body,
                course.receiver,
                self._signer,
                self._user_agent,
            )
        except Exception as exc:
            course.attempts -= 1  # nothing was sent
            error = internal_error("building the headers", exc, course.url)
            return self.finish(course, Outcome.FAILED, error=error)
        if self._watch or self._extra:
            details = self._started(course)
            if self._watch:
                course.in_flight = True
                self._hooks.attempt_started(details)
            for add in self._extra:
                self._add_headers(headers, add, details)
        return headers

    def _add_headers(
        self,
        headers: dict[str, str],
        add: Callable[[AttemptStarted], Mapping[str, str] | None],
        details: AttemptStarted,
    ) -> None:
        """A hook's extra headers; one that raises or returns junk is logged and ignored."""
        try:
            extra = add(details)
            if extra:
                for name, value in extra.items():
                    if type(name) is str and type(value) is str:
                        headers.setdefault(name.lower(), value)  # the core's stay
        except Exception:
            hook = type(getattr(add, "__self__", add)).__name__
            logger.exception("The delivery hook %s.attempt_headers raised.", hook)

    def judge(
        self,
        course: Course,
        response: HttpResponse | None = None,
        exc: BaseException | None = None,
    ) -> float | Delivery:
        """Judge the attempt's answer or exception.

        Returns:
            Seconds to wait before the next attempt, or the receiver's final delivery.
        """
        if (
            exc is None
            and type(response) is HttpResponse
            and type(response.status_code) is int
            and 200 <= response.status_code < 300
            and self._plain_retry
            and not self._watch
        ):  # the hot path of a fan-out: delivered, nothing else to decide or tell
            if self._breaker is not None:
                self._note_health(course, response.status_code, None)
            return self.finish(course, Outcome.DELIVERED, response=response)
        error: TransportError | None = None
        if exc is not None:
            response = None
            if isinstance(exc, TransportError):
                error = exc
            else:
                error = internal_error("the transport", exc, course.url)
        elif not isinstance(response, HttpResponse) or type(response.status_code) is not int:
            error = internal_error(
                "the transport",
                TypeError(f"it returned {type(response).__name__}, not an HttpResponse"),
                course.url,
            )
            response = None
        outcome: Outcome | None
        delay = 0.0
        refusal: FlnotifyError | None = None  # an answer naming the sending side's mistake
        try:
            decision = self._retry.decide(
                course.attempts,
                response=response,
                error=error,
                rng=self._rng,
                now=self._wall_clock,
            )
            outcome, delay, refusal = decision.outcome, decision.delay, decision.error
            if outcome is None and not (isinstance(delay, (int, float)) and 0 <= delay < math.inf):
                msg = f"retry delay {delay!r} is not a finite number of seconds >= 0"
                raise ValueError(msg)
            if error is not None and outcome is not Outcome.FAILED and outcome is not None:
                outcome = Outcome.FAILED  # no answer came back: never delivered or rejected
        except Exception as failure:
            outcome = Outcome.FAILED
            error = internal_error("the retry policy", failure, course.url)
        opened: float | None = None  # the circuit this attempt opened: no retry into it
        if self._breaker is not None:
            self._note_health(course, None if response is None else response.status_code, error)
            if outcome is None:
                opened = self._open_until(course)
        if self._watch:
            course.in_flight = False
            self._hooks.attempt_ended(
                AttemptEnded(
                    self._started(course),
                    self._clock() - course.begun,
                    None if response is None else response.status_code,
                    error,
                    delay if outcome is None and opened is None else None,
                )
            )
        if opened is not None:
            return self._refuse(course, opened, last=response)
        if outcome is None:
            course.last = response
            return float(delay)
        return self.finish(course, outcome, response=response, error=error or refusal)

    def observed(self, course: Course) -> None:
        """Tell the hooks an attempt started that the driver did not make itself.

        A polling client's fetch is such an attempt: its answer arrives as an
        acknowledgement, which the driver then hands to [`judge`][flnotify._attempt.Core.judge].
        """
        if self._watch:
            course.begun = self._clock()
            course.in_flight = True
            self._hooks.attempt_started(self._started(course))

    # -- endpoint health -------------------------------------------------------------------

    def _admit(self, course: Course) -> Delivery | None:
        """A FAILED delivery if the endpoint's breaker is open (no attempt), else ``None``."""
        until = self._open_until(course)
        return None if until is None else self._refuse(course, until)

    def _open_until(self, course: Course) -> float | None:
        """Until when the endpoint's circuit is open (wall clock), or ``None`` if closed."""
        breaker = self._breaker
        assert breaker is not None  # noqa: S101 - only called with a breaker
        try:
            return breaker.admit(course.url, self._wall_clock())
        except Exception:  # a broken health store never costs a receiver its attempt
            logger.exception("The circuit breaker's store failed; %s is let through.", course.url)
            return None

    def _refuse(self, course: Course, until: float, last: HttpResponse | None = None) -> Delivery:
        """The FAILED delivery of a receiver whose endpoint's circuit is open."""
        breaker = self._breaker
        assert breaker is not None  # noqa: S101 - only called with a breaker
        now = self._wall_clock()
        error = CircuitOpenError(
            f"endpoint skipped: it failed {breaker.failure_threshold} or more attempts in a "
            f"row; its circuit is open for {max(0.0, until - now):.0f} s more",
            url=course.url,
        )
        return self.finish(course, Outcome.FAILED, response=last, error=error)

    def _note_health(
        self, course: Course, status: int | None, error: TransportError | None
    ) -> None:
        """Tell the breaker how the attempt went (a broken component says nothing of it)."""
        if error is not None and error.kind is TransportErrorKind.INTERNAL:
            return
        breaker = self._breaker
        assert breaker is not None  # noqa: S101 - only called with a breaker
        healthy = error is None and healthy_answer(status, self._retry.retry_statuses)
        try:
            breaker.record(course.url, healthy, self._wall_clock())
        except Exception:
            logger.exception("The circuit breaker's store failed to record %s.", course.url)

    # -- the end ---------------------------------------------------------------------------

    def cut(self, course: Course, error: FlnotifyError) -> None:
        """End for the hooks an attempt they were told of that ends now without an answer."""
        if course.in_flight:
            course.in_flight = False
            self._hooks.attempt_ended(
                AttemptEnded(self._started(course), self._clock() - course.begun, None, error, None)
            )

    def fail(self, course: Course, error: FlnotifyError) -> Delivery:
        """End a receiver now (deadline passed, driver could not go on), with its last answer.

        An attempt the hooks were told of and that is cut now ends for them too, with
        ``error`` and no retry.
        """
        self.cut(course, error)
        return self.finish(course, Outcome.FAILED, response=course.last, error=error)

    def finish(
        self,
        course: Course,
        outcome: Outcome,
        *,
        response: HttpResponse | None = None,
        error: FlnotifyError | None = None,
    ) -> Delivery:
        """Build the receiver's one [`Delivery`][flnotify.Delivery] and tell the hooks."""
        started = course.started
        delivery = build_delivery(
            self.notification,
            course,
            outcome,
            0.0 if started is None else self._clock() - started,
            None if response is None else response.status_code,
            error,
            # kept to diagnose what went wrong; a 2xx answer's body and headers are
            # dropped so that a report of 100,000 deliveries stays small
            None if outcome is Outcome.DELIVERED or response is None else _kept(response),
            send_id=self.send_id,
            send_size=self.send_size,
        )
        if self._tell:
            self._hooks.outcome(delivery)
        return delivery

    def _started(self, course: Course) -> AttemptStarted:
        return AttemptStarted(
            self.notification,
            course.receiver,
            course.message_id,
            course.attempts,
            course.url,
            self.send_id,
        )


def _kept(response: HttpResponse) -> HttpResponse:
    """A response safe to keep on a report: plain headers and a bytes body.

    A transport may not have been so careful (headers that raise, a body of another type).
    """
    try:
        headers = response.headers
        if type(headers) is not dict:
            headers = {str(k): str(v) for k, v in headers.items()}
        body = response.body
        if type(body) is not bytes:
            body = bytes(body)
        return HttpResponse(response.status_code, headers, body, bool(response.truncated))
    except Exception:
        return HttpResponse(response.status_code)


def build_delivery(
    notification: Notification[Any],
    course: Course,
    outcome: Outcome,
    elapsed: float,
    status_code: int | None,
    error: FlnotifyError | None,
    response: HttpResponse | None = None,
    *,
    send_id: str = "",
    send_size: int = 0,
) -> Delivery:
    """The one place a [`Delivery`][flnotify.Delivery] is made.

    The core calls it when an outcome is reached; the outbox when it rebuilds an outcome
    recorded by an earlier claim (whose hooks were told when it was reached).
    """
    return Delivery(
        receiver=course.receiver,
        notification=notification,
        outcome=outcome,
        message_id=course.message_id,
        attempts=course.attempts,
        elapsed=elapsed,
        status_code=status_code,
        error=error,
        response=response,
        send_id=send_id,
        send_size=send_size,
    )
