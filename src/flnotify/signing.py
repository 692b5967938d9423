"""Standard Webhooks signatures: the server signs each POST, the client verifies it.

Three headers travel with every notification (https://www.standardwebhooks.com/):

* ``webhook-id`` — the message id, the same across retries of one notification to one
  receiver, so the client can deduplicate;
* ``webhook-timestamp`` — integer seconds since the epoch, taken at each attempt;
* ``webhook-signature`` — ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one
  space-separated entry per secret while a key rotation is in progress.

Secrets are ``whsec_`` + base64 of the key bytes
([`generate_secret`][flnotify.generate_secret] makes one). The
``whsec_`` prefix is optional when parsing, and unpadded base64 is accepted, as by the
``standardwebhooks`` reference package; unlike it, characters outside the base64 alphabet
are refused instead of being silently dropped (which would yield a different key).

Server side, [`Signer`][flnotify.Signer] holds the parsed keys and makes the three headers;
client side, [`Verifier`][flnotify.signing.Verifier] (or the one-shot
[`verify`][flnotify.signing.verify]) checks them in constant time.
[`sign_payload`][flnotify.signing.sign_payload] signs a test payload in one call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import inspect
import re
import secrets as _secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias, cast

import attrs

from ._exceptions import (
    ConfigurationError,
    MalformedHeaderError,
    MissingHeaderError,
    SignatureMismatchError,
    TimestampError,
)
from ._types import ReceiverLike

__all__ = [
    "DEFAULT_MAX_SIGNATURES",
    "DEFAULT_TOLERANCE",
    "ID_HEADER",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "HeadersLike",
    "SecretLookup",
    "VerifiedMessage",
    "Verifier",
    "new_message_id",
    "sign_payload",
    "verify",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a password
"""The prefix of a Standard Webhooks secret."""

ID_HEADER = "webhook-id"
"""The header carrying the message id."""

TIMESTAMP_HEADER = "webhook-timestamp"
"""The header carrying the signing time, integer seconds since the epoch."""

SIGNATURE_HEADER = "webhook-signature"
"""The header carrying the space-separated ``v1,<base64>`` signatures."""

DEFAULT_TOLERANCE = 300.0
"""How far (seconds) a timestamp may lie from the receiver's clock, either way."""

HeadersLike: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]
"""Request headers: a mapping, or ``(name, value)`` pairs; names are matched case-insensitively."""

SecretLookup: TypeAlias = Callable[
    [ReceiverLike], "str | Sequence[str] | Awaitable[str | Sequence[str] | None] | None"
]
"""Returns a receiver's own secret(s), or ``None`` to fall back to the shared ones.

A plain function or an ``async`` one. The engine calls it once per receiver and send, before
the first attempt, off its event loop: a plain lookup for all receivers in one worker-thread
call (an ORM query is fine there), an ``async`` one for all receivers at once."""

_TIMESTAMP = re.compile(r"[0-9]{1,15}")
DEFAULT_MAX_SIGNATURES = 16
"""How many ``v1,`` entries a [`Verifier`][flnotify.signing.Verifier] accepts in one request."""
_SIGNATURE_BYTES = hashlib.sha256().digest_size
_LOOKUP_CACHE_SIZE = 4096


# --------------------------------------------------------------------------- secrets


def generate_secret(nbytes: int = 32) -> str:
    """A new random secret, ``whsec_`` + base64 of ``nbytes`` random bytes.

    Raises:
        ConfigurationError: ``nbytes`` is below `MIN_SECRET_BYTES` (24, the specification's
            minimum; every secret flnotify is given must be as long).
    """
    _check_length(nbytes)
    return SECRET_PREFIX + _b64(_secrets.token_bytes(nbytes))


MIN_SECRET_BYTES = 24
"""The shortest key a secret may have, in bytes (the Standard Webhooks minimum)."""


