"""Wire format v1 (DESIGN §1): golden bytes, round trips, decode errors, the registry."""

from __future__ import annotations

import enum
import json
import types
from collections.abc import Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.codec
from flnotify import (
    ClientRemovedBody,
    ClientRemovedNotification,
    GlobalModelBody,
    Notification,
    NotificationType,
    Receiver,
    RoundBody,
    TrainingFinishedNotification,
    TrainingModelTestNotification,
    TrainingNotification,
    TrainingRoundStartNotification,
    TrainingStartNotification,
    TrainingSWAGRoundStartNotification,
)
from flnotify.codec import Codec, NotificationRegistry
from flnotify.errors import (
    ConfigurationError,
    DecodeError,
    FlnotifyError,
    UnknownNotificationTypeError,
)

if TYPE_CHECKING:
    from decimal import Decimal  # only the type checker imports it

# Built from upper-case strings: the wire must carry the canonical lower-case form.
TRAINING_ID = UUID("5B1DABCD-EF01-4A23-8B45-6789ABCDEF01")
MODEL_ID = UUID("8C0E2F4A-1B3C-4D5E-9F60-A1B2C3D4E5F6")
CLIENT_ID = UUID("C1E2A3B4-D5F6-4789-ABCD-EF0123456789")
RECEIVERS = (
    Receiver(UUID("a11ce000-0000-4000-8000-00000000000a"), "http://alice.example:8000/msg"),
    Receiver(UUID("b0b00000-0000-4000-8000-00000000000b"), "https://bob.example/msg"),
)

# Deterministic property tests: the same examples every run, no example database on disk.
deterministic = settings(derandomize=True, database=None, deadline=None, max_examples=50)


# --- A user-defined notification type -----------------------------------------------------


class EvalType(enum.Enum):
    """A host app's own notification types, built like NotificationType: (wire, description)."""

    MODEL_EVAL = ("MODEL_EVAL", "Evaluate model")

    _value_: str
    description: str

    def __new__(cls, wire: str, description: str) -> EvalType:
        member = object.__new__(cls)
        member._value_ = wire
        member.description = description
        return member


@attrs.frozen
class EvalBody:
    metric: str
    top_k: int = attrs.field(default=1, validator=attrs.validators.ge(1))


@attrs.frozen
class EvalNotification(TrainingNotification[EvalBody]):
    notification_type = EvalType.MODEL_EVAL


def eval_registry() -> NotificationRegistry:
    registry = flnotify.codec.default_registry().copy()
    registry.register(EvalNotification)
    return registry


# --- Golden bytes -------------------------------------------------------------------------

