"""Transports: how a POST is made.

``StreamTransport`` is the ``Notifier``'s default: a lean HTTP/1.1 client for large fan-out
(responses parsed by httptools with the extra ``flnotify[fast]``, else by h11, which httpx
brings); it is imported on first use.
``HttpxTransport`` is the httpx-based one (HTTP/2, proxies, what httpx offers);
``MemoryTransport`` stands in for clients in tests.
"""

from typing import TYPE_CHECKING, Any

from ._base import (
    DEFAULT_MAX_RESPONSE_BYTES,
    AsyncTransport,
    HttpResponse,
    PinningTransport,
    SelfBoundingTransport,
    Transport,
)
from ._httpx import HttpxTransport
from ._tls import TLSConfig, TLSFor

if TYPE_CHECKING:
    from ._streams import StreamTransport

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "AsyncTransport",
    "HttpResponse",
    "HttpxTransport",
    "PinningTransport",
    "SelfBoundingTransport",
    "StreamTransport",
    "TLSConfig",
    "TLSFor",
    "Transport",
]


def __getattr__(name: str) -> Any:
    if name == "StreamTransport":
        from ._streams import StreamTransport

        return StreamTransport
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
