"""A griffe extension: attrs classes get the ``__init__`` that attrs makes at run time.

A static reading of the source sees no ``__init__`` in an attrs class, so the API reference
showed every parameter as required and without a type. This extension imports each class,
and for an attrs class adds an ``__init__`` with the fields' names (their ``alias``),
annotations (as written in the source, so they link) and defaults (written as a person
would: ``RetryPolicy()``, ``asyncio.sleep``, ``6``). Fields the docstring's ``Args:`` do not
describe are added to its parameters section, described by their attribute docstring.
"""

from __future__ import annotations

import inspect
from typing import Any

import attrs
import griffe

_NO_DESCRIPTION = ""


def default_text(field: attrs.Attribute[Any]) -> str | None:
    """A field's default as source text, or ``None`` when it has none (required)."""
    default: Any = field.default
    if default is attrs.NOTHING:
        return None
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        factory = default.factory
        if default.takes_self:
            return "computed from the other fields"
        if factory.__name__.startswith(("<", "_")):  # a lambda or a private helper
            made = inspect.signature(factory).return_annotation
            name = made if isinstance(made, str) else getattr(made, "__name__", None)
            return f"{name}(...)" if name and name != "_empty" else "a new value per instance"
        return f"{factory.__name__}()"
    if callable(default) and hasattr(default, "__qualname__"):
        owner = getattr(default, "__self__", None)
        if owner is not None and not inspect.ismodule(owner):
            return f"{type(owner).__name__}().{default.__name__}"
        return f"{default.__module__}.{default.__qualname__}"
    text = repr(default)
    if " at 0x" in text or len(text) > 80:
        return f"{type(default).__name__}(...)"
    return text


def _annotation(cls: griffe.Class, field: attrs.Attribute[Any]) -> str | griffe.Expr | None:
    member = cls.members.get(field.name)
    if isinstance(member, griffe.Attribute) and member.annotation is not None:
        return member.annotation
    if isinstance(field.type, str):
        return field.type
    return None if field.type is None else getattr(field.type, "__name__", repr(field.type))


class AttrsFields(griffe.Extension):
    """Adds the run-time ``__init__`` of attrs classes (see the module docstring)."""

    def on_class_members(self, *, node: Any, cls: griffe.Class, **_: Any) -> None:
        """Build ``__init__`` from the fields once the class's members are known."""
        if isinstance(node, griffe.ObjectNode) or "__init__" in cls.members:
            return
        try:
            runtime = griffe.dynamic_import(cls.path)
        except ImportError:
            return
        if not (inspect.isclass(runtime) and attrs.has(runtime)):
            return
        fields = [f for f in attrs.fields(runtime) if f.init]
        positional: Any = griffe.ParameterKind.positional_or_keyword  # the stubs say str
        keyword: Any = griffe.ParameterKind.keyword_only
        parameters = [griffe.Parameter("self", kind=positional)]
        for field in fields:
            kind = keyword if field.kw_only else positional
            parameters.append(
                griffe.Parameter(
                    field.alias,
                    annotation=_annotation(cls, field),
                    kind=kind,
                    default=default_text(field),
                )
            )
        init = griffe.Function(
            "__init__", parameters=griffe.Parameters(*parameters), returns="None", parent=cls
        )
        cls.set_member("__init__", init)

    def on_class(self, *, cls: griffe.Class, **_: Any) -> None:
        """Describe fields that the docstring's ``Args:`` leave out."""
        init = cls.members.get("__init__")
        if not isinstance(init, griffe.Function) or init.docstring is not None:
            return
        if cls.docstring is None:
            cls.docstring = griffe.Docstring("", parent=cls)
        sections = cls.docstring.parsed
        section = next(
            (s for s in sections if isinstance(s, griffe.DocstringSectionParameters)), None
        )
        if section is None:
            section = griffe.DocstringSectionParameters([])
            sections.append(section)
        documented = {p.name for p in section.value}
        for parameter in list(init.parameters)[1:]:
            if parameter.name in documented:
                continue
            member = cls.members.get(parameter.name) or cls.members.get(f"_{parameter.name}")
            doc = member.docstring.value if member is not None and member.docstring else ""
            section.value.append(
                griffe.DocstringParameter(
                    parameter.name,
                    description=doc or _NO_DESCRIPTION,
                    annotation=parameter.annotation,
                    value=parameter.default,
                )
            )
