"""The mailbox's wire format, shared by the server's app and the client's poller.

A client behind NAT talks to the mailbox app with two JSON requests, each signed the
Standard Webhooks way with the client's own secret (``webhook-id`` is a fresh request
nonce, ``webhook-timestamp`` the time of the request)::

    POST {base}/fetch  {"op": "fetch", "client": "<uuid>", "wait": 25, "max": 100}
    200                {"messages": [{"headers": {...}, "body": "<base64>"}, ...]}

    POST {base}/ack    {"op": "ack", "client": "<uuid>", "acks": [{"id": "msg_...", "status": 204}]}
    200                {"accepted": 1}

Each fetched message carries exactly what a push carries: the body bytes (base64, so they
come back byte for byte) and the ``content-type``, ``user-agent``, ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature`` headers. Every parser here treats its
input as hostile: a bad document raises
[`MailboxProtocolError`][flnotify.errors.MailboxProtocolError] naming what is wrong, never
anything else.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import attrs

from .._exceptions import MailboxProtocolError

__all__ = [
    "ACK_PATH",
    "FETCH_PATH",
    "MAILBOX_ENDPOINT",
    "MAX_MESSAGE_HEADERS",
    "Ack",
    "FetchAnswer",
    "FetchRequest",
    "MailboxProtocolError",
    "WireMessage",
    "ack_document",
    "fetch_document",
    "is_mailbox",
    "messages_document",
    "parse_ack",
    "parse_answer",
    "parse_fetch",
    "parse_messages",
]

MAILBOX_ENDPOINT = "mailbox:"
"""The ``message_endpoint`` of a receiver that polls a mailbox instead of being pushed to."""

FETCH_PATH = "/fetch"
ACK_PATH = "/ack"
MAX_MESSAGE_HEADERS = 32
"""Most headers one fetched message may carry (a push carries five or six)."""

_ID = re.compile(r"[\x21-\x7e]{1,256}")  # a webhook-id: printable ASCII, no spaces


def is_mailbox(endpoint: str) -> bool:
    """Whether ``endpoint`` marks a polling receiver (exactly ``"mailbox:"``)."""
    return endpoint == MAILBOX_ENDPOINT


@attrs.frozen
class FetchRequest:
    """A client's request for its pending messages.

    Args:
        client: The client's (receiver's) id.
        wait: Seconds the server may hold the request open while the mailbox is empty.
        max: Most messages to return.
        acks: Acknowledgements of earlier messages, carried by this fetch.
    """

    client: UUID
    wait: float
    max: int
    acks: tuple[Ack, ...] = ()


@attrs.frozen
class Ack:
    """One acknowledgement: the status the client's handler answered a message with."""

    id: str
    status: int


@attrs.frozen
class WireMessage:
    """One fetched message: the headers and body bytes a push would have carried."""

    headers: Mapping[str, str]
    body: bytes

    @property
    def id(self) -> str:
        """Its ``webhook-id``."""
        return self.headers.get("webhook-id", "")


