"""Wire encoding: one private cattrs converter, a registry of notification classes, a codec.

``encode`` writes wire format v1 exactly: compact JSON, keys in the order ``notification_type``,
``body``, then the class's other fields (``training_uuid``); UUIDs as lowercase strings.
``decode`` picks the class by ``notification_type`` from a registry (users add their own) and
turns every problem into a [`DecodeError`][] naming the path.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import operator
import re
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar
from uuid import UUID

import attrs
import cattrs
from cattrs.preconf.json import make_converter as _make_json_converter

from ._exceptions import ConfigurationError, DecodeError, UnknownNotificationTypeError
from ._notification import Notification

__all__ = [
    "Codec",
    "NotificationRegistry",
    "decode",
    "default_registry",
    "encode",
    "make_converter",
]

N = TypeVar("N", bound=type[Notification[Any]])

_NOT_ON_WIRE = frozenset({"receivers"})
_VALIDATOR_FIELD = re.compile(r"^'(\w+)' must ")


def _structure_int(value: object, _: object) -> int:
    if type(value) is not int:  # bool is an int subclass and must not pass as a round
        msg = f"expected an integer, got {_json_type(value)}"
        raise TypeError(msg)
    return value


def _structure_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        msg = f"expected a string, got {_json_type(value)}"
        raise TypeError(msg)
    return value


def _structure_uuid(value: object, _: object) -> UUID:
    if isinstance(value, UUID):
        return value
    if not isinstance(value, str):
        msg = f"expected a UUID string, got {_json_type(value)}"
        raise TypeError(msg)
    try:
        return UUID(value)
    except ValueError:
        msg = f"malformed UUID {value!r}"
        raise ValueError(msg) from None


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "object"
    return names.get(type(value), type(value).__name__)


def make_converter() -> cattrs.Converter:
    """A new cattrs converter configured for flnotify's wire format.

    Starts from cattrs' JSON preset; integers are strict (no bools, no strings), strings
    are strict, UUIDs travel as canonical lowercase strings. Host apps may register hooks
    for their own body types on the returned converter and pass it to [`Codec`][].
    """
    converter = _make_json_converter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(UUID, _structure_uuid)
    converter.register_unstructure_hook(UUID, str)
    return converter


@attrs.define
class NotificationRegistry:
    """Maps ``notification_type`` wire strings to notification classes, for decoding.

    Use [`register`][] (also as a class decorator) to add your own notifications.
    """

    _classes: dict[str, type[Notification[Any]]] = attrs.field(factory=dict, alias="classes")

    def register(self, cls: N) -> N:
        """Add a notification class under its ``notification_type.value``.

        Raises:
            ConfigurationError: The class has no ``notification_type``, or another class
                is already registered under the same wire string.
        """
        kind = getattr(cls, "notification_type", None)
        wire = getattr(kind, "value", None)
        if not isinstance(wire, str):
            msg = f"{cls.__qualname__} has no notification_type with a string value"
            raise ConfigurationError(msg)
        existing = self._classes.get(wire)
        if existing is not None and existing is not cls:
            msg = f"{wire!r} is already registered to {existing.__qualname__}"
            raise ConfigurationError(msg)
        self._classes[wire] = cls
        return cls

    def get(self, notification_type: str) -> type[Notification[Any]] | None:
        """The class registered under ``notification_type``, or ``None``."""
        return self._classes.get(notification_type)

    def copy(self) -> NotificationRegistry:
        """An independent registry with the same classes."""
        return NotificationRegistry(classes=dict(self._classes))

    def __contains__(self, notification_type: object) -> bool:
        return notification_type in self._classes

    def __iter__(self) -> Iterator[type[Notification[Any]]]:
        return iter(self._classes.values())

    def __len__(self) -> int:
        return len(self._classes)


_BODY_TYPES: dict[type[Any], Any] = {}
_WIRE_FIELDS: dict[type[Any], tuple[tuple[str, Any], ...]] = {}


def _body_type(cls: type[Notification[Any]]) -> Any:
    """The concrete type argument given for ``Body`` somewhere in ``cls``'s bases."""
    found = _BODY_TYPES.get(cls)
    if found is None:
        found = _BODY_TYPES[cls] = _find_body_type(cls)
    return found


