"""parse_notification: one call for a framework view wired by hand (like construct_event)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest

import flnotify
import flnotify.codec
from flnotify import RoundBody, TrainingRoundStartNotification, generate_secret
from flnotify.errors import (
    ConfigurationError,
    DecodeError,
    MalformedHeaderError,
    MissingHeaderError,
    RequestTooLargeError,
    SignatureMismatchError,
    TimestampError,
    UnknownNotificationTypeError,
    VerificationError,
)
from flnotify.receiving import ReceivedNotification, ReceivingLimits, parse_notification
from flnotify.signing import Verifier, sign_payload

SECRET = generate_secret()
ROUND = TrainingRoundStartNotification(
    receivers=(),
    body=RoundBody(round=3, global_model_uuid=UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")),
    training_uuid=UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01"),
)
BODY = flnotify.codec.encode(ROUND)


def signed(body: bytes = BODY, **kwargs: Any) -> dict[str, str]:
    return sign_payload(body, SECRET, msg_id="msg_view", **kwargs)


def test_returns_the_typed_notification_with_its_id() -> None:
    headers = {k.title(): v for k, v in signed(timestamp=1_700_000_000).items()}
    verifier = Verifier(SECRET, clock=lambda: 1_700_000_010.0)
    received = parse_notification(BODY, headers, verifier=verifier)
    assert received == ReceivedNotification(
        notification=ROUND,
        id="msg_view",
        timestamp=1_700_000_000,
        verified=True,
        headers={k.lower(): v for k, v in headers.items()},
    )
    assert isinstance(received.notification, TrainingRoundStartNotification)


def test_accepts_secrets_and_byte_header_pairs() -> None:
    pairs = [(k.encode(), v.encode()) for k, v in signed().items()]
    assert parse_notification(BODY, pairs, secrets=[generate_secret(), SECRET]).id == "msg_view"


@pytest.mark.parametrize(
    ("headers", "body", "error"),
    [  # headers are signed when the test runs: a timestamp made at collection could age out
        (dict, BODY, MissingHeaderError),
        (lambda: {**signed(), "webhook-timestamp": "soon"}, BODY, MalformedHeaderError),
        (signed, BODY + b" ", SignatureMismatchError),
        (lambda: signed(timestamp=1), BODY, TimestampError),
        (lambda: signed(b"{}"), b"{}", DecodeError),
        (
            lambda: signed(b'{"notification_type":"NOPE"}'),
            b'{"notification_type":"NOPE"}',
            UnknownNotificationTypeError,
        ),
        (lambda: signed(b"[" * 100 + b"]" * 100), b"[" * 100 + b"]" * 100, DecodeError),
    ],
)
def test_each_failure_raises_its_own_error(
    headers: Callable[[], dict[str, str]], body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_notification(body, headers(), secrets=SECRET)


def test_limits_raise_request_too_large() -> None:
    headers = signed()
    with pytest.raises(RequestTooLargeError) as caught:
        parse_notification(BODY, headers, secrets=SECRET, limits=ReceivingLimits(max_headers=2))
    assert (caught.value.limit, caught.value.maximum) == ("max_headers", 2)
    with pytest.raises(RequestTooLargeError, match="max_body_bytes"):
        parse_notification(BODY, headers, secrets=SECRET, limits=ReceivingLimits(max_body_bytes=10))
    flood = [*headers.items()] + [("webhook-signature", "v1,AAAA")] * 50
    with pytest.raises(MalformedHeaderError, match="more than 16 signatures"):
        parse_notification(BODY, flood, secrets=SECRET)
    assert issubclass(MalformedHeaderError, VerificationError)


def test_needs_exactly_one_of_secrets_and_verifier() -> None:
    with pytest.raises(ConfigurationError, match="either secrets= or verifier="):
        parse_notification(BODY, signed())
    with pytest.raises(ConfigurationError):
        parse_notification(BODY, signed(), secrets=SECRET, verifier=Verifier(SECRET))


def test_a_flask_style_view() -> None:
    # what a hand-wired view does: raw body and headers in, a status out
    def view(body: bytes, headers: dict[str, str]) -> int:
        try:
            received = parse_notification(body, headers, secrets=SECRET)
        except VerificationError:
            return 401
        except DecodeError:
            return 400
        except RequestTooLargeError:
            return 413
        assert received.id is not None
        return 202

    assert view(BODY, signed()) == 202
    assert view(BODY, {}) == 401
    assert view(b"nope", signed(b"nope")) == 400


def test_verifier_signature_cap_and_repeated_headers() -> None:
    with pytest.raises(ConfigurationError, match="max_signatures"):
        Verifier(SECRET, max_signatures=0)
    headers = signed(timestamp=1_700_000_000)
    verifier = Verifier(SECRET, max_signatures=3, clock=lambda: 1_700_000_000.0)
    rotation = [*headers.items(), ("Webhook-Signature", "v1,AAAA v1,BBBB")]
    assert verifier.verify(rotation, BODY).id == "msg_view"  # 3 entries: at the cap
    with pytest.raises(MalformedHeaderError, match="more than 3 signatures"):
        verifier.verify([*rotation, ("webhook-signature", "v1,CCCC")], BODY)
    with pytest.raises(MalformedHeaderError, match="more than once"):
        verifier.verify([*headers.items(), ("webhook-id", "msg_other")], BODY)
