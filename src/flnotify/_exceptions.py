"""The one exception tree of flnotify; this module imports nothing else of flnotify.

Every error flnotify raises derives from [`FlnotifyError`][flnotify.errors.FlnotifyError]; errors
of a backend (httpx, httptools, sqlite3, ...) are translated at the edge and kept as
``__cause__``::

    FlnotifyError
    ├── DecodeError                  (also ValueError)   bad wire data
    │   └── UnknownNotificationTypeError                 type not in the registry
    ├── TrainingNotFoundError        (also LookupError)  repository miss
    ├── RepositoryError                                  the training store failed
    │   └── RepositoryBusyError                          busy for now: worth trying again
    ├── ConfigurationError           (also ValueError)   misuse of an API
    │   └── PayloadTooLargeError                         body over the policy's limit
    ├── EndpointError                (also ValueError)   receiver URL refused before any I/O
    │   └── BlockedAddressError                          resolved to a guarded network
    ├── AnswerError                                      an answer says the sending side is wrong
    ├── TransportError                                   one attempt failed, no status came back
    │   ├── ConnectError                                 refused / unreachable
    │   ├── DNSError                                     name did not resolve
    │   ├── TransportTimeoutError                        connect/read/write/total limit passed
    │   ├── ConnectionLostError                          peer reset or closed mid-exchange
    │   ├── InvalidURLError                              URL cannot be requested (not retried)
    │   ├── ProtocolError                                peer spoke broken HTTP
    │   ├── CircuitOpenError                             endpoint skipped by its breaker
    │   └── InternalError                                a component broke (not retried)
    ├── CallbackError                                    a callback raised (kept on the report)
    ├── DeliveryError                                    raise_for_failures() on a report
    ├── RequestTooLargeError         (also ValueError)   a received request over a limit
    ├── IdStoreError                                     a message id store failed
    ├── OutboxError                                      the outbox's database failed
    │   └── NoOutboxError                                a target holds no outbox (none created)
    ├── MailboxError                                     the mailbox's database failed
    ├── MailboxProtocolError                             not what the mailbox protocol says
    ├── MailboxStatusError                               the mailbox answered another status
    └── VerificationError                                a received request failed verification
        ├── MissingHeaderError
        ├── MalformedHeaderError
        ├── SignatureMismatchError
        └── TimestampError
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

__all__ = [
    "AnswerError",
    "AnswerErrorKind",
    "BlockedAddressError",
    "CallbackError",
    "CircuitOpenError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionLostError",
    "DNSError",
    "DecodeError",
    "DeliveryError",
    "EndpointError",
    "FlnotifyError",
    "IdStoreError",
    "InternalError",
    "InvalidURLError",
    "MailboxError",
    "MailboxProtocolError",
    "MailboxStatusError",
    "MalformedHeaderError",
    "MissingHeaderError",
    "NoOutboxError",
    "OutboxError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RepositoryBusyError",
    "RepositoryError",
    "RequestTooLargeError",
    "SignatureMismatchError",
    "TimestampError",
    "TrainingNotFoundError",
    "TransportError",
    "TransportErrorKind",
    "TransportTimeoutError",
    "UnknownNotificationTypeError",
    "VerificationError",
]


class FlnotifyError(Exception):
    """Root of every error flnotify raises."""


class DecodeError(FlnotifyError, ValueError):
    """Wire data could not be turned into a notification.

    Attributes:
        path: Where in the document the problem is, as ``$.body.round``.
        problem: What is wrong there, in a few words.
        data: The raw input (bytes, str or mapping) as it was given.
    """

    def __init__(self, path: str, problem: str, data: object = None) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        self.data = data


class UnknownNotificationTypeError(DecodeError):
    """The ``notification_type`` is not registered; ``data`` keeps the raw document.

    Attributes:
        notification_type: The unknown wire string.
    """

    def __init__(self, notification_type: str, data: object = None) -> None:
        super().__init__(
            "$.notification_type", f"unknown notification type {notification_type!r}", data
        )
        self.notification_type = notification_type


class TrainingNotFoundError(FlnotifyError, LookupError):
    """The repository holds no training with this id."""

    def __init__(self, training_id: object) -> None:
        super().__init__(f"no training with id {training_id}")
        self.training_id = training_id


class RepositoryError(FlnotifyError):
    """The training store could not be read or written (locked, disk full, corrupt, ...)."""


class RepositoryBusyError(RepositoryError):
    """The training store is busy for now (a lock held elsewhere, a serialization failure).

    The one transient repository error: the call changed nothing and may succeed if tried
    again soon, so callbacks that fail with it are tried again for a few seconds before
    they are reported. Repositories raise it for such failures of their backend; any other
    error is taken as lasting.
    """


class ConfigurationError(FlnotifyError, ValueError):
    """An flnotify object was configured with values that cannot work."""


class EndpointError(FlnotifyError, ValueError):
    """A receiver's ``message_endpoint`` was refused before any I/O."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"endpoint {url!r} refused: {reason}")
        self.url = url
        self.reason = reason


