"""attrs validators shared by every configurable class; each raises ConfigurationError."""

from __future__ import annotations

from typing import Any, TypeGuard

import attrs

from ._exceptions import ConfigurationError

__all__ = ["at_least_one", "fraction", "non_negative", "positive"]


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
