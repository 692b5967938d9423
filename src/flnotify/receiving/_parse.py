"""The I/O-free core of receiving: limits, headers, verification and decoding of one request.

[`parse_notification`][flnotify.receiving.parse_notification] is the public form (for
framework views wired by hand); the router calls the same `inspect_request` and answers
each error it raises with its own status.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs

from .._codec import Codec, default_codec, nested_deeper_than
from .._exceptions import ConfigurationError, DecodeError, RequestTooLargeError
from .._notification import Notification
from .._validators import at_least_one
from ..signing import (
    DEFAULT_MAX_SIGNATURES,
    DEFAULT_TOLERANCE,
    ID_HEADER,
    TIMESTAMP_HEADER,
    Verifier,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_BYTES",
    "RawHeaders",
    "ReceivedNotification",
    "ReceivingLimits",
    "parse_notification",
]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""Request bodies above 1 MiB are refused (413)."""

DEFAULT_MAX_HEADERS = 100
"""Requests with more than 100 header lines are refused (431), as by Python's HTTP parser."""

DEFAULT_MAX_HEADER_BYTES = 32 * 1024
"""Requests whose header names and values add up to more than 32 KiB are refused (431)."""

DEFAULT_MAX_DEPTH = 32
"""Bodies nesting arrays and objects deeper than 32 levels are refused (400)."""

RawHeaders: TypeAlias = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]
"""Request headers as servers hand them over: a mapping or ``(name, value)`` pairs of
``str`` or ``bytes`` (ASGI); names are matched case-insensitively."""

_TIMESTAMP = re.compile(r"[0-9]{1,15}")


@attrs.frozen
class ReceivingLimits:
    """What one received request may cost; requests beyond are refused unprocessed.

    Every check is linear in the request's size, so a hostile request costs at most a
    few passes over bytes the limits already bound.

    Args:
        max_body_bytes: Larger bodies are refused (413); adapters check ``Content-Length``
            before reading and stop reading a body that grows past it.
        max_headers: More header lines are refused (431).
        max_header_bytes: Header names and values adding up to more are refused (431).
        max_signatures: More ``v1,`` entries in ``webhook-signature`` headers are refused
            (401), before any HMAC is computed.
        max_depth: Bodies nesting arrays and objects deeper are refused (400).
    """

    max_body_bytes: int = attrs.field(default=DEFAULT_MAX_BODY_BYTES, validator=at_least_one)
    max_headers: int = attrs.field(default=DEFAULT_MAX_HEADERS, validator=at_least_one)
    max_header_bytes: int = attrs.field(default=DEFAULT_MAX_HEADER_BYTES, validator=at_least_one)
    max_signatures: int = attrs.field(default=DEFAULT_MAX_SIGNATURES, validator=at_least_one)
    max_depth: int = attrs.field(default=DEFAULT_MAX_DEPTH, validator=at_least_one)


@attrs.frozen
class ReceivedNotification:
    """A request that passed every check: the typed notification and what vouches for it.

    Args:
        notification: The decoded notification (its class chosen by ``notification_type``).
        id: The ``webhook-id``; deduplicate on it.
        timestamp: The ``webhook-timestamp`` (seconds since the epoch), when valid.
        verified: Whether the signature was checked.
        headers: The request headers, names lower-case (the last of repeated ones).
    """

    notification: Notification[Any]
    id: str | None
    timestamp: int | None
    verified: bool
    headers: Mapping[str, str]