class BlockedAddressError(EndpointError):
    """The endpoint resolved to an address in a guarded network."""


class TransportErrorKind(enum.Enum):
    """Which way one attempt failed on the wire."""

    CONNECT = "connect"
    DNS = "dns"
    TIMEOUT = "timeout"
    RESET = "reset"
    INVALID_URL = "invalid_url"
    PROTOCOL = "protocol"
    BLOCKED = "blocked"
    DEADLINE = "deadline"
    INTERNAL = "internal"
    CIRCUIT_OPEN = "circuit_open"


class TransportError(FlnotifyError):
    """One attempt failed before a status was received.

    Attributes:
        kind: The class of failure; decides whether a retry can help.
        url: The URL that was being requested.
    """

    kind: TransportErrorKind = TransportErrorKind.PROTOCOL

    def __init__(
        self, message: str, *, url: str = "", kind: TransportErrorKind | None = None
    ) -> None:
        super().__init__(message)
        self.url = url
        if kind is not None:
            self.kind = kind

    @property
    def retryable(self) -> bool:
        """Whether trying again may succeed.

        Not for a bad URL, a blocked address, a broken component, or a passed deadline.
        """
        return self.kind not in _FINAL_KINDS


_FINAL_KINDS = frozenset(
    {
        TransportErrorKind.INVALID_URL,
        TransportErrorKind.BLOCKED,
        TransportErrorKind.INTERNAL,
        TransportErrorKind.DEADLINE,
        TransportErrorKind.CIRCUIT_OPEN,
    }
)


class AnswerErrorKind(enum.Enum):
    """Which mistake of the sending side an answer points at.

    A server's mistake, never the client's: the default callbacks never remove a client for
    one.
    """

    SIGNATURE = "signature"
    """401/403: the client could not verify the signature: the signing secret it was
    given and the one the server signs with differ (or a key rotation went wrong)."""
    REDIRECT = "redirect"
    """3xx: the endpoint moved (or a framework adds a trailing slash); never followed."""
    ENDPOINT = "endpoint"
    """404/405: nothing takes notifications at the receiver's ``message_endpoint``."""


_ANSWER_HINTS = {
    AnswerErrorKind.SIGNATURE: (
        "the client could not verify the signature: check the signing secret configured"
        " for it on the server (Settings.signer) against the one the client verifies with"
    ),
    AnswerErrorKind.REDIRECT: (
        "the endpoint redirects{where} and redirects are never followed: register the URL"
        " it redirects to as the receiver's message_endpoint"
    ),
    AnswerErrorKind.ENDPOINT: (
        "nothing takes notifications at this URL: check the receiver's message_endpoint"
        " (its path and that it accepts POST)"
    ),
}


class AnswerError(FlnotifyError):
    """A client answered with a status that says the *sending* side is misconfigured.

    The delivery fails (never rejected): a server's mistake must not remove clients. The
    message says what to check, and never carries a secret.

    Attributes:
        kind: Which mistake (signing secret, redirect, endpoint).
        status: The status the client answered.
        url: The URL that was requested.
        location: Where a redirect pointed (``""`` if it named no ``Location``), else ``None``.
    """

    def __init__(
        self,
        kind: AnswerErrorKind,
        status: int,
        *,
        url: str = "",
        location: str | None = None,
    ) -> None:
        where = ""
        if kind is AnswerErrorKind.REDIRECT:
            where = f" to {location}" if location else " (with no Location)"
        super().__init__(f"answered {status}: " + _ANSWER_HINTS[kind].format(where=where))
        self.kind = kind
        self.status = status
        self.url = url
        self.location = location

    @property
    def hint(self) -> str:
        """What to check, without the status or URL (the same for every receiver of a kind)."""
        return _ANSWER_HINTS[self.kind].format(where="")


class ConnectError(TransportError):
    """The connection was refused or the host is unreachable."""

    kind = TransportErrorKind.CONNECT


class DNSError(TransportError):
    """The host name did not resolve."""

    kind = TransportErrorKind.DNS


class TransportTimeoutError(TransportError):
    """A connect, read, write, pool or whole-attempt time limit passed."""

    kind = TransportErrorKind.TIMEOUT


class ConnectionLostError(TransportError):
    """The peer reset or closed the connection in the middle of the exchange."""

    kind = TransportErrorKind.RESET


class InvalidURLError(TransportError):
    """The URL cannot be requested at all; never retried."""

    kind = TransportErrorKind.INVALID_URL


class ProtocolError(TransportError):
    """The peer answered with something that is not valid HTTP/1.1."""

    kind = TransportErrorKind.PROTOCOL


