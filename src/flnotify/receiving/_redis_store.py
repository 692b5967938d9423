"""Message ids in Redis, shared by every worker process on every host of a client.

[`RedisIdStore`][flnotify.receiving.RedisIdStore] needs the ``redis`` extra (redis-py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import attrs

from .._exceptions import ConfigurationError
from .._validators import positive
from ._dedupe import DEFAULT_LEASE_SECONDS, DEFAULT_WINDOW_SECONDS, IdClaim, map_backend_errors

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["RedisIdStore"]

_IN_FLIGHT = IdClaim.IN_FLIGHT.value.encode()
_HANDLED = IdClaim.HANDLED.value.encode()
# Drop the key only while it is still a claim: a handled id (or another request's claim
# after this one lapsed and was replaced by a handled mark) stays.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _state(previous: object) -> IdClaim:
    """What ``SET ... NX GET`` returned: nothing (claimed), or the value that was there."""
    if previous is None:
        return IdClaim.CLAIMED
    raw = previous.encode() if isinstance(previous, str) else previous
    return IdClaim.IN_FLIGHT if raw == _IN_FLIGHT else IdClaim.HANDLED


def _check_client(name: str, client: object, wanted: str) -> None:
    """Refuse what cannot be a Redis client: a URL string above all (use ``from_url``)."""
    if client is None:
        return
    if isinstance(client, (str, bytes)):
        msg = (
            f"RedisIdStore({name}=...) takes a {wanted} client, not a {type(client).__name__}; "
            "for a URL use RedisIdStore.from_url(url)"
        )
        raise ConfigurationError(msg)
    if not (callable(getattr(client, "set", None)) and callable(getattr(client, "eval", None))):
        msg = f"RedisIdStore({name}=...) takes a {wanted} client, not {type(client).__name__}"
        raise ConfigurationError(msg)


@attrs.define
class RedisIdStore:
    """Message ids in Redis: any number of processes on any number of hosts.

    A claim is one ``SET key in_flight NX PX <lease> GET`` (Redis 7): atomic on the
    server, it sets the key only when absent and returns what was there. Completion
    overwrites the key with ``handled`` for ``window_seconds``; a release deletes it only
    while it is still a claim (a small Lua script). Expiry is Redis's own (``PX``), so
    nothing needs purging.

    Build it with [`from_url`][flnotify.receiving.RedisIdStore.from_url], or pass clients:
    a sync ``redis.Redis`` for [`handle`][flnotify.receiving.NotificationRouter.handle] (WSGI) and
    a ``redis.asyncio.Redis`` for [`ahandle`][flnotify.receiving.NotificationRouter.ahandle] (ASGI).

    Args:
        client: The sync client.
        async_client: The async client; without one, ASGI calls the sync client in a
            worker thread.
        prefix: Prepended to every message id to make its key.
        window_seconds: Handled ids are remembered this long.
        lease_seconds: A claim lapses this long after it was made without an answer.

    Store methods raise [`IdStoreError`][flnotify.errors.IdStoreError] when Redis fails.
    """

    client: redis.Redis | None = None
    async_client: redis.asyncio.Redis | None = None
    prefix: str = "flnotify:message:"
    window_seconds: float = attrs.field(default=DEFAULT_WINDOW_SECONDS, validator=positive)
    lease_seconds: float = attrs.field(default=DEFAULT_LEASE_SECONDS, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.client is None and self.async_client is None:
            msg = "RedisIdStore needs a client, an async_client or both (see from_url)"
            raise ConfigurationError(msg)
        for name, client, wanted in (
            ("client", self.client, "redis.Redis"),
            ("async_client", self.async_client, "redis.asyncio.Redis"),
        ):
            _check_client(name, client, wanted)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisIdStore:
        """A store with a sync and an async client for ``url`` (``redis://host:6379/0``).

        Args:
            url: The Redis URL, as ``redis.Redis.from_url`` takes it.
            **kwargs: ``prefix``, ``window_seconds``, ``lease_seconds``.

        Raises:
            ConfigurationError: redis-py is not installed (``pip install flnotify[redis]``).
        """
        try:
            import redis
            import redis.asyncio
        except ImportError:
            msg = "RedisIdStore needs redis-py: pip install 'flnotify[redis]'"
            raise ConfigurationError(msg) from None
        return cls(redis.Redis.from_url(url), redis.asyncio.Redis.from_url(url), **kwargs)

    def _key(self, message_id: str) -> str:
        return self.prefix + message_id

    def _ms(self, seconds: float) -> int:
        return max(1, int(seconds * 1000))

    def _sync(self) -> redis.Redis:
        if self.client is None:
            msg = "this RedisIdStore has no sync client: pass client= (WSGI needs one)"
            raise ConfigurationError(msg)
        return self.client

    def claim(self, message_id: str) -> IdClaim:
        """See [`IdStore.claim`][flnotify.receiving.IdStore.claim]; atomic on the Redis server."""
        client = self._sync()
        with map_backend_errors():
            previous = client.set(
                self._key(message_id),
                _IN_FLIGHT,
                nx=True,
                px=self._ms(self.lease_seconds),
                get=True,
            )
        return _state(previous)

    def complete(self, message_id: str) -> None:
        """See [`IdStore.complete`][flnotify.receiving.IdStore.complete]."""
        client = self._sync()
        with map_backend_errors():
            client.set(self._key(message_id), _HANDLED, px=self._ms(self.window_seconds))

    def release(self, message_id: str) -> None:
        """See [`IdStore.release`][flnotify.receiving.IdStore.release]."""
        client = self._sync()
        with map_backend_errors():
            client.eval(_RELEASE, 1, self._key(message_id), _IN_FLIGHT)

    async def aclaim(self, message_id: str) -> IdClaim:
        """See [`IdStore.claim`][flnotify.receiving.IdStore.claim]."""
        if self.async_client is None:
            return await asyncio.to_thread(self.claim, message_id)
        with map_backend_errors():
            previous = await self.async_client.set(
                self._key(message_id),
                _IN_FLIGHT,
                nx=True,
                px=self._ms(self.lease_seconds),
                get=True,
            )
        return _state(previous)

    async def acomplete(self, message_id: str) -> None:
        """See [`IdStore.complete`][flnotify.receiving.IdStore.complete]."""
        if self.async_client is None:
            await asyncio.to_thread(self.complete, message_id)
            return
        with map_backend_errors():
            await self.async_client.set(
                self._key(message_id), _HANDLED, px=self._ms(self.window_seconds)
            )

    async def arelease(self, message_id: str) -> None:
        """See [`IdStore.release`][flnotify.receiving.IdStore.release]."""
        if self.async_client is None:
            await asyncio.to_thread(self.release, message_id)
            return
        with map_backend_errors():
            await self.async_client.eval(_RELEASE, 1, self._key(message_id), _IN_FLIGHT)

    def close(self) -> None:
        """Close the sync client's connections (close the async one with ``aclose``)."""
        if self.client is not None:
            self.client.close()

    async def aclose(self) -> None:
        """Close both clients' connections."""
        self.close()
        if self.async_client is not None:
            await self.async_client.aclose()