def read_headers(headers: RawHeaders, limits: ReceivingLimits) -> list[tuple[str, str]]:
    """``(lower-case name, value)`` pairs, refused as soon as a header limit is passed.

    Raises:
        RequestTooLargeError: More than ``max_headers`` lines, or more than
            ``max_header_bytes`` of names and values.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs: list[tuple[str, str]] = []
    size = 0
    for name, value in items:
        if len(pairs) >= limits.max_headers:
            what = f"more than {limits.max_headers} headers"
            raise RequestTooLargeError("max_headers", limits.max_headers, what)
        size += len(name) + len(value)
        if size > limits.max_header_bytes:
            what = f"headers larger than {limits.max_header_bytes} bytes"
            raise RequestTooLargeError("max_header_bytes", limits.max_header_bytes, what)
        n = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        v = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        pairs.append((n.lower(), v))
    return pairs


def inspect_request(
    headers: RawHeaders,
    body: bytes,
    *,
    verifier: Verifier | None,
    codec: Codec,
    limits: ReceivingLimits,
) -> ReceivedNotification:
    """Limits, then the signature (when ``verifier`` is set), then the body; see below.

    Raises:
        RequestTooLargeError: The headers or the body exceed ``limits``.
        VerificationError: (its subclasses) the signature or timestamp is missing,
            malformed or wrong.
        UnknownNotificationTypeError: ``notification_type`` is not in the codec's registry.
        DecodeError: The body is not a valid notification, or nests deeper than
            ``limits.max_depth``.
    """
    pairs = read_headers(headers, limits)
    if len(body) > limits.max_body_bytes:
        what = f"a body larger than {limits.max_body_bytes} bytes"
        raise RequestTooLargeError("max_body_bytes", limits.max_body_bytes, what)
    header_map = dict(pairs)
    message_id: str | None
    timestamp: int | None
    if verifier is not None:
        verified = verifier.verify(pairs, body)
        message_id, timestamp = verified.id, verified.timestamp
    else:
        message_id = header_map.get(ID_HEADER) or None
        raw = header_map.get(TIMESTAMP_HEADER, "").strip()
        timestamp = int(raw) if _TIMESTAMP.fullmatch(raw) else None
    data = bytes(body)
    if nested_deeper_than(data, limits.max_depth):
        raise DecodeError("$", f"nested deeper than {limits.max_depth} levels", data)
    notification = codec.decode(data)
    return ReceivedNotification(
        notification, message_id, timestamp, verifier is not None, header_map
    )


def parse_notification(
    body: bytes,
    headers: RawHeaders,
    *,
    secrets: str | Sequence[str] | None = None,
    verifier: Verifier | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    codec: Codec | None = None,
    limits: ReceivingLimits | None = None,
) -> ReceivedNotification:
    """Verify and decode one request in one call, for a framework view wired by hand.

    The same checks as the [`NotificationRouter`][flnotify.receiving.NotificationRouter], without
    deduplication (claim ``result.id`` in an [`IdStore`][flnotify.receiving.IdStore] for that) and
    without a response: each failure raises its own error, so the view picks the status.

    Args:
        body: The exact request body bytes.
        headers: The request headers (a mapping or ``(name, value)`` pairs).
        secrets: The ``whsec_...`` secret(s); or pass a ready ``verifier``.
        verifier: A [`Verifier`][flnotify.signing.Verifier] built once (parses the secrets once).
        tolerance: With ``secrets``: how many seconds the timestamp may lie from now.
        codec: Decodes the body; defaults to the six training notifications.
        limits: The request limits; by default
            [`ReceivingLimits()`][flnotify.receiving.ReceivingLimits].

    Returns:
        The typed notification with its message id and timestamp.

    Raises:
        ConfigurationError: Neither or both of ``secrets`` and ``verifier`` are given.
        RequestTooLargeError: The headers or the body exceed ``limits`` (431 or 413).
        VerificationError: The signature or timestamp is missing, malformed or wrong (401);
            its subclasses say which.
        UnknownNotificationTypeError: An unknown ``notification_type`` (400).
        DecodeError: The body is not a valid notification (400).
    """
    if (secrets is None) == (verifier is None):
        msg = "pass either secrets= or verifier= (parse_notification always verifies)"
        raise ConfigurationError(msg)
    limits = ReceivingLimits() if limits is None else limits
    if verifier is None:
        assert secrets is not None  # noqa: S101 - narrowed by the check above
        verifier = Verifier(secrets, tolerance=tolerance, max_signatures=limits.max_signatures)
    return inspect_request(
        headers,
        body,
        verifier=verifier,
        codec=default_codec() if codec is None else codec,
        limits=limits,
    )
