"""ASGI 3 plumbing shared by the package's apps: types, the body reader, lifespan."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

__all__ = [
    "ASGIApp",
    "ASGIReceive",
    "ASGIScope",
    "ASGISend",
    "BodyTooLargeError",
    "DisconnectedError",
    "lifespan",
    "read_body",
    "read_body_within",
]

ASGIScope: TypeAlias = MutableMapping[str, Any]
ASGIReceive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]
"""A plain ASGI 3 application callable."""


class BodyTooLargeError(Exception):
    pass


class DisconnectedError(Exception):
    pass


async def read_body(receive: ASGIReceive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise DisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


if sys.version_info >= (3, 11):

    async def read_body_within(receive: ASGIReceive, limit: int, seconds: float) -> bytes:
        """`read_body` within ``seconds``, else ``TimeoutError``.

        One timer, no task: a body that has arrived with its headers (most do) is read
        without the event loop running anything in between.
        """
        async with asyncio.timeout(seconds):
            return await read_body(receive, limit)

else:  # pragma: no cover - Python 3.10

    async def read_body_within(receive: ASGIReceive, limit: int, seconds: float) -> bytes:
        """`read_body` within ``seconds``, else ``TimeoutError``."""
        return await asyncio.wait_for(read_body(receive, limit), seconds)


async def lifespan(receive: ASGIReceive, send: ASGISend) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