GOLDEN: list[tuple[Notification[Any], bytes]] = [
    (
        TrainingStartNotification(
            receivers=RECEIVERS,
            body=GlobalModelBody(global_model_uuid=MODEL_ID),
            training_uuid=TRAINING_ID,
        ),
        b'{"notification_type":"TRAINING_START",'
        b'"body":{"global_model_uuid":"8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6"},'
        b'"training_uuid":"5b1dabcd-ef01-4a23-8b45-6789abcdef01"}',
    ),
    (
        TrainingRoundStartNotification(
            receivers=RECEIVERS,
            body=RoundBody(round=3, global_model_uuid=MODEL_ID),
            training_uuid=TRAINING_ID,
        ),
        b'{"notification_type":"UPDATE_ROUND_START",'
        b'"body":{"round":3,"global_model_uuid":"8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6"},'
        b'"training_uuid":"5b1dabcd-ef01-4a23-8b45-6789abcdef01"}',
    ),
    (
        TrainingSWAGRoundStartNotification(
            receivers=RECEIVERS,
            body=RoundBody(round=12, global_model_uuid=MODEL_ID),
            training_uuid=TRAINING_ID,
        ),
        b'{"notification_type":"SWAG_ROUND_START",'
        b'"body":{"round":12,"global_model_uuid":"8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6"},'
        b'"training_uuid":"5b1dabcd-ef01-4a23-8b45-6789abcdef01"}',
    ),
    (
        TrainingModelTestNotification(
            receivers=RECEIVERS,
            body=RoundBody(round=0, global_model_uuid=MODEL_ID),
            training_uuid=TRAINING_ID,
        ),
        b'{"notification_type":"MODEL_TEST_ROUND",'
        b'"body":{"round":0,"global_model_uuid":"8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6"},'
        b'"training_uuid":"5b1dabcd-ef01-4a23-8b45-6789abcdef01"}',
    ),
    (
        TrainingFinishedNotification(
            receivers=RECEIVERS,
            body=GlobalModelBody(global_model_uuid=MODEL_ID),
            training_uuid=TRAINING_ID,
        ),
        b'{"notification_type":"TRAINING_FINISHED",'
        b'"body":{"global_model_uuid":"8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6"},'
        b'"training_uuid":"5b1dabcd-ef01-4a23-8b45-6789abcdef01"}',
    ),
    (
        ClientRemovedNotification(
            receivers=RECEIVERS,
            body=ClientRemovedBody(client_uuid=CLIENT_ID, reason="missed round 3"),
            training_uuid=TRAINING_ID,
        ),
        b'{"notification_type":"CLIENT_REMOVED",'
        b'"body":{"client_uuid":"c1e2a3b4-d5f6-4789-abcd-ef0123456789",'
        b'"reason":"missed round 3"},'
        b'"training_uuid":"5b1dabcd-ef01-4a23-8b45-6789abcdef01"}',
    ),
]
GOLDEN_IDS = [type(n).__name__ for n, _ in GOLDEN]


@pytest.mark.parametrize(("notification", "golden"), GOLDEN, ids=GOLDEN_IDS)
def test_encode_matches_golden_bytes(notification: Notification[Any], golden: bytes) -> None:
    assert flnotify.codec.encode(notification) == golden


@pytest.mark.parametrize(("notification", "golden"), GOLDEN, ids=GOLDEN_IDS)
def test_codec_instance_encodes_the_same(notification: Notification[Any], golden: bytes) -> None:
    assert Codec().encode(notification) == golden


@pytest.mark.parametrize(("notification", "golden"), GOLDEN, ids=GOLDEN_IDS)
@pytest.mark.parametrize(
    "as_input",
    [
        lambda g: g,
        lambda g: g.decode("utf-8"),
        lambda g: json.loads(g),
        lambda g: types.MappingProxyType(json.loads(g)),
    ],
    ids=["bytes", "str", "dict", "mapping"],
)
def test_decode_golden_gives_the_notification_without_receivers(
    notification: Notification[Any], golden: bytes, as_input: Any
) -> None:
    decoded = flnotify.codec.decode(as_input(golden))
    assert type(decoded) is type(notification)
    assert decoded.receivers == ()  # receivers never travel
    assert decoded == notification.with_receivers(())


def test_the_design_example_decodes() -> None:
    # DESIGN §1's example, with whitespace and line breaks as a client might see from others.
    data = (
        '{"notification_type": "UPDATE_ROUND_START",\n'
        ' "body": {"round": 3, "global_model_uuid": "8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6"},\n'
        ' "training_uuid": "5b1dabcd-ef01-4a23-8b45-6789abcdef01"}'
    )
    n = flnotify.codec.decode(data)
    assert isinstance(n, TrainingRoundStartNotification)
    assert n.body == RoundBody(round=3, global_model_uuid=MODEL_ID)
    assert n.training_uuid == TRAINING_ID


def test_decode_accepts_upper_case_uuids_and_ignores_unknown_keys() -> None:
    data = {
        "notification_type": "TRAINING_START",
        "body": {"global_model_uuid": str(MODEL_ID).upper(), "future_body_field": 1},
        "training_uuid": str(TRAINING_ID).upper(),
        "message_id": "added-in-a-later-version",
    }
    n = flnotify.codec.decode(data)
    assert n == TrainingStartNotification(
        receivers=(), body=GlobalModelBody(MODEL_ID), training_uuid=TRAINING_ID
    )


