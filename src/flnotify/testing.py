"""Helpers for your own tests: an in-memory transport, a fake repository, a contract suite.

``TrainingRepositoryContract`` needs pytest and is imported only when asked for, so
importing this module never requires pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .repository import InMemoryTrainingRepository
from .transports._base import HttpResponse
from .transports._memory import MemoryRequest, MemoryTransport

if TYPE_CHECKING:
    from ._repository_contract import TrainingRepositoryContract

__all__ = [
    "FakeTrainingRepository",
    "HttpResponse",
    "MemoryRequest",
    "MemoryTransport",
    "TrainingRepositoryContract",
]

FakeTrainingRepository = InMemoryTrainingRepository
"""A thread-safe in-memory repository to stand in for the host app's storage."""


def __getattr__(name: str) -> Any:
    if name == "TrainingRepositoryContract":
        from ._repository_contract import TrainingRepositoryContract

        return TrainingRepositoryContract
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
