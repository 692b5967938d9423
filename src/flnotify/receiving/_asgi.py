"""The router as a plain ASGI 3 application (uvicorn, hypercorn, mounted in Starlette)."""

from __future__ import annotations

import logging

from .._web.asgi import (
    ASGIApp,
    ASGIReceive,
    ASGIScope,
    ASGISend,
    BodyTooLargeError,
    DisconnectedError,
    lifespan,
    read_body,
)
from .._web.responses import INTERNAL_ERROR, Response, too_large
from ._responses import Answering

__all__ = ["ASGIApp", "asgi_app"]

logger = logging.getLogger("flnotify")


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
