"""Helpers for your own tests: an in-memory transport, seams, recorders, contract suites.

``polling`` runs mailbox pollers (clients behind NAT) in the background of a block.

``TrainingRepositoryContract``, ``OutboxStoreContract`` and ``MailboxStoreContract`` need
pytest and are imported only when asked for, so importing this module never requires pytest.
``TrainingRepositoryTests`` and ``OutcomeTrackingTests`` are the repository contract as
``unittest`` mixins (for ``manage.py test``), without pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import attrs

from ._hooks import AttemptEnded, AttemptStarted, NullHook, SendStarted
from ._report import Delivery, DeliveryReport
from ._repository_contract import (
    PYTEST_SUITES,
    OutcomeTrackingTests,
    TrainingRepositoryTests,
    pytest_suites,
)
from ._seams import Seams, current_seams, using_seams
from .transports._memory import MemoryRequest, MemoryTransport

if TYPE_CHECKING:
    from ._repository_contract import OutcomeTrackingContract, TrainingRepositoryContract
    from .mailbox._contract import MailboxStoreContract
    from .outbox._contract import OutboxStoreContract
    from .receiving import MailboxPoller

__all__ = [
    "MailboxStoreContract",
    "MemoryRequest",
    "MemoryTransport",
    "OutboxStoreContract",
    "OutcomeTrackingContract",
    "OutcomeTrackingTests",
    "RecordingCallbacks",
    "RecordingHook",
    "TrainingRepositoryContract",
    "TrainingRepositoryTests",
    "polling",
    "seams",
]


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


@attrs.define
class RecordingHook(NullHook):
    """A delivery hook that remembers every attempt and outcome it is told of.

    Pass it as ``Notifier(hooks=[hook])`` and assert on its lists afterwards.
    """

    sends: list[SendStarted] = attrs.field(init=False, factory=list)
    reports: list[DeliveryReport] = attrs.field(init=False, factory=list)
    started: list[AttemptStarted] = attrs.field(init=False, factory=list)
    ended: list[AttemptEnded] = attrs.field(init=False, factory=list)
    outcomes: list[Delivery] = attrs.field(init=False, factory=list)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def on_send_started(self, details: SendStarted, /) -> None:
        """Remember a send that began."""
        with self._lock:
            self.sends.append(details)

    def on_send_ended(self, report: DeliveryReport, /) -> None:
        """Remember a send's report."""
        with self._lock:
            self.reports.append(report)

    def on_attempt_started(self, details: AttemptStarted, /) -> None:
        """Remember an attempt that began."""
        with self._lock:
            self.started.append(details)

    def on_attempt_ended(self, details: AttemptEnded, /) -> None:
        """Remember an attempt that ended."""
        with self._lock:
            self.ended.append(details)

    def on_outcome(self, delivery: Delivery, /) -> None:
        """Remember a final outcome."""
        with self._lock:
            self.outcomes.append(delivery)


def __getattr__(name: str) -> Any:
    if name in PYTEST_SUITES:
        return pytest_suites()[name]
    if name == "OutboxStoreContract":
        from .outbox._contract import OutboxStoreContract

        return OutboxStoreContract
    if name == "MailboxStoreContract":
        from .mailbox._contract import MailboxStoreContract

        return MailboxStoreContract
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def seams(
    *,
    clock: Callable[[], float] | None = None,
    wall_clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[object]] | None = None,
    rng: Callable[[], float] | None = None,
) -> AbstractContextManager[Seams]:
    """Fake time and chance for engines built inside the ``with`` block.

    Every [`Notifier`][flnotify.Notifier] (and Celery worker engine) made inside takes
    these instead of the real ``time.monotonic``, ``time.time``, ``asyncio.sleep`` and
    ``random.random``; those not given stay real. The real ones are back on the way out::

        with flnotify.testing.seams(sleep=fake.sleep, clock=fake.clock):
            notifier = flnotify.Notifier(...)

    Args:
        clock: Monotonic seconds, for ``elapsed`` and attempt durations.
        wall_clock: Epoch seconds, for ``webhook-timestamp`` and ``Retry-After`` dates.
        sleep: Awaited for each backoff.
        rng: Jitter source returning floats in [0, 1).
    """
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("clock", clock),
            ("wall_clock", wall_clock),
            ("sleep", sleep),
            ("rng", rng),
        )
        if value is not None
    }
    return using_seams(attrs.evolve(current_seams(), **changes))


@contextlib.contextmanager
def polling(pollers: Sequence[MailboxPoller]) -> Iterator[None]:
    """Run ``pollers`` on an event loop of their own until the block ends, then stop them.

    For tests (and demos) of clients behind NAT: the block's code sends while the clients
    fetch and acknowledge in the background::

        with polling([MailboxPoller(base, client_id, secret, router)]):
            notifier.send(notification)
    """

    async def poll() -> None:
        try:
            await asyncio.gather(*(poller.arun() for poller in pollers))
        finally:
            for poller in pollers:
                await poller.aclose()

    thread = threading.Thread(target=asyncio.run, args=(poll(),), daemon=True)
    thread.start()
    try:
        yield
    finally:
        for poller in pollers:
            poller.stop()
        thread.join()