def _check_length(nbytes: int) -> None:
    """Refuse a key shorter than `MIN_SECRET_BYTES`: the one check, with the one message."""
    if nbytes < MIN_SECRET_BYTES:
        msg = f"a secret needs at least {MIN_SECRET_BYTES} random bytes, not {nbytes}"
        raise ConfigurationError(msg)


def _parse_secret(secret: object, index: int | None = None) -> bytes:
    """The key bytes of one secret string; errors name the problem, never the secret."""
    which = "secret" if index is None else f"secrets[{index}]"
    if not isinstance(secret, str):
        msg = f"{which} must be a string, not {type(secret).__name__}"
        raise ConfigurationError(msg)
    text = secret.strip()
    text = text.removeprefix(SECRET_PREFIX)
    if not text:
        msg = f"{which} is empty"
        raise ConfigurationError(msg)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        msg = f"{which} is not valid base64 (expected 'whsec_' followed by base64)"
        raise ConfigurationError(msg) from None
    if not key:
        msg = f"{which} decodes to an empty key"
        raise ConfigurationError(msg)
    _check_length(len(key))
    return key


def _parse_secrets(secrets: object) -> tuple[Any, ...]:
    """HMAC key states (copied per call) for one secret or a sequence of them, deduplicated."""
    if isinstance(secrets, str):
        keys = [_parse_secret(secrets)]
    elif isinstance(secrets, Sequence) and not isinstance(secrets, (bytes, bytearray)):
        if not secrets:
            msg = "no secrets given (an empty sequence)"
            raise ConfigurationError(msg)
        keys = [_parse_secret(s, i) for i, s in enumerate(secrets)]
    else:
        msg = f"secrets must be a string or a sequence of strings, not {type(secrets).__name__}"
        raise ConfigurationError(msg)
    unique = dict.fromkeys(keys)  # rotation lists may repeat a secret; sign once per key
    return tuple(_hmac_states(key) for key in unique)


_BLOCK = hashlib.sha256().block_size


def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's keyed inner and outer hash states (RFC 2104), copied per message.

    The same digests as ``hmac.new(key, msg, "sha256")``; copying two ``hashlib`` states
    skips the ``hmac`` module's Python wrapper on the hot path of a large fan-out.
    """
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def _lookup_key(secrets: str | Sequence[str]) -> str | tuple[str, ...]:
    """A hashable cache key for what a lookup returned."""
    if isinstance(secrets, str):
        return secrets
    if isinstance(secrets, Sequence):
        return tuple(secrets)
    msg = f"the secret lookup returned {type(secrets).__name__}, not a string or sequence"
    raise ConfigurationError(msg)


def _mac(key: tuple[Any, Any], prefix: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of ``prefix + body`` from one key's states (copied, never rekeyed)."""
    inner, outer = key
    mac = inner.copy()
    mac.update(prefix)
    mac.update(body)
    wrapped = outer.copy()
    wrapped.update(mac.digest())
    return wrapped.digest()  # type: ignore[no-any-return]


def _digests(keys: tuple[Any, ...], msg_id: str, timestamp: str, body: bytes) -> list[bytes]:
    """One HMAC-SHA256 of ``id.timestamp.body`` per key."""
    prefix = f"{msg_id}.{timestamp}.".encode()
    return [_mac(key, prefix, body) for key in keys]


_UNKNOWN: tuple[Any, ...] = ()  # set below, once _parse_secrets exists


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


# --------------------------------------------------------------------------- signing


def new_message_id() -> str:
    """A fresh message id: ``msg_`` + 128 random bits as 32 lower-case hex digits."""
    return "msg_" + _secrets.token_hex(16)


