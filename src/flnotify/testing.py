"""Helpers for your own tests: an in-memory transport, a fake repository, a contract suite.

``TrainingRepositoryContract`` needs pytest and is imported only when asked for, so
importing this module never requires pytest.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import attrs

from .repository import InMemoryTrainingRepository
from .transports._base import HttpResponse
from .transports._memory import MemoryRequest, MemoryTransport

if TYPE_CHECKING:
    from ._delivery import Delivery
    from ._repository_contract import TrainingRepositoryContract

__all__ = [
    "FakeTrainingRepository",
    "HttpResponse",
    "MemoryRequest",
    "MemoryTransport",
    "RecordingCallbacks",
    "TrainingRepositoryContract",
]

FakeTrainingRepository = InMemoryTrainingRepository
"""A thread-safe in-memory repository to stand in for the host app's storage."""


@attrs.define
class RecordingCallbacks:
    """Callbacks that remember every delivery they are called with, from any thread.

    Pass it as ``send(notification, callbacks=...)`` (or to Celery/outbox delivery) and
    assert on `calls` afterwards: one entry per receiver, in the order of the calls.
    """

    calls: list[Delivery] = attrs.field(init=False, factory=list)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def on_success(self, delivery: Delivery, /) -> None:
        """Remember a delivered receiver."""
        with self._lock:
            self.calls.append(delivery)

    def on_error(self, delivery: Delivery, /) -> None:
        """Remember a rejected or failed receiver."""
        with self._lock:
            self.calls.append(delivery)


def __getattr__(name: str) -> Any:
    if name == "TrainingRepositoryContract":
        from ._repository_contract import TrainingRepositoryContract

        return TrainingRepositoryContract
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
