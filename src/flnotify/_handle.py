"""A send running in the background: its message ids at once, its report when it is done.

[`Notifier.submit`][flnotify.Notifier.submit] returns a [`SendHandle`][flnotify.SendHandle],
like an enqueue that returns a message id: a web route starts a send and answers at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Generator
from typing import Any

from ._exceptions import ConfigurationError
from ._notification import Notification
from ._report import DeliveryReport

__all__ = ["SendHandle"]


class SendHandle:
    """A send started by [`Notifier.submit`][flnotify.Notifier.submit].

    ``message_ids`` are known at once (one ``webhook-id`` per receiver, in receiver order);
    the [`DeliveryReport`][flnotify.DeliveryReport] comes when every receiver has its
    outcome and its callbacks ran: ``await handle`` in async code,
    ``handle.result(timeout)`` in sync code. Awaiting a handle and giving up (a cancelled
    request) never cancels the send.

    Attributes:
        notification: What is being sent.
        message_ids: One ``webhook-id`` per receiver, in receiver order.
        send_id: The id every delivery of this send carries.
    """

    def __init__(
        self,
        notification: Notification[Any],
        message_ids: tuple[str, ...],
        send_id: str,
        future: concurrent.futures.Future[DeliveryReport],
        loop_thread: threading.Thread | None,
    ) -> None:
        self.notification = notification
        self.message_ids = message_ids
        self.send_id = send_id
        self._future = future
        self._loop_thread = loop_thread

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "running"
        kind = self.notification.notification_type.value
        return f"<SendHandle {kind} to {len(self.message_ids)} receiver(s), {state}>"

    def done(self) -> bool:
        """Whether the send has ended (its report is ready)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> DeliveryReport:
        """Wait for the send's report (blocking).

        Args:
            timeout: Seconds to wait at most; ``None`` waits until the send ends (it is
                bounded by the settings' ``deadline``).

        Raises:
            TimeoutError: The send did not end within ``timeout``.
            ConfigurationError: Called, while the send runs, on the event loop that runs
                it (it would wait for itself): ``await`` the handle there.
        """
        if not self._future.done() and threading.current_thread() is self._loop_thread:
            msg = (
                "SendHandle.result() was called on the event loop that runs the send (it"
                " would wait for itself); await the handle instead"
            )
            raise ConfigurationError(msg)
        return self._future.result(timeout)

    def __await__(self) -> Generator[Any, None, DeliveryReport]:
        # shielded: a caller that stops waiting (a cancelled request) never stops the send
        return asyncio.shield(asyncio.wrap_future(self._future)).__await__()