def _find_body_type(cls: type[Notification[Any]]) -> Any:
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Notification):
                args = typing.get_args(base)
                if args and not isinstance(args[0], TypeVar):
                    return args[0]
    msg = f"{cls.__qualname__} does not say its body type (subclass Notification[YourBody])"
    raise ConfigurationError(msg)


def _wire_fields(cls: type[Notification[Any]]) -> tuple[tuple[str, Any], ...]:
    """The (name, type) of each field after ``body`` that goes on the wire."""
    found = _WIRE_FIELDS.get(cls)
    if found is None:
        found = _WIRE_FIELDS[cls] = tuple(
            (f.name, _field_type(cls, f.name, f.type))
            for f in attrs.fields(cls)
            if f.name not in _NOT_ON_WIRE and f.name != "body"
        )
    return found


def _field_type(cls: type[Any], name: str, tp: Any) -> Any:
    """One field's type, a string annotation evaluated where the field was declared.

    Only this field's annotation is evaluated: resolving the whole class would fail on
    annotations naming ``TYPE_CHECKING``-only imports (e.g. a ``ClassVar`` of a subclass).
    """
    if not isinstance(tp, str):
        return tp
    for klass in cls.__mro__:
        if name in inspect.get_annotations(klass):
            module = sys.modules.get(klass.__module__)
            namespace = types.SimpleNamespace(__annotations__={name: tp})
            globalns = dict(vars(module)) if module is not None else {}
            return typing.get_type_hints(namespace, globalns, dict(vars(klass)))[name]
    return tp


@functools.cache
def default_registry() -> NotificationRegistry:
    """The process-wide registry; holds the six training notifications from the start.

    Registering here makes [`decode`][] know your class everywhere; build a
    [`NotificationRegistry`][] of your own to keep it local.
    """
    from ._training import (
        ClientRemovedNotification,
        TrainingFinishedNotification,
        TrainingModelTestNotification,
        TrainingRoundStartNotification,
        TrainingStartNotification,
        TrainingSWAGRoundStartNotification,
    )

    registry = NotificationRegistry()
    for cls in (
        TrainingStartNotification,
        TrainingRoundStartNotification,
        TrainingSWAGRoundStartNotification,
        TrainingModelTestNotification,
        TrainingFinishedNotification,
        ClientRemovedNotification,
    ):
        registry.register(cls)
    return registry


