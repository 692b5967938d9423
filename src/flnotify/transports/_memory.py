"""An in-process transport for tests: a handler function stands in for every client."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Union

import attrs

from .._exceptions import TransportError
from .._types import HttpResponse

__all__ = ["MemoryRequest", "MemoryTransport"]


@attrs.frozen
class MemoryRequest:
    """One POST as the [`MemoryTransport`][] saw it."""

    url: str
    body: bytes
    headers: Mapping[str, str]


HandlerResult = Union[HttpResponse, int]  # noqa: UP007 - runtime alias on Python 3.10
Handler = Callable[[MemoryRequest], Union[HandlerResult, Awaitable[HandlerResult]]]  # noqa: UP007


def _accept(_: MemoryRequest) -> HandlerResult:
    return 200


@attrs.define
class MemoryTransport:
    """Answers every POST by calling ``handler`` (sync or async) instead of the network.

    The handler gets a [`MemoryRequest`][] and returns a status code or an
    [`HttpResponse`][]; raising a [`TransportError`][] (for example
    ``flnotify.errors.ConnectError("down")``) simulates a network failure. Every request is
    recorded in `requests`, in order.

    Args:
        handler: Stands in for the clients; by default every POST is answered 200.
    """

    handler: Handler = _accept
    requests: list[MemoryRequest] = attrs.field(init=False, factory=list)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def _record(self, url: str, body: bytes, headers: Mapping[str, str]) -> MemoryRequest:
        request = MemoryRequest(url, body, {k.lower(): v for k, v in headers.items()})
        with self._lock:
            self.requests.append(request)
        return request

    @staticmethod
    def _answer(result: HandlerResult) -> HttpResponse:
        if isinstance(result, HttpResponse):
            return result
        if isinstance(result, int) and not isinstance(result, bool):
            return HttpResponse(status_code=result)
        msg = f"MemoryTransport handler returned {result!r}; expected an int or HttpResponse"
        raise TransportError(msg)

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """Call the handler; an async handler is refused here (use ``apost``)."""
        result = self.handler(self._record(url, body, headers))
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            msg = "MemoryTransport.post cannot await an async handler; use apost"
            raise TransportError(msg, url=url)
        return self._answer(result)

    async def apost(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """Call (and await, if async) the handler."""
        result = self.handler(self._record(url, body, headers))
        if inspect.isawaitable(result):
            result = await result
        return self._answer(result)

    def close(self) -> None:
        """Nothing to release."""

    async def aclose(self) -> None:
        """Nothing to release."""
