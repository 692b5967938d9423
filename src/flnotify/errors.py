"""Every error flnotify raises, in one tree rooted at ``FlnotifyError``.

Errors are imported from here, and only from here::

    from flnotify.errors import FlnotifyError, TransportError, VerificationError

Errors of a backend (sqlite3, psycopg, redis, httpx, httptools) are translated at the edge
and kept as ``__cause__``::

    FlnotifyError
    ├── DecodeError                  (also ValueError)   bad wire data
    │   └── UnknownNotificationTypeError                 type not in the registry
    ├── TrainingNotFoundError        (also LookupError)  repository miss
    ├── RepositoryError                                  the training store failed
    │   └── RepositoryBusyError                          busy or locked now: try again
    ├── ConfigurationError           (also ValueError)   misuse of an API
    │   └── PayloadTooLargeError                         body over the policy's limit
    ├── EndpointError                (also ValueError)   receiver URL refused before any I/O
    │   └── BlockedAddressError                          resolved to a guarded network
    ├── TransportError                                   one attempt failed, no status came back
    │   ├── ConnectError                                 refused / unreachable
    │   ├── DNSError                                     name did not resolve
    │   ├── TransportTimeoutError                        connect/read/write/total limit passed
    │   ├── ConnectionLostError                          peer reset or closed mid-exchange
    │   ├── InvalidURLError                              URL cannot be requested (not retried)
    │   ├── ProtocolError                                peer spoke broken HTTP
    │   ├── CircuitOpenError                             endpoint skipped by its breaker
    │   └── InternalError                                a component broke (not retried)
    ├── AnswerError                                      an answer says the sending side is wrong
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

from ._exceptions import (
    AnswerError,
    AnswerErrorKind,
    BlockedAddressError,
    CallbackError,
    CircuitOpenError,
    ConfigurationError,
    ConnectError,
    ConnectionLostError,
    DecodeError,
    DeliveryError,
    DNSError,
    EndpointError,
    FlnotifyError,
    IdStoreError,
    InternalError,
    InvalidURLError,
    MailboxError,
    MailboxProtocolError,
    MailboxStatusError,
    MalformedHeaderError,
    MissingHeaderError,
    NoOutboxError,
    OutboxError,
    PayloadTooLargeError,
    ProtocolError,
    RepositoryBusyError,
    RepositoryError,
    RequestTooLargeError,
    SignatureMismatchError,
    TimestampError,
    TrainingNotFoundError,
    TransportError,
    TransportErrorKind,
    TransportTimeoutError,
    UnknownNotificationTypeError,
    VerificationError,
)

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
