"""attrs validators shared by every configurable class.

A value out of range raises ConfigurationError; a value of the wrong type (a store's codec,
clock or URL) raises TypeError naming the argument.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import attrs

from ._exceptions import ConfigurationError

__all__ = [
    "at_least_one",
    "callable_or_none",
    "fraction",
    "is_callable",
    "non_negative",
    "of_type",
    "positive",
]


def _refuse(instance: object, attribute: attrs.Attribute[Any], rule: str, value: object) -> None:
    msg = f"{type(instance).__name__}.{attribute.name} must be {rule}, got {value!r}"
    raise ConfigurationError(msg)


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least_one(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """An integer >= 1 (a count of attempts, connections, rows...)."""
    if type(value) is not int or value < 1:
        _refuse(instance, attribute, "an integer >= 1", value)


def positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A number > 0 (a duration, a size)."""
    if not _number(value) or not value > 0:
        _refuse(instance, attribute, "a number > 0", value)


def non_negative(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A number >= 0."""
    if not _number(value) or not value >= 0:
        _refuse(instance, attribute, "a number >= 0", value)


def fraction(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A number within [0, 1]."""
    if not _number(value) or not 0 <= value <= 1:
        _refuse(instance, attribute, "a number within [0, 1]", value)


def _wrong_type(
    instance: object, attribute: attrs.Attribute[Any], rule: str, value: object
) -> None:
    msg = f"{type(instance).__name__}.{attribute.name} must be {rule}, got {type(value).__name__}"
    raise TypeError(msg)


def of_type(cls: type, name: str | None = None) -> Any:
    """An instance of ``cls`` (TypeError otherwise)."""
    rule = f"a {name or cls.__name__}"

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, cls):
            _wrong_type(instance, attribute, rule, value)

    return check


def is_callable(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A callable, e.g. a clock (TypeError otherwise)."""
    if not callable(value):
        _wrong_type(instance, attribute, "callable", value)


def callable_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A callable or ``None`` (TypeError otherwise)."""
    if value is not None and not callable(value):
        _wrong_type(instance, attribute, "callable or None", value)