@attrs.define
class Codec:
    """Encodes notifications to wire bytes and decodes wire data back to typed notifications.

    Args:
        registry: The classes ``decode`` knows; defaults to the six training notifications.
        converter: The cattrs converter; defaults to [`make_converter`][].
    """

    registry: NotificationRegistry = attrs.field(factory=default_registry)
    converter: cattrs.Converter = attrs.field(factory=make_converter)

    def to_dict(self, notification: Notification[Any]) -> dict[str, Any]:
        """The JSON-ready mapping of a notification, in wire key order."""
        unstructure = self.converter.unstructure
        document: dict[str, Any] = {
            "notification_type": notification.notification_type.value,
            "body": unstructure(notification.body),
        }
        for name, _ in _wire_fields(type(notification)):
            document[name] = unstructure(getattr(notification, name))
        return document

    def encode(self, notification: Notification[Any]) -> bytes:
        """The wire bytes: compact JSON (non-ASCII escaped, so any text encodes)."""
        return json.dumps(self.to_dict(notification), separators=(",", ":")).encode()

    def decode(self, data: bytes | str | Mapping[str, Any]) -> Notification[Any]:
        """Parse wire data into the registered notification class; receivers are empty.

        Raises:
            DecodeError: The data is not JSON, not an object, lacks or mistypes a field,
                or carries a malformed value; ``path`` and ``problem`` say which.
            UnknownNotificationTypeError: ``notification_type`` is not registered.
        """
        try:
            return self._decode(data)
        except RecursionError:  # a mapping nested too deeply for a converter hook
            raise DecodeError("$", "nested too deeply to decode", data) from None

    def _decode(self, data: bytes | str | Mapping[str, Any]) -> Notification[Any]:
        document = _load(data)
        if "notification_type" not in document:
            raise DecodeError("$.notification_type", "required field missing", data)
        wire = document["notification_type"]
        if not isinstance(wire, str):
            raise DecodeError(
                "$.notification_type", f"expected a string, got {_json_type(wire)}", data
            )
        cls = self.registry.get(wire)
        if cls is None:
            raise UnknownNotificationTypeError(wire, data)
        values: dict[str, Any] = {"receivers": ()}
        for name, tp in (("body", _body_type(cls)), *_wire_fields(cls)):
            if name not in document:
                raise DecodeError(f"$.{name}", "required field missing", data)
            values[name] = self._structure(document[name], tp, f"$.{name}", data)
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:  # validators of the notification itself
            raise DecodeError("$", str(exc), data) from exc

    def _structure(self, value: Any, tp: Any, path: str, data: object) -> Any:
        if attrs.has(tp) and not isinstance(value, Mapping):
            raise DecodeError(path, f"expected a JSON object, got {_json_type(value)}", data)
        try:
            return self.converter.structure(value, tp)
        except cattrs.BaseValidationError as exc:
            first = cattrs.transform_error(exc, path=path, format_exception=_format)[0]
            problem, _, where = first.rpartition(" @ ")
            field = _VALIDATOR_FIELD.match(problem)
            if field is not None:  # an attrs validator names the field it checked
                where = f"{where}.{field.group(1)}"
            raise DecodeError(where or path, problem, data) from exc
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise DecodeError(path, _format(exc, tp), data) from exc


def _format(exc: BaseException, tp: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, tp)


MAX_NESTING = 256
"""The deepest nesting of arrays and objects ``decode`` parses; deeper input is a
[`DecodeError`][flnotify.errors.DecodeError] found by a linear scan, before the parser could
exhaust the stack."""

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPENERS = b"[{"
_BRACKETS = b"[]{}"
# after dropping everything else: an opener counts 2, a closer 0; minus 1 per byte, the
# running sum is the depth
_DEPTH_STEP = bytes.maketrans(b"[]{}", b"\x02\x00\x02\x00")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)


def nested_deeper_than(data: bytes | str, limit: int) -> bool:
    """Whether ``[``/``{`` outside JSON strings nest deeper than ``limit``, in linear time.

    Strings are removed by one regular expression and the brackets counted by C-level
    iterators, so a hostile body costs a few passes over its bytes whatever its shape.
    Malformed input gets some answer; the JSON parser then refuses it.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if raw.count(b"[") + raw.count(b"{") <= limit:  # the common case: too few to be deep
        return False
    steps = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS).translate(_DEPTH_STEP)
    depths = map(operator.sub, itertools.accumulate(steps), range(1, len(steps) + 1))
    return max(depths, default=0) > limit


def _load(data: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    document: object
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        text = bytes(data) if isinstance(data, (bytearray, memoryview)) else data
        if nested_deeper_than(text, MAX_NESTING):
            raise DecodeError("$", f"nested deeper than {MAX_NESTING} levels", data)
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError("$", f"invalid JSON: {exc}", data) from exc
        except RecursionError:
            raise DecodeError("$", "nested too deeply to parse", data) from None
    else:
        document = data
    if not isinstance(document, Mapping):
        raise DecodeError("$", f"expected a JSON object, got {_json_type(document)}", data)
    return document


@functools.cache
def default_codec() -> Codec:
    return Codec()


def encode(notification: Notification[Any]) -> bytes:
    """Encode with the default codec; see [`Codec.encode`][]."""
    return default_codec().encode(notification)


def decode(data: bytes | str | Mapping[str, Any]) -> Notification[Any]:
    """Decode with the default codec; see [`Codec.decode`][]."""
    return default_codec().decode(data)