def test_client_removed_reason_is_optional_on_the_wire() -> None:
    data = {
        "notification_type": "CLIENT_REMOVED",
        "body": {"client_uuid": str(CLIENT_ID)},
        "training_uuid": str(TRAINING_ID),
    }
    n = flnotify.codec.decode(data)
    assert isinstance(n, ClientRemovedNotification)
    assert n.body == ClientRemovedBody(client_uuid=CLIENT_ID, reason="")


def test_non_ascii_text_round_trips_as_utf8() -> None:
    n = ClientRemovedNotification(
        receivers=(),
        body=ClientRemovedBody(client_uuid=CLIENT_ID, reason="Zeitüberschreitung ⏱"),
        training_uuid=TRAINING_ID,
    )
    encoded = flnotify.codec.encode(n)
    assert json.loads(encoded.decode("utf-8"))["body"]["reason"] == "Zeitüberschreitung ⏱"
    assert flnotify.codec.decode(encoded) == n


def test_to_dict_is_the_json_ready_document_in_wire_order() -> None:
    notification, golden = GOLDEN[1]
    document = Codec().to_dict(notification)
    assert document == json.loads(golden)
    assert list(document) == ["notification_type", "body", "training_uuid"]


# --- Round-trip properties ----------------------------------------------------------------

uuids = st.uuids()
rounds = st.integers(min_value=0)  # unbounded: JSON numbers carry big ints exactly
receivers = st.lists(st.builds(Receiver, id=uuids, message_endpoint=st.text()), max_size=3)


RoundClass = (
    type[TrainingRoundStartNotification]
    | type[TrainingSWAGRoundStartNotification]
    | type[TrainingModelTestNotification]
)


def round_notifications(cls: RoundClass) -> st.SearchStrategy[Any]:
    return st.builds(
        cls,
        receivers=receivers,
        body=st.builds(RoundBody, round=rounds, global_model_uuid=uuids),
        training_uuid=uuids,
    )


def model_notifications(
    cls: type[TrainingStartNotification] | type[TrainingFinishedNotification],
) -> st.SearchStrategy[Any]:
    return st.builds(
        cls,
        receivers=receivers,
        body=st.builds(GlobalModelBody, global_model_uuid=uuids),
        training_uuid=uuids,
    )


STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "TrainingStart": model_notifications(TrainingStartNotification),
    "TrainingRoundStart": round_notifications(TrainingRoundStartNotification),
    "TrainingSWAGRoundStart": round_notifications(TrainingSWAGRoundStartNotification),
    "TrainingModelTest": round_notifications(TrainingModelTestNotification),
    "TrainingFinished": model_notifications(TrainingFinishedNotification),
    "ClientRemoved": st.builds(
        ClientRemovedNotification,
        receivers=receivers,
        body=st.builds(ClientRemovedBody, client_uuid=uuids, reason=st.text()),
        training_uuid=uuids,
    ),
}


def assert_wire_shape(encoded: bytes, n: Notification[Any]) -> None:
    document = json.loads(encoded.decode("utf-8"))  # valid UTF-8 and valid JSON
    assert list(document) == ["notification_type", "body", "training_uuid"]
    assert document["notification_type"] == n.notification_type.value
    assert document["training_uuid"] == str(getattr(n, "training_uuid"))  # noqa: B009
    # compact: nothing but the separators json.dumps writes with (",", ":")
    assert encoded == json.dumps(document, separators=(",", ":")).encode()


@pytest.mark.parametrize("name", list(STRATEGIES))
@deterministic
@given(data=st.data())
def test_round_trip(name: str, data: st.DataObject) -> None:
    n = data.draw(STRATEGIES[name])
    encoded = flnotify.codec.encode(n)
    assert_wire_shape(encoded, n)
    decoded = flnotify.codec.decode(encoded)
    assert decoded == n.with_receivers(())
    assert type(decoded) is type(n)


