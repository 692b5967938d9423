"""The one exception tree of flnotify.

Every error flnotify raises derives from [`FlnotifyError`][]; errors of a backend
(httpx, aiohttp, sqlite3, ...) are translated at the edge and kept as ``__cause__``::

    FlnotifyError
    ├── DecodeError                  (also ValueError)   bad wire data
    │   └── UnknownNotificationTypeError                 type not in the registry
    ├── TrainingNotFoundError        (also LookupError)  repository miss
    ├── ConfigurationError           (also ValueError)   misuse of an API
    │   └── PayloadTooLargeError                         body over the policy's limit
    ├── EndpointError                (also ValueError)   receiver URL refused before any I/O
    │   └── BlockedAddressError                          resolved to a guarded network
    ├── TransportError                                   one attempt failed on the wire
    │   ├── ConnectError                                 refused / unreachable
    │   ├── DNSError                                     name did not resolve
    │   ├── TimeoutError                                 connect/read/write/pool timeout
    │   ├── ConnectionResetError                         peer reset or closed mid-exchange
    │   ├── InvalidURLError                              URL cannot be requested (not retried)
    │   ├── ResponseTooLargeError                        (only raised when a transport is told to)
    │   └── ProtocolError                                peer spoke broken HTTP
    ├── DeliveryError                                    raise_for_failures() on a report
    └── VerificationError                                a received request failed verification
        ├── MissingHeaderError
        ├── MalformedHeaderError
        ├── SignatureMismatchError
        └── TimestampError
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._delivery import Delivery

__all__ = [
    "BlockedAddressError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionResetError",
    "DNSError",
    "DecodeError",
    "DeliveryError",
    "EndpointError",
    "FlnotifyError",
    "InvalidURLError",
    "MalformedHeaderError",
    "MissingHeaderError",
    "ProtocolError",
    "ResponseTooLargeError",
    "SignatureMismatchError",
    "TimeoutError",
    "TimestampError",
    "TrainingNotFoundError",
    "TransportError",
    "TransportErrorKind",
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
    TOO_LARGE = "too_large"
    PROTOCOL = "protocol"
    BLOCKED = "blocked"
    DEADLINE = "deadline"
    INTERNAL = "internal"


class TransportError(FlnotifyError):
    """One attempt to POST failed before a status was received.

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
        """Whether trying again may succeed (everything but a bad URL or a blocked address)."""
        return self.kind not in _FINAL_KINDS


_FINAL_KINDS = frozenset(
    {TransportErrorKind.INVALID_URL, TransportErrorKind.BLOCKED, TransportErrorKind.INTERNAL}
)


class ConnectError(TransportError):
    """The connection was refused or the host is unreachable."""

    kind = TransportErrorKind.CONNECT


class DNSError(TransportError):
    """The host name did not resolve."""

    kind = TransportErrorKind.DNS


class TimeoutError(TransportError):
    """A connect, read, write or pool timeout expired."""

    kind = TransportErrorKind.TIMEOUT


class ConnectionResetError(TransportError):
    """The peer reset or closed the connection in the middle of the exchange."""

    kind = TransportErrorKind.RESET


class InvalidURLError(TransportError):
    """The URL cannot be requested at all; never retried."""

    kind = TransportErrorKind.INVALID_URL


class ResponseTooLargeError(TransportError):
    """The response exceeded the configured cap (transports normally truncate instead)."""

    kind = TransportErrorKind.TOO_LARGE


class ProtocolError(TransportError):
    """The peer answered with something that is not valid HTTP/1.1."""

    kind = TransportErrorKind.PROTOCOL


class DeliveryError(FlnotifyError):
    """Some receivers were not delivered; raised by ``DeliveryReport.raise_for_failures``.

    Attributes:
        deliveries: The deliveries that were rejected or failed.
    """

    def __init__(self, deliveries: tuple[Delivery, ...]) -> None:
        n = len(deliveries)
        first = deliveries[0] if deliveries else None
        detail = f"; first: {first.describe()}" if first is not None else ""
        super().__init__(f"{n} receiver(s) not delivered{detail}")
        self.deliveries = deliveries


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