@attrs.frozen(init=False, repr=False, eq=False)
class Signer:
    """Makes the ``webhook-*`` headers for each attempt; keys are parsed once, here.

    With several secrets (a rotation in progress) every request carries one ``v1,``
    signature per secret, so clients holding either the old or the new secret accept it.
    With ``lookup`` each receiver may have its own secret(s); when the lookup returns
    ``None`` for a receiver (or no receiver is given) the shared ``secrets`` are used, and
    when there are none either the request goes out unsigned (``webhook-id`` and
    ``webhook-timestamp`` are still sent, so clients can deduplicate). A ``Signer()`` with
    neither signs nothing.

    Args:
        secrets: The shared ``whsec_...`` secret, or several during a rotation.
        lookup: Returns a receiver's own secret(s) or ``None``; results are parsed once and
            cached by secret string.

    Raises:
        ConfigurationError: A secret is not a ``whsec_`` base64 string, or a sequence is empty.
    """

    _shared: tuple[Any, ...]
    _lookup: SecretLookup | None
    _parse_cached: Callable[[str | tuple[str, ...]], tuple[Any, ...]]

    def __init__(
        self,
        secrets: str | Sequence[str] | None = None,
        *,
        lookup: SecretLookup | None = None,
    ) -> None:
        if lookup is not None and not callable(lookup):
            msg = f"lookup must be callable, not {type(lookup).__name__}"
            raise ConfigurationError(msg)
        self.__attrs_init__(
            () if secrets is None else _parse_secrets(secrets),
            lookup,
            functools.lru_cache(maxsize=_LOOKUP_CACHE_SIZE)(_parse_secrets),
        )

    def __repr__(self) -> str:
        lookup = "" if self._lookup is None else ", lookup=..."
        return f"Signer(<{len(self._shared)} shared secret(s)>{lookup})"

    @property
    def signs(self) -> bool:
        """Whether any request can be signed (shared secrets or a lookup configured)."""
        return bool(self._shared) or self._lookup is not None

    @property
    def looks_up(self) -> bool:
        """Whether a lookup gives receivers secrets of their own."""
        return self._lookup is not None

    async def resolved(self, receivers: Sequence[ReceiverLike]) -> Signer:
        """A copy with the secrets of ``receivers`` looked up now, once, off the loop.

        A plain lookup runs for all of them in one worker-thread call, an ``async`` one is
        awaited for all of them together. The signer returned answers from what was found
        (every attempt of the send, retries included, signs without a second lookup); what
        the lookup raised for a receiver is raised again when that receiver is signed.
        """
        lookup = self._lookup
        if lookup is None:
            return self
        if inspect.iscoroutinefunction(lookup):
            found: list[Any] = await asyncio.gather(
                *(lookup(receiver) for receiver in receivers), return_exceptions=True
            )
        else:
            found = await asyncio.to_thread(_look_up_each, lookup, receivers)
        table = {id(receiver): result for receiver, result in zip(receivers, found, strict=True)}

        def known(receiver: ReceiverLike) -> str | Sequence[str] | None:
            result = table.get(id(receiver), _NOT_LOOKED_UP)
            if result is _NOT_LOOKED_UP:
                msg = f"receiver {receiver.id} was not among those whose secrets were looked up"
                raise ConfigurationError(msg)
            if isinstance(result, BaseException):
                raise result
            return cast("str | Sequence[str] | None", result)

        signer = object.__new__(Signer)
        signer.__attrs_init__(self._shared, known, self._parse_cached)
        return signer

    def _found(self, receiver: ReceiverLike) -> str | Sequence[str] | None:
        """What the lookup says of ``receiver`` (a plain lookup; an async one is resolved)."""
        lookup = self._lookup
        if lookup is None:
            return None
        if inspect.iscoroutinefunction(lookup):
            msg = (
                "an async secret lookup is resolved once per send by the engine"
                " (Signer.resolved); it cannot be called per request"
            )
            raise ConfigurationError(msg)
        return cast("str | Sequence[str] | None", lookup(receiver))

    def _keys_for(self, receiver: ReceiverLike | None) -> tuple[Any, ...]:
        if self._lookup is not None and receiver is not None:
            found = self._found(receiver)
            if found is not None:
                return self._parse_cached(_lookup_key(found))
        return self._shared

    def signature(
        self, msg_id: str, timestamp: int, body: bytes, receiver: ReceiverLike | None = None
    ) -> str | None:
        """The ``webhook-signature`` value, or ``None`` when this request goes unsigned.

        Args:
            msg_id: The message id (stable across retries).
            timestamp: Seconds since the epoch, taken at this attempt.
            body: The exact request body bytes.
            receiver: Who the request goes to (used by ``lookup``).
        """
        keys = self._keys_for(receiver)
        if not keys:
            return None
        digests = _digests(keys, msg_id, str(timestamp), body)
        if len(digests) == 1:
            return "v1," + _b64(digests[0])
        return " ".join(["v1," + _b64(d) for d in digests])

    def prepared(self, body: bytes) -> Callable[[str, str, ReceiverLike | None], str | None]:
        """``signature(msg_id, timestamp, receiver)`` for many requests with one ``body``.

        The per-send work is done once: the shared keys' HMAC states are kept, and the
        ``v1,`` values are built without a second pass. A receiver with a secret of its
        own (``lookup``) is signed as [`signature`][flnotify.Signer.signature] signs it.
        """
        shared = self._shared
        lookup = self._lookup
        general = self.signature
        if lookup is None and len(shared) == 1:  # the common case: one shared secret
            key = shared[0]

            def sign_one(msg_id: str, timestamp: str, _: ReceiverLike | None = None) -> str:
                return "v1," + _b64(_mac(key, f"{msg_id}.{timestamp}.".encode(), body))

            return sign_one

        def sign(msg_id: str, timestamp: str, receiver: ReceiverLike | None = None) -> str | None:
            if lookup is not None:
                return general(msg_id, int(timestamp), body, receiver)
            if not shared:
                return None
            values = ["v1," + _b64(d) for d in _digests(shared, msg_id, timestamp, body)]
            return values[0] if len(values) == 1 else " ".join(values)

        return sign

    def verify_from(
        self,
        receiver: ReceiverLike,
        headers: HeadersLike,
        body: bytes,
        *,
        tolerance: float,
        now: float,
        max_signatures: int = DEFAULT_MAX_SIGNATURES,
    ) -> VerifiedMessage:
        """Verify a request that ``receiver`` signed with its own secret(s).

        The other direction of [`headers`][flnotify.Signer.headers]: the mailbox app
        authenticates a polling client by it. Only the receiver's own secrets (from
        ``lookup``) count, never the shared ones: with a shared secret any client could
        pass for any other. A receiver without one costs the same HMAC work as one with a
        wrong signature, so timing does not tell whether it is known.

        Raises:
            SignatureMismatchError: The receiver has no secret of its own, or no entry
                matches one.
            MissingHeaderError: A ``webhook-*`` header is absent or empty.
            MalformedHeaderError: A header cannot be parsed.
            TimestampError: The timestamp is further than ``tolerance`` from ``now``.
        """
        found = self._found(receiver)
        if found is None:
            _checked(_UNKNOWN, headers, body, tolerance, now, max_signatures)  # same work
            msg = "no signature matches a configured secret"
            raise SignatureMismatchError(msg)
        keys = self._parse_cached(_lookup_key(found))
        return _checked(keys, headers, body, tolerance, now, max_signatures)

    def headers(
        self, msg_id: str, timestamp: int, body: bytes, receiver: ReceiverLike | None = None
    ) -> dict[str, str]:
        """``webhook-id``, ``webhook-timestamp`` and (when signed) ``webhook-signature``.

        Call once per attempt with the attempt's own ``timestamp`` and the same ``msg_id``.
        """
        headers = {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp)}
        signature = self.signature(msg_id, timestamp, body, receiver)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        return headers