@deterministic
@given(
    n=st.builds(
        EvalNotification,
        receivers=receivers,
        body=st.builds(EvalBody, metric=st.text(), top_k=st.integers(min_value=1)),
        training_uuid=uuids,
    )
)
def test_round_trip_user_defined(n: EvalNotification) -> None:
    codec = Codec(registry=eval_registry())
    encoded = codec.encode(n)
    assert_wire_shape(encoded, n)
    assert codec.decode(encoded) == n.with_receivers(())


# --- Decode errors ------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "notification_type": "UPDATE_ROUND_START",
    "body": {"round": 3, "global_model_uuid": "8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6"},
    "training_uuid": "5b1dabcd-ef01-4a23-8b45-6789abcdef01",
}
_DROP = object()


def doc(**changes: Any) -> bytes:
    """GOOD with top-level keys replaced (or dropped with ``_DROP``), as wire bytes."""
    document = {**GOOD, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not _DROP}).encode()


def body(**changes: Any) -> bytes:
    """GOOD with body fields replaced (or dropped with ``_DROP``), as wire bytes."""
    merged = {**GOOD["body"], **changes}
    return doc(body={k: v for k, v in merged.items() if v is not _DROP})


DECODE_ERRORS = [
    pytest.param(b'{"notification_type": ', DecodeError, "$", "JSON", id="invalid-json"),
    pytest.param(b"", DecodeError, "$", "JSON", id="empty"),
    pytest.param(b'{"a": "\xff"}', DecodeError, "$", "utf-8", id="invalid-utf8"),
    pytest.param(b"[1, 2]", DecodeError, "$", "array", id="array"),
    pytest.param(b"42", DecodeError, "$", "number", id="number"),
    pytest.param(b"null", DecodeError, "$", "null", id="null"),
    pytest.param(b'"TRAINING_START"', DecodeError, "$", "string", id="string"),
    pytest.param(
        doc(notification_type=_DROP),
        DecodeError,
        "$.notification_type",
        "missing",
        id="missing-notification_type",
    ),
    pytest.param(
        doc(notification_type=5),
        DecodeError,
        "$.notification_type",
        "string",
        id="notification_type-number",
    ),
    pytest.param(
        doc(notification_type=None),
        DecodeError,
        "$.notification_type",
        "null",
        id="notification_type-null",
    ),
    pytest.param(
        doc(notification_type="UPDATE_ROUND_STARTED"),
        UnknownNotificationTypeError,
        "$.notification_type",
        "unknown",
        id="unknown-type",
    ),
    pytest.param(
        doc(notification_type="update_round_start"),
        UnknownNotificationTypeError,
        "$.notification_type",
        "unknown",
        id="type-is-case-sensitive",
    ),
    pytest.param(doc(body=_DROP), DecodeError, "$.body", "missing", id="missing-body"),
    pytest.param(doc(body=[3]), DecodeError, "$.body", "object", id="body-array"),
    pytest.param(doc(body="x"), DecodeError, "$.body", "object", id="body-string"),
    pytest.param(doc(body=None), DecodeError, "$.body", "object", id="body-null"),
    pytest.param(body(round=_DROP), DecodeError, "$.body.round", "missing", id="missing-round"),
    pytest.param(
        body(global_model_uuid=_DROP),
        DecodeError,
        "$.body.global_model_uuid",
        "missing",
        id="missing-global_model_uuid",
    ),
    pytest.param(body(round="3"), DecodeError, "$.body.round", "integer", id="round-string"),
    pytest.param(body(round=True), DecodeError, "$.body.round", "integer", id="round-bool"),
    pytest.param(body(round=-1), DecodeError, "$.body.round", ">= 0", id="round-negative"),
    pytest.param(body(round=3.0), DecodeError, "$.body.round", "integer", id="round-float"),
    pytest.param(body(round=None), DecodeError, "$.body.round", "integer", id="round-null"),
    pytest.param(
        body(global_model_uuid="8c0e2f4a"),
        DecodeError,
        "$.body.global_model_uuid",
        "malformed UUID",
        id="malformed-uuid",
    ),
    pytest.param(
        body(global_model_uuid=7),
        DecodeError,
        "$.body.global_model_uuid",
        "UUID",
        id="uuid-number",
    ),
    pytest.param(
        doc(training_uuid=_DROP),
        DecodeError,
        "$.training_uuid",
        "missing",
        id="missing-training_uuid",
    ),
    pytest.param(
        doc(training_uuid="not-a-uuid"),
        DecodeError,
        "$.training_uuid",
        "malformed UUID",
        id="malformed-training_uuid",
    ),
    pytest.param(
        doc(training_uuid=None),
        DecodeError,
        "$.training_uuid",
        "UUID",
        id="training_uuid-null",
    ),
    pytest.param(
        json.dumps(
            {
                "notification_type": "CLIENT_REMOVED",
                "body": {"client_uuid": str(CLIENT_ID), "reason": 3},
                "training_uuid": str(TRAINING_ID),
            }
        ),
        DecodeError,
        "$.body.reason",
        "string",
        id="reason-number",
    ),
]


