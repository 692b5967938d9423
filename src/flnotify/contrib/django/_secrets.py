"""Per-client signing secrets read from the ORM (the app's ``ClientSecret`` table)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from uuid import UUID

import attrs

from ..._types import ReceiverLike
from ._db import database_call

__all__ = ["ClientSecretLookup"]


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@attrs.define(eq=False)
class ClientSecretLookup:
    """A [`Signer`][flnotify.Signer] lookup: each client's ``whsec_`` secrets from the ORM.

    ``Signer(lookup=ClientSecretLookup())`` signs each request with the receiver's own
    secret(s) (every stored one, oldest first: several during a rotation) and falls back to
    the signer's shared secrets for a client without any.

    It is a synchronous lookup, meant to be called off the event loop, in a worker thread,
    like the repository: it runs an ORM query, which Django refuses inside an event loop
    (``SynchronousOnlyOperation``). When it is called on a thread that runs an event loop
    anyway, the query runs on a thread of its own and the loop waits for it; answers are
    kept for ``cache_seconds``, so that wait happens once per client and period, not once
    per attempt. Each query closes the database connection it opened.

    Args:
        using: The database alias holding the ``ClientSecret`` table.
        cache_seconds: How long an answer (including "no secret") is reused; 0: never.
        clock: Monotonic seconds, for the cache.
    """

    using: str = "default"
    cache_seconds: float = 30.0
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False)
    _cache: dict[UUID, tuple[float, tuple[str, ...] | None]] = attrs.field(
        init=False, factory=dict, repr=False
    )
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    _worker: concurrent.futures.ThreadPoolExecutor | None = attrs.field(
        init=False, default=None, repr=False
    )

    def __call__(self, receiver: ReceiverLike) -> tuple[str, ...] | None:
        """The receiver's secrets, oldest first, or ``None`` if it has none."""
        now = self.clock()
        with self._lock:
            cached = self._cache.get(receiver.id)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        if _on_event_loop():
            found = self._thread().submit(self.secrets_for, receiver.id).result()
        else:
            found = self.secrets_for(receiver.id)
        with self._lock:
            self._cache[receiver.id] = (now, found)
        return found

    def secrets_for(self, client_id: UUID) -> tuple[str, ...] | None:
        """Query the client's secrets now (no cache); call it off the event loop.

        Raises:
            RepositoryError: The database failed.
        """
        from .models import ClientSecret

        with database_call(self.using, f"reading the secrets of client {client_id}"):
            secrets = tuple(
                ClientSecret.objects.using(self.using)
                .filter(client_id=client_id)
                .order_by("created_at", "pk")
                .values_list("secret", flat=True)
            )
        return secrets or None

    def forget(self) -> None:
        """Drop every cached answer (after rotating a secret, say)."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        """Stop the thread used for calls made on an event loop; idempotent."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)

    def _thread(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._worker is None:
                self._worker = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="flnotify-secrets"
                )
            return self._worker
