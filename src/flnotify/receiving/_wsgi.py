"""The router as a PEP 3333 WSGI application (wsgiref, gunicorn, waitress)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._web.responses import INTERNAL_ERROR, Response, error, status_line
from .._web.wsgi import wsgi_headers
from ._responses import Answering

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


__all__ = ["wsgi_app"]

logger = logging.getLogger("flnotify")


def _answer(router: Answering, environ: WSGIEnvironment) -> Response:
    method = environ.get("REQUEST_METHOD", "GET")
    response, headers, length = router._precheck(method, wsgi_headers(environ))
    if response is not None:
        return response
    stream = environ["wsgi.input"]
    try:
        if length >= 0:
            body = stream.read(length)
        elif environ.get("wsgi.input_terminated"):
            body = stream.read(router.limits.max_body_bytes + 1)
        else:
            return error(411, "length_required", "a Content-Length header is required")
    except OSError:  # the server's read timeout (a slow body), or the peer went away
        return error(408, "request_timeout", "the body did not arrive in time")
    if length >= 0 and len(body) < length:
        return error(400, "bad_request", "the body is shorter than its Content-Length")
    return router.handle(method, headers, body)


def wsgi_app(router: Answering) -> WSGIApplication:
    """Serve ``router`` as a PEP 3333 WSGI application (any path answers).

    The header limits are checked first; the body is read by ``Content-Length`` (a POST
    without one is answered 411 unless the server sets ``wsgi.input_terminated``) and a
    larger length is refused unread; a body that stops arriving (the server's read
    timeout) is answered 408. Every answer is the router's own, a bug included (a JSON
    500), so the server never answers with its own error page.
    """

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            response = _answer(router, environ)
        except Exception:
            logger.exception("the WSGI adapter failed on a request")
            response = INTERNAL_ERROR
        start_response(status_line(response.status), list(response.headers))
        return [response.body]

    return app