class InternalError(TransportError):
    """A component broke while one attempt was prepared, made or judged; never retried.

    The transport, the signer, the retry policy, a resolver or flnotify itself raised
    something it should not have; the original exception is the ``__cause__``.
    """

    kind = TransportErrorKind.INTERNAL


class CircuitOpenError(TransportError):
    """The endpoint's circuit breaker is open: no attempt was made (it kept failing)."""

    kind = TransportErrorKind.CIRCUIT_OPEN


class CallbackError(FlnotifyError):
    """A callback raised for one delivery; logged, kept on the report, never lost.

    Attributes:
        delivery: The [`Delivery`][flnotify.Delivery] the callback was called with.
        callback: The qualified name of the method that raised.
    """

    def __init__(self, message: str, *, delivery: Any, callback: str) -> None:
        super().__init__(message)
        self.delivery = delivery
        self.callback = callback


class DeliveryError(FlnotifyError):
    """Some receivers were not delivered, or callbacks failed: ``raise_for_failures()``.

    Attributes:
        deliveries: The [`Delivery`][flnotify.Delivery] values that were rejected or failed.
        callback_errors: The callbacks that raised.
    """

    def __init__(
        self,
        message: str,
        deliveries: Sequence[Any],
        callback_errors: Sequence[CallbackError] = (),
    ) -> None:
        super().__init__(message)
        self.deliveries = tuple(deliveries)
        self.callback_errors = tuple(callback_errors)


class VerificationError(FlnotifyError):
    """A received request failed signature verification."""


class MissingHeaderError(VerificationError):
    """A required ``webhook-*`` header is absent."""

    def __init__(self, header: str) -> None:
        super().__init__(f"missing header {header!r}")
        self.header = header


class MalformedHeaderError(VerificationError):
    """A ``webhook-*`` header is present but cannot be parsed."""

    def __init__(self, header: str, problem: str) -> None:
        super().__init__(f"malformed header {header!r}: {problem}")
        self.header = header
        self.problem = problem


class SignatureMismatchError(VerificationError):
    """No signature in the header matches any configured secret."""


class TimestampError(VerificationError):
    """The ``webhook-timestamp`` lies outside the tolerance window.

    Attributes:
        timestamp: The timestamp the request carried (seconds since the epoch).
        now: The receiver's clock when it checked.
    """

    def __init__(self, timestamp: int, now: float, *, too_old: bool) -> None:
        which = "too old" if too_old else "too far in the future"
        super().__init__(f"timestamp {timestamp} is {which} (now {int(now)})")
        self.timestamp = timestamp
        self.now = now
        self.too_old = too_old


class RequestTooLargeError(FlnotifyError, ValueError):
    """A received request exceeds one of the receiving limits (headers or body).

    Attributes:
        limit: The name of the limit, as ``max_headers`` or ``max_body_bytes``.
        maximum: The configured value of that limit.
    """

    def __init__(self, limit: str, maximum: int, what: str) -> None:
        super().__init__(f"{what} (limit {limit}={maximum})")
        self.limit = limit
        self.maximum = maximum


class IdStoreError(FlnotifyError):
    """A message id store (SQLite, Redis, ...) failed; the backend's error is the cause.

    Attributes:
        store: Which kind of store failed, as ``sqlite`` or ``redis``.
    """

    def __init__(self, store: str, problem: str) -> None:
        super().__init__(f"{store} id store failed: {problem}")
        self.store = store
        self.problem = problem


class MailboxProtocolError(FlnotifyError):
    """A mailbox request or answer is not what the mailbox protocol says; names why."""


class MailboxStatusError(FlnotifyError):
    """The mailbox answered a fetch or an acknowledgement with another status than 200.

    Attributes:
        operation: ``"fetch"`` or ``"ack"``.
        status: The HTTP status.
        retry_after: The seconds a ``Retry-After`` header asked for, when it had a valid one.
        code: The ``error`` code of the answer's JSON body, when it had a short one.
    """

    def __init__(
        self, operation: str, status: int, *, retry_after: float | None = None, code: str = ""
    ) -> None:
        what = f"the mailbox answered the {operation} with {status}"
        if code:
            what += f" ({code})"
        if status == 401:
            what += ": it refused the credentials; check the client id, its secret and the clock"
        super().__init__(what)
        self.operation = operation
        self.status = status
        self.retry_after = retry_after
        self.code = code

    @property
    def unauthorized(self) -> bool:
        """Whether the mailbox refused the client's credentials (401)."""
        return self.status == 401


class PayloadTooLargeError(ConfigurationError):
    """A notification's encoded body exceeds the policy's ``max_body_bytes``.

    Attributes:
        size: The body's length in bytes.
        limit: The configured maximum.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request body of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class OutboxError(FlnotifyError):
    """The outbox's database could not be opened, read or written."""


class NoOutboxError(OutboxError):
    """A target that was to hold an outbox already holds none (nothing was created)."""


class MailboxError(FlnotifyError):
    """The mailbox's database could not be opened, read or written."""
