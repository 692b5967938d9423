"""Client side: receive, verify, deduplicate and dispatch notifications to typed handlers.

A [`NotificationRouter`][flnotify.receiving.NotificationRouter] turns one HTTP request into one
answer; [`asgi_app`][flnotify.receiving.asgi_app] and
[`wsgi_app`][flnotify.receiving.wsgi_app] serve it under any ASGI or WSGI server. For a
framework view wired by hand, [`parse_notification`][flnotify.receiving.parse_notification]
verifies and decodes one request in a single call.

Deduplication claims each ``webhook-id`` atomically in an id store:
[`InMemoryIdStore`][flnotify.receiving.InMemoryIdStore] for one process (and tests),
[`SQLiteIdStore`][flnotify.receiving.SQLiteIdStore] for several worker processes on one
host and across restarts, [`RedisIdStore`][flnotify.receiving.RedisIdStore] for several
hosts. Hostile requests are bounded by [`ReceivingLimits`][flnotify.receiving.ReceivingLimits].

A client behind NAT opens no port: a [`MailboxPoller`][flnotify.receiving.MailboxPoller]
long-polls the server's mailbox and feeds each message to the same router.
"""

from .._web.responses import Response
from ._asgi import ASGIApp, asgi_app
from ._dedupe import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    AsyncIdStore,
    IdClaim,
    IdStore,
    InMemoryIdStore,
)
from ._parse import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    RawHeaders,
    ReceivedNotification,
    ReceivingLimits,
    parse_notification,
)
from ._poller import DEFAULT_MAX_ANSWER_BYTES, MailboxPoller
from ._redis_store import RedisIdStore
from ._responses import Reply
from ._router import Handler, HandlerDecorator, MessageContext, NotificationRouter
from ._server import BoundedWSGIServer, make_wsgi_server
from ._sqlite_store import SQLiteIdStore
from ._wsgi import wsgi_app

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ANSWER_BYTES",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_WINDOW_SECONDS",
    "ASGIApp",
    "AsyncIdStore",
    "BoundedWSGIServer",
    "Handler",
    "HandlerDecorator",
    "IdClaim",
    "IdStore",
    "InMemoryIdStore",
    "MailboxPoller",
    "MessageContext",
    "NotificationRouter",
    "RawHeaders",
    "ReceivedNotification",
    "ReceivingLimits",
    "RedisIdStore",
    "Reply",
    "Response",
    "SQLiteIdStore",
    "asgi_app",
    "make_wsgi_server",
    "parse_notification",
    "wsgi_app",
]