def _brief(value: object, width: int = 40) -> str:
    """A short description of a hostile value for an error message (no deep ``repr``)."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON array"
    return f"{value!r:.{width}}"


def _dumps(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode()


def _loads(raw: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        msg = f"the {what} is not JSON: {exc}"
        raise MailboxProtocolError(msg) from None
    if not isinstance(document, dict):
        msg = f"the {what} is not a JSON object"
        raise MailboxProtocolError(msg)
    return document


def _client(document: Mapping[str, Any], what: str) -> UUID:
    value = document.get("client")
    if not isinstance(value, str) or len(value) > 64:
        msg = f"the {what} has no client id"
        raise MailboxProtocolError(msg)
    try:
        return UUID(value)
    except ValueError:
        msg = f"the {what}'s client id {value[:64]!r} is not a UUID"
        raise MailboxProtocolError(msg) from None


def _op(document: Mapping[str, Any], op: str, what: str) -> None:
    if document.get("op") != op:
        msg = f"the {what} is not an {op!r} request (op={_brief(document.get('op'))})"
        raise MailboxProtocolError(msg)


# -- fetch --------------------------------------------------------------------------------


def fetch_document(client: UUID, wait: float, max_messages: int, acks: Sequence[Ack] = ()) -> bytes:
    """The body of a fetch request (carrying ``acks``, if any)."""
    document: dict[str, Any] = {"op": "fetch", "client": str(client), "wait": wait}
    document["max"] = max_messages
    if acks:
        document["acks"] = _ack_items(acks)
    return _dumps(document)


def parse_fetch(raw: bytes, *, max_acks: int = 1000) -> FetchRequest:
    """A fetch request's body, checked.

    Raises:
        MailboxProtocolError: It is not JSON, not a fetch, a field is missing or wrong, or
            it carries more than ``max_acks`` acknowledgements.
    """
    document = _loads(raw, "fetch request")
    _op(document, "fetch", "fetch request")
    client = _client(document, "fetch request")
    wait = document.get("wait", 0)
    if type(wait) is int and wait >= 0:  # any size: one beyond a float waits the longest
        seconds = float(min(wait, sys.float_info.max))
    elif type(wait) is float and math.isfinite(wait) and wait >= 0:
        seconds = wait
    else:
        msg = f"'wait' must be a number of seconds >= 0, not {_brief(wait)}"
        raise MailboxProtocolError(msg)
    most = document.get("max", 1)
    if type(most) is not int or most < 1:
        msg = f"'max' must be an integer >= 1, not {_brief(most)}"
        raise MailboxProtocolError(msg)
    if "acks" not in document:
        return FetchRequest(client, seconds, most)
    return FetchRequest(client, seconds, most, tuple(_parse_acks(document["acks"], max_acks)))


def messages_document(messages: Sequence[WireMessage], *, takes_acks: bool = True) -> bytes:
    """The body of a fetch answer; ``takes_acks``: the app takes acks carried by fetches.

    Compact JSON, as ``json.dumps`` writes it. A send offers one body to all its clients:
    its base64 text is made once (and kept for the next few bodies), not once per offer.
    """
    items = b",".join(
        b'{"headers":' + _dumps(dict(m.headers)) + b',"body":"' + _base64(m.body) + b'"}'
        for m in messages
    )
    return b'{"messages":[' + items + (b'],"takes_acks":true}' if takes_acks else b"]}")


@functools.lru_cache(maxsize=32)
def _base64(body: bytes) -> bytes:
    """``body`` in base64 (no JSON escaping needed: its alphabet is plain ASCII)."""
    return base64.b64encode(body)


@attrs.frozen
class FetchAnswer:
    """A fetch answer, checked.

    Args:
        messages: The messages handed out.
        takes_acks: Whether the app takes acknowledgements carried by a fetch.
    """

    messages: list[WireMessage]
    takes_acks: bool


def parse_answer(raw: bytes, *, max_messages: int) -> FetchAnswer:
    """A fetch answer: its messages (see `parse_messages`) and whether the app takes acks.

    Raises:
        MailboxProtocolError: The answer is not a well-formed list of messages.
    """
    messages, document = _messages(raw, max_messages)
    return FetchAnswer(messages, document.get("takes_acks") is True)


def parse_messages(raw: bytes, *, max_messages: int) -> list[WireMessage]:
    """A fetch answer's messages, checked (the server may be anyone's).

    Args:
        raw: The answer's body.
        max_messages: More messages than this (what was asked for) is refused.

    Raises:
        MailboxProtocolError: The answer is not a well-formed list of messages.
    """
    return _messages(raw, max_messages)[0]


def _messages(raw: bytes, max_messages: int) -> tuple[list[WireMessage], dict[str, Any]]:
    document = _loads(raw, "fetch answer")
    items = document.get("messages")
    if not isinstance(items, list):
        msg = "the fetch answer has no 'messages' list"
        raise MailboxProtocolError(msg)
    if len(items) > max_messages:
        msg = f"the fetch answer has {len(items)} messages, more than the {max_messages} asked for"
        raise MailboxProtocolError(msg)
    messages = []
    for index, item in enumerate(items):
        headers = item.get("headers") if isinstance(item, dict) else None
        body = item.get("body") if isinstance(item, dict) else None
        if (
            not isinstance(headers, dict)
            or len(headers) > MAX_MESSAGE_HEADERS
            or not all(type(k) is str and type(v) is str for k, v in headers.items())
        ):
            msg = f"message {index} has no valid 'headers' object of strings"
            raise MailboxProtocolError(msg)
        if not isinstance(body, str):
            msg = f"message {index} has no base64 'body' string"
            raise MailboxProtocolError(msg)
        try:
            data = base64.b64decode(body.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            msg = f"message {index}'s body is not base64"
            raise MailboxProtocolError(msg) from None
        lowered = {k.lower(): v for k, v in headers.items()}
        if not _ID.fullmatch(lowered.get("webhook-id", "")):
            msg = f"message {index} has no valid 'webhook-id' header"
            raise MailboxProtocolError(msg)
        messages.append(WireMessage(lowered, data))
    return messages, document


# -- ack ----------------------------------------------------------------------------------


def ack_document(client: UUID, acks: Sequence[Ack]) -> bytes:
    """The body of an acknowledgement request."""
    return _dumps({"op": "ack", "client": str(client), "acks": _ack_items(acks)})


def _ack_items(acks: Sequence[Ack]) -> list[dict[str, Any]]:
    return [{"id": a.id, "status": a.status} for a in acks]


def parse_ack(raw: bytes, *, max_acks: int) -> tuple[UUID, list[Ack]]:
    """An acknowledgement request's client and acknowledgements, checked.

    Raises:
        MailboxProtocolError: It is not JSON, not an ack, has more than ``max_acks``
            entries, or an entry is not an id with a status from 100 to 599.
    """
    document = _loads(raw, "ack request")
    _op(document, "ack", "ack request")
    client = _client(document, "ack request")
    return client, _parse_acks(document.get("acks"), max_acks)


def _parse_acks(items: object, max_acks: int) -> list[Ack]:
    """The acknowledgements of an ack request or a fetch, checked."""
    if not isinstance(items, list) or len(items) > max_acks:
        msg = f"'acks' must be a list of at most {max_acks} acknowledgements"
        raise MailboxProtocolError(msg)
    acks = []
    for index, item in enumerate(items):
        mid = item.get("id") if isinstance(item, dict) else None
        status = item.get("status") if isinstance(item, dict) else None
        if not isinstance(mid, str) or not _ID.fullmatch(mid):
            msg = f"acknowledgement {index} has no valid message id"
            raise MailboxProtocolError(msg)
        if type(status) is not int or not 100 <= status <= 599:
            msg = f"acknowledgement {index}'s status {_brief(status, 20)} is not an HTTP status"
            raise MailboxProtocolError(msg)
        acks.append(Ack(mid, status))
    return acks