@pytest.mark.parametrize(("data", "error", "path", "word"), DECODE_ERRORS)
def test_decode_error(data: bytes | str, error: type[DecodeError], path: str, word: str) -> None:
    with pytest.raises(DecodeError) as info:
        flnotify.codec.decode(data)
    e = info.value
    assert type(e) is error  # exactly this class: no bare KeyError/TypeError escaped
    assert isinstance(e, FlnotifyError)
    assert isinstance(e, ValueError)
    assert e.path == path
    assert word.lower() in e.problem.lower()
    assert e.data is data  # the raw input is kept for logging
    assert str(e) == f"{path}: {e.problem}"


def test_unknown_type_keeps_the_raw_data() -> None:
    raw = doc(notification_type="MODEL_EVAL")
    with pytest.raises(UnknownNotificationTypeError) as info:
        flnotify.codec.decode(raw)
    assert info.value.data == raw
    assert info.value.notification_type == "MODEL_EVAL"
    assert "MODEL_EVAL" in str(info.value)


def test_decode_errors_keep_their_cause() -> None:
    with pytest.raises(DecodeError) as info:
        flnotify.codec.decode(b"{")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["notification_type", "body", "training_uuid"]
BODY_FIELDS = ["round", "global_model_uuid", "client_uuid", "reason"]
WIRE_TYPES = [t.value for t in NotificationType]


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Almost-valid documents: each field kept, dropped or replaced by any JSON value."""
    document: dict[str, Any] = {
        "notification_type": draw(st.sampled_from(WIRE_TYPES)),
        "body": {
            "round": 1,
            "global_model_uuid": str(MODEL_ID),
            "client_uuid": str(CLIENT_ID),
            "reason": "",
        },
        "training_uuid": str(TRAINING_ID),
    }
    for name in FIELDS:
        action = draw(st.sampled_from(["keep", "keep", "drop", "replace"]))
        if action == "drop":
            del document[name]
        elif action == "replace":
            document[name] = draw(JSON_VALUES)
    if isinstance(document.get("body"), dict):
        for name in BODY_FIELDS:
            action = draw(st.sampled_from(["keep", "keep", "drop", "replace"]))
            if action == "drop":
                document["body"].pop(name, None)
            elif action == "replace":
                document["body"][name] = draw(JSON_VALUES)
    return document


@deterministic
@given(document=mutated_documents())
def test_decode_raises_only_decode_errors_on_mutated_documents(document: dict[str, Any]) -> None:
    error: DecodeError | None = None
    try:
        n = flnotify.codec.decode(json.dumps(document))
    except DecodeError as e:
        error = e
    if error is None:
        assert isinstance(n, Notification)
        assert flnotify.codec.decode(flnotify.codec.encode(n)) == n
    else:
        assert error.path.startswith("$")
        assert error.problem


@deterministic
@given(data=st.binary(max_size=64) | JSON_VALUES.map(json.dumps))
def test_decode_raises_only_decode_errors_on_arbitrary_input(data: bytes | str) -> None:
    error: DecodeError | None = None
    try:
        flnotify.codec.decode(data)
    except DecodeError as e:
        error = e
    assert error is not None  # no such input is a valid notification
    assert error.path.startswith("$")


# --- Registry -----------------------------------------------------------------------------

EVAL = EvalNotification(
    receivers=RECEIVERS,
    body=EvalBody(metric="accuracy", top_k=5),
    training_uuid=TRAINING_ID,
)
EVAL_GOLDEN = (
    b'{"notification_type":"MODEL_EVAL","body":{"metric":"accuracy","top_k":5},'
    b'"training_uuid":"5b1dabcd-ef01-4a23-8b45-6789abcdef01"}'
)


def test_user_defined_notification_encodes_with_the_default_codec() -> None:
    assert flnotify.codec.encode(EVAL) == EVAL_GOLDEN
    assert EVAL.description == "Evaluate model"


def test_user_defined_notification_decodes_with_its_registry() -> None:
    codec = Codec(registry=eval_registry())
    decoded = codec.decode(EVAL_GOLDEN)
    assert type(decoded) is EvalNotification
    assert decoded == EVAL.with_receivers(())
    # the copied registry still knows the six built-in types
    assert codec.decode(GOLDEN[1][1]) == GOLDEN[1][0].with_receivers(())


def test_user_defined_body_validators_become_decode_errors() -> None:
    codec = Codec(registry=eval_registry())
    data = EVAL_GOLDEN.replace(b'"top_k":5', b'"top_k":0')
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    assert info.value.path == "$.body.top_k"
    assert ">= 1" in info.value.problem


def test_default_decode_does_not_know_unregistered_types() -> None:
    eval_registry()  # registering in a copy ...
    assert "MODEL_EVAL" not in flnotify.codec.default_registry()  # ... leaves the default alone
    assert len(flnotify.codec.default_registry()) == 6
    with pytest.raises(UnknownNotificationTypeError):
        flnotify.codec.decode(EVAL_GOLDEN)


def test_default_registry_holds_the_six_training_notifications() -> None:
    registry = flnotify.codec.default_registry()
    assert registry is flnotify.codec.default_registry()
    assert set(registry) == {type(n) for n, _ in GOLDEN}
    for t in NotificationType:
        cls = registry.get(t.value)
        assert cls is not None
        assert cls.notification_type is t
    assert registry.get("MODEL_EVAL") is None


def test_plain_notification_subclass_without_training_uuid() -> None:
    @attrs.frozen
    class Ping(Notification[EvalBody]):
        notification_type = EvalType.MODEL_EVAL

    registry = NotificationRegistry()
    assert registry.register(Ping) is Ping
    codec = Codec(registry=registry)
    n = Ping(receivers=RECEIVERS, body=EvalBody(metric="m"))
    encoded = codec.encode(n)
    assert encoded == b'{"notification_type":"MODEL_EVAL","body":{"metric":"m","top_k":1}}'
    assert codec.decode(encoded) == n.with_receivers(())
    with pytest.raises(UnknownNotificationTypeError):  # an empty registry knows nothing else
        codec.decode(GOLDEN[0][1])


def test_register_works_as_a_decorator_and_is_idempotent() -> None:
    registry = NotificationRegistry()

    @registry.register
    @attrs.frozen
    class Decorated(TrainingNotification[EvalBody]):
        notification_type = EvalType.MODEL_EVAL

    assert registry.get("MODEL_EVAL") is Decorated
    assert registry.register(Decorated) is Decorated
    assert len(registry) == 1


def test_registering_another_class_under_a_taken_wire_string_fails() -> None:
    @attrs.frozen
    class Impostor(TrainingNotification[RoundBody]):
        notification_type = NotificationType.UPDATE_ROUND_START

    registry = flnotify.codec.default_registry().copy()
    with pytest.raises(ConfigurationError, match="UPDATE_ROUND_START"):
        registry.register(Impostor)
    assert registry.get("UPDATE_ROUND_START") is TrainingRoundStartNotification


def test_registering_a_class_without_notification_type_fails() -> None:
    @attrs.frozen
    class Untyped(TrainingNotification[EvalBody]):
        pass

    with pytest.raises(ConfigurationError, match="notification_type"):
        NotificationRegistry().register(Untyped)
    assert isinstance(ConfigurationError("x"), FlnotifyError)


@attrs.frozen
class HintedNotification(TrainingNotification[EvalBody]):
    notification_type = EvalType.MODEL_EVAL
    precision: ClassVar[Decimal | None] = None  # names a TYPE_CHECKING-only import


def test_annotations_that_cannot_be_resolved_at_run_time_do_not_break_the_codec() -> None:
    # Regression: the codec resolved every annotation of the class, so a ClassVar naming a
    # TYPE_CHECKING-only import raised NameError from encode() and decode().
    registry = NotificationRegistry()
    registry.register(HintedNotification)
    codec = Codec(registry=registry)
    n = HintedNotification(receivers=(), body=EvalBody(metric="m"), training_uuid=TRAINING_ID)
    encoded = codec.encode(n)
    assert encoded == (
        b'{"notification_type":"MODEL_EVAL","body":{"metric":"m","top_k":1},'
        b'"training_uuid":"5b1dabcd-ef01-4a23-8b45-6789abcdef01"}'
    )
    assert codec.decode(encoded) == n


def test_registry_copy_is_independent() -> None:
    original = NotificationRegistry()
    copied = original.copy()
    copied.register(EvalNotification)
    assert "MODEL_EVAL" in copied
    assert "MODEL_EVAL" not in original


# --- Custom converter ---------------------------------------------------------------------


class RatioType(enum.Enum):
    """The simplest own kind: a string-valued enum with a ``description`` property."""

    RATIO = "RATIO"

    @property
    def description(self) -> str:
        return "Share of data to use"


@attrs.frozen
class RatioBody:
    share: Fraction


@attrs.frozen
class RatioNotification(Notification[RatioBody]):
    notification_type = RatioType.RATIO


def test_custom_converter_is_used_for_both_directions() -> None:
    converter = flnotify.codec.make_converter()
    converter.register_unstructure_hook(Fraction, str)
    converter.register_structure_hook(Fraction, lambda value, _: Fraction(value))
    registry = NotificationRegistry()
    registry.register(RatioNotification)
    codec = Codec(registry=registry, converter=converter)
    assert codec.converter is converter

    n = RatioNotification(receivers=(), body=RatioBody(share=Fraction(1, 3)))
    encoded = codec.encode(n)
    assert encoded == b'{"notification_type":"RATIO","body":{"share":"1/3"}}'
    assert codec.decode(encoded) == n

    with pytest.raises(DecodeError) as info:
        codec.decode(b'{"notification_type":"RATIO","body":{"share":"one third"}}')
    assert info.value.path == "$.body.share"
    assert "Fraction" in info.value.problem


def test_make_converter_returns_a_new_converter_each_time() -> None:
    first, second = flnotify.codec.make_converter(), flnotify.codec.make_converter()
    assert first is not second
    first.register_unstructure_hook(Fraction, str)
    assert second.unstructure(Fraction(1, 2)) == Fraction(1, 2)  # hooks do not leak


def test_decode_accepts_any_mapping() -> None:
    class ReadOnly(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> Any:
            return self._data[key]

        def __iter__(self) -> Any:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    n = flnotify.codec.decode(ReadOnly(json.loads(GOLDEN[0][1])))
    assert n == GOLDEN[0][0].with_receivers(())


def test_any_text_encodes_as_ascii_json_and_round_trips() -> None:
    n = ClientRemovedNotification(
        receivers=[],
        body=ClientRemovedNotification.Body(client_uuid=UUID(int=1), reason="\udcffé✓"),
        training_uuid=UUID(int=2),
    )
    data = flnotify.codec.encode(n)
    assert data.isascii()
    assert b'"reason":"\\udcff\\u00e9\\u2713"' in data
    assert flnotify.codec.decode(data) == n
