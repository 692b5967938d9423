"""The public surface is exactly ``__all__`` (the idea of httpx's test of the same name)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

import flnotify

PUBLIC_SUBMODULES = sorted(
    f"flnotify.{info.name}"
    for info in pkgutil.iter_modules(flnotify.__path__)
    if not info.name.startswith("_")
)


def isort_style(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest.

    Within a group names compare case-sensitively, runs of digits by value. For the
    top-level ``__all__`` (no constants) this is the same as ``sorted()``.
    """
    group = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    return group, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _defined_in_flnotify(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "flnotify" or module.startswith("flnotify.")


def test_isort_style_matches_ruff() -> None:
    # ruff check --select RUF022 --fix left this order; keep the key in step with it
    ruffs = ["A2", "A10", "ID_HEADER", "DNSError", "DecodeError", "T", "__version__", "decode"]
    scrambled = ["decode", "T", "A10", "DecodeError", "__version__", "ID_HEADER", "A2", "DNSError"]
    assert sorted(scrambled, key=isort_style) == ruffs


def test_all_is_sorted_and_unique() -> None:
    assert flnotify.__all__ == sorted(flnotify.__all__)
    assert flnotify.__all__ == sorted(flnotify.__all__, key=isort_style)
    assert len(flnotify.__all__) == len(set(flnotify.__all__))


def test_every_name_in_all_exists() -> None:
    missing = [name for name in flnotify.__all__ if not hasattr(flnotify, name)]
    assert missing == []


def test_every_public_class_and_function_is_in_all() -> None:
    # Classes and callables (functions, functools.cache wrappers) defined in flnotify,
    # not submodules: those are opt-in imports like ``flnotify.receiving``.
    public = {
        name
        for name, obj in vars(flnotify).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or callable(obj))
        and not inspect.ismodule(obj)
        and _defined_in_flnotify(obj)
    }
    assert public - set(flnotify.__all__) == set()


def test_version_is_exported() -> None:
    assert "__version__" in flnotify.__all__
    assert isinstance(flnotify.__version__, str)


def test_known_public_submodules_are_discovered() -> None:
    assert {"flnotify.errors", "flnotify.codec", "flnotify.receiving"} <= set(PUBLIC_SUBMODULES)
    assert "flnotify.training" not in PUBLIC_SUBMODULES  # its names are the top level's


@pytest.mark.parametrize("module_name", PUBLIC_SUBMODULES)
def test_public_submodule_all(module_name: str) -> None:
    module: ModuleType = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        pytest.skip(f"{module_name} defines no __all__")
    assert list(names) == sorted(names, key=isort_style)
    assert len(names) == len(set(names))
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []


TOP_LEVEL_BUDGET = 45
"""The server's essentials (docs/api.md says why each is there); the rest lives in modules."""

PUBLIC_MODULES = [
    "flnotify",
    *PUBLIC_SUBMODULES,
    "flnotify.contrib.celery",
    "flnotify.contrib.opentelemetry",
]


def test_the_top_level_keeps_to_its_budget() -> None:
    assert len(flnotify.__all__) <= TOP_LEVEL_BUDGET


def _public_paths() -> dict[object, list[str]]:
    """Each exported object (or constant, by name and value) -> the paths it is exported at."""
    paths: dict[object, list[str]] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            try:
                value = getattr(module, name)
            except ImportError:  # a pytest-only helper of flnotify.testing
                value = f"{module_name}.{name}"
            key: object = (name, repr(value)) if isinstance(value, (str, int, float)) else value
            try:
                hash(key)
            except TypeError:
                key = id(value)
            paths.setdefault(key, []).append(f"{module_name}.{name}")
    return paths


def test_no_name_is_exported_under_two_paths() -> None:
    twice = sorted(found for found in _public_paths().values() if len(found) > 1)
    assert twice == [], "one import path per public name"


def test_no_two_public_names_alike_in_different_modules() -> None:
    by_name: dict[str, list[str]] = {}
    for found in _public_paths().values():
        for path in found:
            by_name.setdefault(path.rpartition(".")[2], []).append(path)
    alike = sorted(paths for paths in by_name.values() if len(paths) > 1)
    assert alike == []


def test_every_error_is_in_the_errors_module() -> None:
    import flnotify.errors
    from flnotify.errors import FlnotifyError

    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            try:
                value = getattr(module, name)
            except ImportError:
                continue
            if inspect.isclass(value) and issubclass(value, BaseException):
                assert module_name == "flnotify.errors", f"{module_name}.{name}"
    subclasses: list[type[BaseException]] = [FlnotifyError]
    every = set()
    while subclasses:
        cls = subclasses.pop()
        if not cls.__name__.startswith("_"):
            every.add(cls.__name__)
        subclasses.extend(cls.__subclasses__())
    assert every <= set(flnotify.errors.__all__)
