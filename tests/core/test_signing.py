"""Standard Webhooks signing and verification (DESIGN §3), incl. interop with the reference."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from flnotify import Receiver, ReceiverLike, Signer, generate_secret
from flnotify.errors import (
    ConfigurationError,
    MalformedHeaderError,
    MissingHeaderError,
    SignatureMismatchError,
    TimestampError,
    VerificationError,
)
from flnotify.signing import VerifiedMessage, Verifier, new_message_id, sign_payload, verify

NOW = 1_700_000_000
BODY = b'{"notification_type":"TRAINING_START","body":{"global_model_uuid":"8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6"},"training_uuid":"5b1dabcd-ef01-4a23-8b45-6789abcdef01"}'  # noqa: E501
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


def signed(
    secret: str | Sequence[str] = NEW, *, body: bytes = BODY, ts: int = NOW
) -> dict[str, str]:
    return sign_payload(body, secret, msg_id=MSG_ID, timestamp=ts)


# ---------------------------------------------------------------- the signature itself


def test_signature_is_hmac_sha256_of_id_timestamp_body() -> None:
    expected = hmac.new(b"n" * 32, f"{MSG_ID}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    headers = signed()
    assert headers == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1," + base64.b64encode(expected).decode(),
    }


def test_verify_accepts_its_own_signature() -> None:
    result = verify(signed(), BODY, NEW, now=NOW)
    assert result == VerifiedMessage(id=MSG_ID, timestamp=NOW)


def test_header_names_are_case_insensitive_and_pairs_work() -> None:
    headers = {k.upper(): v for k, v in signed().items()}
    assert verify(headers, BODY, NEW, now=NOW).id == MSG_ID
    pairs = [(k.title(), v) for k, v in signed().items()] + [("Content-Type", "application/json")]
    assert verify(pairs, BODY, NEW, now=NOW).id == MSG_ID


def test_tampered_body_is_refused() -> None:
    with pytest.raises(SignatureMismatchError):
        verify(signed(), BODY.replace(b"TRAINING_START", b"TRAINING_FINISHED"), NEW, now=NOW)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp"])
def test_tampered_id_or_timestamp_is_refused(header: str) -> None:
    headers = signed()
    headers[header] = "msg_other" if header == "webhook-id" else str(NOW + 1)
    with pytest.raises(SignatureMismatchError):
        verify(headers, BODY, NEW, now=NOW)


def test_wrong_secret_is_refused_without_naming_it() -> None:
    with pytest.raises(SignatureMismatchError) as info:
        verify(signed(OLD), BODY, NEW, now=NOW)
    assert NEW not in str(info.value)
    assert NEW.removeprefix("whsec_") not in str(info.value)


# ---------------------------------------------------------------- rotation


def test_signed_with_new_verified_with_old_and_new() -> None:
    assert verify(signed(NEW), BODY, [OLD, NEW], now=NOW).id == MSG_ID
    assert verify(signed(OLD), BODY, [OLD, NEW], now=NOW).id == MSG_ID


def test_signed_with_both_verified_with_either() -> None:
    headers = signed([OLD, NEW])
    entries = headers["webhook-signature"].split(" ")
    assert len(entries) == 2
    assert all(e.startswith("v1,") for e in entries)
    assert verify(headers, BODY, OLD, now=NOW).id == MSG_ID
    assert verify(headers, BODY, NEW, now=NOW).id == MSG_ID


def test_a_repeated_secret_is_signed_once() -> None:
    assert len(signed([NEW, NEW])["webhook-signature"].split()) == 1


# ---------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("offset", "too_old"),
    [(-301, True), (-10_000, True), (301, False), (10_000, False)],
)
def test_timestamp_outside_tolerance(offset: int, too_old: bool) -> None:
    with pytest.raises(TimestampError) as info:
        verify(signed(ts=NOW + offset), BODY, NEW, now=NOW)
    assert info.value.too_old is too_old
    assert info.value.timestamp == NOW + offset


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_inside_tolerance(offset: int) -> None:
    assert verify(signed(ts=NOW + offset), BODY, NEW, now=NOW).timestamp == NOW + offset


def test_tolerance_is_configurable_and_verifier_clock_injectable() -> None:
    verifier = Verifier(NEW, tolerance=10, clock=lambda: NOW + 11.0)
    with pytest.raises(TimestampError):
        verifier.verify(signed(), BODY)
    assert verifier.verify(signed(), BODY, now=NOW + 10).id == MSG_ID
    with pytest.raises(ConfigurationError):
        Verifier(NEW, tolerance=-1)


def test_signature_is_checked_before_timestamp() -> None:
    # A forged old message is a signature problem, not a timestamp one.
    with pytest.raises(SignatureMismatchError):
        verify(signed(OLD, ts=NOW - 10_000), BODY, NEW, now=NOW)


# ---------------------------------------------------------------- malformed headers


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header(missing: str) -> None:
    headers = signed()
    del headers[missing]
    with pytest.raises(MissingHeaderError) as info:
        verify(headers, BODY, NEW, now=NOW)
    assert info.value.header == missing
    assert isinstance(info.value, VerificationError)


def test_empty_header_counts_as_missing() -> None:
    headers = signed()
    headers["webhook-id"] = ""
    with pytest.raises(MissingHeaderError):
        verify(headers, BODY, NEW, now=NOW)


@pytest.mark.parametrize(
    "value", ["soon", "1700000000.5", "-1700000000", "1e9", "\uff11\uff12\uff13", "9" * 40]
)
def test_malformed_timestamp(value: str) -> None:
    headers = signed()
    headers["webhook-timestamp"] = value
    with pytest.raises(MalformedHeaderError) as info:
        verify(headers, BODY, NEW, now=NOW)
    assert info.value.header == "webhook-timestamp"


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "v1",
        "v1,",
        "v1,not base64!",
        "v1,@@@@",
        "v1," + base64.b64encode(b"short").decode(),
        "v2," + base64.b64encode(b"x" * 32).decode(),
    ],
)
def test_malformed_signature_header(value: str) -> None:
    headers = signed()
    headers["webhook-signature"] = value
    with pytest.raises(MalformedHeaderError) as info:
        verify(headers, BODY, NEW, now=NOW)
    assert info.value.header == "webhook-signature"


def test_well_formed_but_wrong_signature_is_a_mismatch() -> None:
    headers = signed()
    headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(SignatureMismatchError):
        verify(headers, BODY, NEW, now=NOW)


def test_non_v1_and_broken_entries_are_ignored() -> None:
    headers = signed()
    good = headers["webhook-signature"]
    headers["webhook-signature"] = f"v1a,c29tZXRoaW5n v2,abc junk v1,!!! {good}"
    assert verify(headers, BODY, NEW, now=NOW).id == MSG_ID


def test_v1a_entry_alone_is_malformed() -> None:
    headers = signed()
    headers["webhook-signature"] = "v1a," + headers["webhook-signature"].removeprefix("v1,")
    with pytest.raises(MalformedHeaderError):
        verify(headers, BODY, NEW, now=NOW)


def test_repeated_signature_headers_are_combined_repeated_id_refused() -> None:
    headers = signed()
    pairs = [
        ("webhook-id", MSG_ID),
        ("webhook-timestamp", str(NOW)),
        ("webhook-signature", "v1," + base64.b64encode(b"x" * 32).decode()),
        ("Webhook-Signature", headers["webhook-signature"]),
    ]
    assert verify(pairs, BODY, NEW, now=NOW).id == MSG_ID
    with pytest.raises(MalformedHeaderError):
        verify([*pairs, ("webhook-id", "msg_other")], BODY, NEW, now=NOW)


# ---------------------------------------------------------------- secrets


def test_generate_secret_is_whsec_base64_and_random() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert generate_secret() != secret
    assert len(base64.b64decode(generate_secret(64)[6:])) == 64
    with pytest.raises(ConfigurationError):
        generate_secret(8)


def test_secret_without_prefix_and_unpadded_is_accepted() -> None:
    raw = NEW.removeprefix("whsec_")
    assert verify(signed(NEW), BODY, raw, now=NOW).id == MSG_ID
    assert verify(signed(NEW), BODY, raw.rstrip("="), now=NOW).id == MSG_ID
    assert verify(signed(raw.rstrip("=")), BODY, NEW, now=NOW).id == MSG_ID


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("", "empty"),
        ("whsec_", "empty"),
        ("   ", "empty"),
        ("whsec_not*base64!", "not valid base64"),
        ("whsec_abcde", "not valid base64"),  # 5 characters: no valid padding exists
        ("whsec_a-b_c", "not valid base64"),  # url-safe alphabet is not the spec's
        ("whsec_====", "not valid base64"),
        (b"whsec_abcd", "must be a string"),
        (42, "must be a string"),
        ("whsec_AAAA", "a secret needs at least 24 random bytes, not 3"),
        ("whsec_" + base64.b64encode(b"k" * 23).decode(), "at least 24 random bytes, not 23"),
    ],
)
def test_bad_secrets_name_the_problem_not_the_secret(secret: object, problem: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Signer(secret)  # type: ignore[arg-type]
    assert problem in str(info.value)
    if isinstance(secret, str) and len(secret.strip()) > 6:
        assert secret not in str(info.value)
        assert secret.removeprefix("whsec_") not in str(info.value)
    with pytest.raises(ConfigurationError):
        Verifier(secret)  # type: ignore[arg-type]


def test_bad_secret_in_a_list_names_its_index() -> None:
    with pytest.raises(ConfigurationError, match=r"secrets\[1\]"):
        Signer([NEW, "whsec_!!"])
    with pytest.raises(ConfigurationError, match="empty sequence"):
        Verifier([])
    with pytest.raises(ConfigurationError, match="must be a string"):
        Verifier(None)  # type: ignore[arg-type]


def test_reprs_do_not_leak_secrets() -> None:
    for obj in (Signer([OLD, NEW]), Verifier(NEW)):
        text = repr(obj)
        assert NEW.removeprefix("whsec_")[:10] not in text
        assert "2" in text or "1" in text


# ---------------------------------------------------------------- the Signer


def test_unsigned_signer_still_sends_id_and_timestamp() -> None:
    signer = Signer()
    assert not signer.signs
    assert signer.signature(MSG_ID, NOW, BODY) is None
    assert signer.headers(MSG_ID, NOW, BODY) == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
    }


def test_signer_headers_change_with_timestamp_only() -> None:
    signer = Signer(NEW)
    first = signer.headers(MSG_ID, NOW, BODY)
    retry = signer.headers(MSG_ID, NOW + 5, BODY)
    assert first["webhook-id"] == retry["webhook-id"]
    assert first["webhook-signature"] != retry["webhook-signature"]
    assert verify(retry, BODY, NEW, now=NOW + 5).timestamp == NOW + 5


ALICE = Receiver(UUID("a11ce000-0000-4000-8000-00000000000a"), "http://alice.example/msg")
BOB = Receiver(UUID("b0b00000-0000-4000-8000-00000000000b"), "http://bob.example/msg")
CAROL = Receiver(UUID("ca201000-0000-4000-8000-00000000000c"), "http://carol.example/msg")


def test_signer_lookup_per_receiver_with_shared_fallback() -> None:
    alice_secret, bob_secrets = generate_secret(), [OLD, NEW]
    calls: list[UUID] = []

    def lookup(receiver: ReceiverLike) -> str | Sequence[str] | None:
        calls.append(receiver.id)
        return {ALICE.id: alice_secret, BOB.id: bob_secrets}.get(receiver.id)

    shared = generate_secret()
    signer = Signer(shared, lookup=lookup)
    for _ in range(3):
        alice = signer.headers(MSG_ID, NOW, BODY, ALICE)
        bob = signer.headers(MSG_ID, NOW, BODY, BOB)
        carol = signer.headers(MSG_ID, NOW, BODY, CAROL)
    assert verify(alice, BODY, alice_secret, now=NOW).id == MSG_ID
    with pytest.raises(SignatureMismatchError):
        verify(alice, BODY, shared, now=NOW)
    assert len(bob["webhook-signature"].split()) == 2
    assert verify(bob, BODY, OLD, now=NOW).id == MSG_ID
    assert verify(carol, BODY, shared, now=NOW).id == MSG_ID  # lookup said None: shared
    assert verify(signer.headers(MSG_ID, NOW, BODY), BODY, shared, now=NOW).id == MSG_ID
    assert len(calls) == 9


def test_signer_lookup_without_shared_secret_leaves_unknown_receivers_unsigned() -> None:
    signer = Signer(lookup=lambda r: NEW if r.id == ALICE.id else None)
    assert signer.signs
    assert "webhook-signature" in signer.headers(MSG_ID, NOW, BODY, ALICE)
    assert "webhook-signature" not in signer.headers(MSG_ID, NOW, BODY, BOB)


def test_signer_lookup_returning_a_bad_secret_raises() -> None:
    with pytest.raises(ConfigurationError):
        Signer(lookup=lambda r: "whsec_!!").headers(MSG_ID, NOW, BODY, ALICE)
    with pytest.raises(ConfigurationError):
        Signer(lookup=lambda r: 42).headers(MSG_ID, NOW, BODY, ALICE)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError):
        Signer(lookup="not callable")  # type: ignore[arg-type]


def test_message_ids_are_unique_and_header_safe() -> None:
    ids = {new_message_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for message_id in list(ids)[:100]:
        assert message_id.startswith("msg_")
        assert re.fullmatch(r"msg_[0-9a-f]{32}", message_id)


def test_sign_payload_defaults_to_a_fresh_id_and_now() -> None:
    headers = sign_payload(BODY, NEW)
    assert headers["webhook-id"].startswith("msg_")
    assert verify(headers, BODY, NEW).id == headers["webhook-id"]


# ---------------------------------------------------------------- interop with the reference


def test_reference_package_verifies_our_signatures() -> None:
    headers = sign_payload(BODY, [OLD, NEW])
    assert Webhook(NEW).verify(BODY, headers) == Webhook(OLD).verify(BODY, headers)
    assert Webhook(NEW.removeprefix("whsec_")).verify(BODY, headers)["notification_type"] == (
        "TRAINING_START"
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_we_verify_the_reference_packages_signatures() -> None:
    reference = Webhook(NEW)
    when = datetime.fromtimestamp(NOW, tz=timezone.utc)
    signature = reference.sign(MSG_ID, when, BODY.decode())
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(NOW), "webhook-signature": signature}
    assert verify(headers, BODY, NEW, now=NOW) == VerifiedMessage(MSG_ID, NOW)
    assert verify(headers, BODY, [OLD, NEW], now=NOW).id == MSG_ID
    with pytest.raises(SignatureMismatchError):
        verify(headers, BODY, OLD, now=NOW)


def test_reference_and_we_agree_on_secrets_from_generate_secret() -> None:
    secret = generate_secret()
    when = datetime.fromtimestamp(NOW, tz=timezone.utc)
    theirs = Webhook(secret).sign(MSG_ID, when, BODY.decode())
    assert Signer(secret).signature(MSG_ID, NOW, BODY) == theirs


def test_one_minimum_length_for_given_and_generated_secrets() -> None:
    """24 bytes is enough for Signer, Verifier and generate_secret; 23 never is."""
    shortest = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert Verifier(shortest).verify(Signer(shortest).headers(MSG_ID, NOW, BODY), BODY, now=NOW)
    with pytest.raises(ConfigurationError) as given:
        Signer("whsec_" + base64.b64encode(b"k" * 23).decode())
    with pytest.raises(ConfigurationError) as generated:
        generate_secret(23)
    assert str(given.value) == str(generated.value)


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=24, max_size=200),
    msg_id=st.text(min_size=1, max_size=40),
    timestamp=st.integers(min_value=0, max_value=2**40),
    body=st.binary(max_size=300),
)
def test_signatures_are_hmac_sha256_for_any_key_length(
    key: bytes, msg_id: str, timestamp: int, body: bytes
) -> None:
    # The signer keeps HMAC's keyed hash states and copies them per message; keys longer
    # than SHA-256's block are hashed first, as RFC 2104 says. Both signing paths agree
    # with the standard library's hmac for every key length.
    secret = "whsec_" + base64.b64encode(key).decode()
    signer = Signer(secret)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert signer.signature(msg_id, timestamp, body) == expected
    assert signer.prepared(body)(msg_id, str(timestamp), None) == expected
