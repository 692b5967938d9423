"""Transports: how a POST is made. httpx by default; an in-memory one for tests."""

from ._base import DEFAULT_MAX_RESPONSE_BYTES, AsyncTransport, HttpResponse, Timeouts, Transport
from ._httpx import HttpxTransport
from ._memory import MemoryRequest, MemoryTransport

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "AsyncTransport",
    "HttpResponse",
    "HttpxTransport",
    "MemoryRequest",
    "MemoryTransport",
    "Timeouts",
    "Transport",
]
