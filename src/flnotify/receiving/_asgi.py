"""The router as a plain ASGI 3 application (uvicorn, hypercorn, mounted in Starlette)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

from ._responses import INTERNAL_ERROR, Answering, Response, too_large

__all__ = ["ASGIApp", "asgi_app"]

logger = logging.getLogger("flnotify")

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


async def lifespan(receive: ASGIReceive, send: ASGISend) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(router: Answering, scope: ASGIScope, receive: ASGIReceive) -> Response:
    method: str = scope["method"]
    response, headers, _ = router._precheck(method, scope.get("headers", ()))
    if response is not None:
        return response
    try:
        body = await read_body(receive, router.limits.max_body_bytes)
    except BodyTooLargeError:
        return too_large(router.limits.max_body_bytes)
    return await router.ahandle(method, headers, body)


def asgi_app(router: Answering) -> ASGIApp:
    """Serve ``router`` as a plain ASGI 3 application (any path answers).

    Handles ``http`` (the header limits are checked before the body is read, the body
    is read up to ``max_body_bytes`` and a larger ``Content-Length`` is refused unread) and
    ``lifespan``; ``websocket`` connections are closed. Every answer is the router's own,
    a bug included (a JSON 500), so the server never answers with its own error page.
    """

    async def app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await lifespan(receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if kind != "http":
            return
        try:
            response = await _answer(router, scope, receive)
        except DisconnectedError:
            return
        except Exception:
            logger.exception("the ASGI adapter failed on a request")
            response = INTERNAL_ERROR
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    return app