_NOT_LOOKED_UP = object()


def _look_up_each(lookup: SecretLookup, receivers: Sequence[ReceiverLike]) -> list[Any]:
    """What ``lookup`` returned or raised for each receiver (run in a worker thread)."""
    found: list[Any] = []
    for receiver in receivers:
        try:
            found.append(lookup(receiver))
        except Exception as exc:  # raised again when this receiver is signed
            found.append(exc)
    return found


def sign_payload(
    body: bytes,
    secret: str | Sequence[str],
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The three ``webhook-*`` headers for ``body``: handy to build signed requests in tests.

    Args:
        body: The exact request body bytes.
        secret: The ``whsec_...`` secret, or several.
        msg_id: Defaults to [`new_message_id`][flnotify.signing.new_message_id].
        timestamp: Defaults to now.
    """
    return Signer(secret).headers(
        new_message_id() if msg_id is None else msg_id,
        int(time.time()) if timestamp is None else timestamp,
        body,
    )


# --------------------------------------------------------------------------- verifying


@attrs.frozen
class VerifiedMessage:
    """What a successful verification vouches for.

    Args:
        id: The ``webhook-id``.
        timestamp: The ``webhook-timestamp``, seconds since the epoch.
    """

    id: str
    timestamp: int


def _webhook_headers(
    headers: HeadersLike, max_signatures: int
) -> tuple[str | None, str | None, str | None]:
    """The id, timestamp and signature header values, names matched case-insensitively.

    Repeated signature headers are folded in linear time (collected, joined once) and
    refused once they carry more than ``max_signatures`` entries; a repeated id or
    timestamp is refused.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    msg_id: str | None = None
    timestamp: str | None = None
    signatures: list[str] = []
    entries = 0
    for name, value in items:
        key = name.lower()
        if key == SIGNATURE_HEADER:
            entries += len(value.split())
            if entries > max_signatures:
                raise MalformedHeaderError(key, f"more than {max_signatures} signatures")
            signatures.append(value)
        elif key == ID_HEADER:
            if msg_id is not None:
                raise MalformedHeaderError(key, "header appears more than once")
            msg_id = value
        elif key == TIMESTAMP_HEADER:
            if timestamp is not None:
                raise MalformedHeaderError(key, "header appears more than once")
            timestamp = value
    return msg_id, timestamp, " ".join(signatures) if signatures else None


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` entries; other versions and unparseable entries are skipped."""
    signatures = []
    for entry in header.split():
        version, sep, encoded = entry.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == _SIGNATURE_BYTES:
            signatures.append(raw)
    return signatures


@attrs.frozen(init=False, repr=False, eq=False)
class Verifier:
    """Checks the ``webhook-*`` headers of received requests; keys are parsed once, here.

    Every configured secret is tried against every ``v1,`` entry (constant-time compares),
    so during a rotation requests signed with the old or the new secret both pass. Entries
    of other versions (``v1a,...``) are ignored. The signature is checked before the
    timestamp, so a [`TimestampError`][flnotify.errors.TimestampError] always concerns a genuine
    message.

    Args:
        secrets: The ``whsec_...`` secret, or several during a rotation.
        tolerance: How many seconds the timestamp may lie before or after ``clock()``.
        clock: The receiver's wall clock (seconds since the epoch); inject one in tests.
        max_signatures: More ``webhook-signature`` entries than this (over all repeated
            headers) are refused unchecked, so a flood of them costs no HMAC compares.

    Raises:
        ConfigurationError: A secret is not a ``whsec_`` base64 string, the sequence is
            empty, ``tolerance`` is negative or ``max_signatures`` below 1.
    """

    _keys: tuple[Any, ...]
    tolerance: float
    clock: Callable[[], float]
    max_signatures: int

    def __init__(
        self,
        secrets: str | Sequence[str],
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        clock: Callable[[], float] = time.time,
        max_signatures: int = DEFAULT_MAX_SIGNATURES,
    ) -> None:
        if not tolerance >= 0:
            msg = f"tolerance must be a non-negative number of seconds, not {tolerance!r}"
            raise ConfigurationError(msg)
        if type(max_signatures) is not int or max_signatures < 1:
            msg = f"max_signatures must be a positive integer, not {max_signatures!r}"
            raise ConfigurationError(msg)
        self.__attrs_init__(_parse_secrets(secrets), float(tolerance), clock, max_signatures)

    def __repr__(self) -> str:
        return f"Verifier(<{len(self._keys)} secret(s)>, tolerance={self.tolerance})"

    def verify(
        self, headers: HeadersLike, body: bytes, *, now: float | None = None
    ) -> VerifiedMessage:
        """Check the signature and timestamp of one request.

        Args:
            headers: The request headers (a mapping or ``(name, value)`` pairs).
            body: The exact request body bytes.
            now: Overrides ``clock()`` for this call.

        Raises:
            MissingHeaderError: A ``webhook-*`` header is absent or empty.
            MalformedHeaderError: The timestamp is not an integer, the id or timestamp
                header is repeated, or the signature header has no parseable ``v1,`` entry
                or more than ``max_signatures`` entries.
            SignatureMismatchError: No ``v1,`` entry matches any secret.
            TimestampError: The timestamp is further than ``tolerance`` from now.
        """
        return _checked(
            self._keys,
            headers,
            body,
            self.tolerance,
            self.clock() if now is None else now,
            self.max_signatures,
        )


def _checked(
    keys: tuple[Any, ...],
    headers: HeadersLike,
    body: bytes,
    tolerance: float,
    current: float,
    max_signatures: int,
) -> VerifiedMessage:
    """Verify one request against ``keys``.

    See [`Verifier.verify`][flnotify.signing.Verifier.verify].
    """
    msg_id, raw_timestamp, header = _webhook_headers(headers, max_signatures)
    if not msg_id:
        raise MissingHeaderError(ID_HEADER)
    if not raw_timestamp:
        raise MissingHeaderError(TIMESTAMP_HEADER)
    if not header:
        raise MissingHeaderError(SIGNATURE_HEADER)
    raw_timestamp = raw_timestamp.strip()
    if not _TIMESTAMP.fullmatch(raw_timestamp):
        raise MalformedHeaderError(TIMESTAMP_HEADER, "not an integer number of seconds")
    timestamp = int(raw_timestamp)
    offered = _v1_signatures(header)
    if not offered:
        raise MalformedHeaderError(SIGNATURE_HEADER, "no parseable 'v1,<base64>' entry")
    matched = False
    for expected in _digests(keys, msg_id, raw_timestamp, body):
        for signature in offered:
            matched |= hmac.compare_digest(expected, signature)
    if not matched:
        msg = "no signature matches a configured secret"
        raise SignatureMismatchError(msg)
    if timestamp < current - tolerance:
        raise TimestampError(timestamp, current, too_old=True)
    if timestamp > current + tolerance:
        raise TimestampError(timestamp, current, too_old=False)
    return VerifiedMessage(id=msg_id, timestamp=timestamp)


def verify(
    headers: HeadersLike,
    body: bytes,
    secrets: str | Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> VerifiedMessage:
    """Verify one request in one call; see [`Verifier.verify`][flnotify.signing.Verifier.verify].

    Reuse one [`Verifier`][flnotify.signing.Verifier] instead to parse the secrets once.

    Args:
        headers: The request headers (a mapping or ``(name, value)`` pairs).
        body: The exact request body bytes.
        secrets: The ``whsec_...`` secret, or several during a rotation.
        tolerance: How many seconds the timestamp may lie from ``now``.
        now: The receiver's time; defaults to ``time.time()``.
    """
    return Verifier(secrets, tolerance=tolerance).verify(headers, body, now=now)


_UNKNOWN = _parse_secrets(generate_secret())
"""A random key no request matches: checked for receivers without one (equal timing)."""
