"""A response parser with httptools' interface, on h11 (installed with httpx).

[`StreamTransport`][flnotify.transports.StreamTransport] parses responses with httptools
(llhttp) when it is installed (``pip install 'flnotify[fast]'``); without it, this module
stands in: the same ``HttpResponseParser(protocol)`` with ``feed_data``,
``get_status_code`` and ``should_keep_alive``, calling the protocol's ``on_header``,
``on_headers_complete``, ``on_body`` and ``on_message_complete`` in the same order, and
raising ``HttpParserError`` / ``HttpParserUpgrade`` like httptools. h11 is pure Python and
strict (it refuses what RFC 9112 refuses), so parsing costs more than with llhttp, but the
rest of the transport (pools, keep-alive, one timer per connection) is the same.
"""

from __future__ import annotations

from typing import Any, Protocol

import h11

__all__ = ["HttpParserError", "HttpParserUpgrade", "HttpResponseParser"]

# h11 checks that a response answers a request it has seen; the transport writes its own
# request bytes, so the parser tells h11 about a stand-in POST (never sent anywhere).
_STAND_IN = h11.Request(method="POST", target="/", headers=[("host", "h"), ("content-length", "0")])
_END = h11.EndOfMessage()
_MAX_EVENT = 64 * 1024  # like the transport's own bound on a response head


class HttpParserError(Exception):
    """The bytes are not a valid HTTP/1.1 response."""


class HttpParserUpgrade(Exception):  # noqa: N818 - httptools' name, kept for the interface
    """The server switched protocols (101)."""


class _Callbacks(Protocol):
    def on_header(self, name: bytes, value: bytes) -> None: ...
    def on_headers_complete(self) -> None: ...
    def on_body(self, body: bytes) -> None: ...
    def on_message_complete(self) -> None: ...


class HttpResponseParser:
    """Feeds received bytes to an ``h11.Connection`` and reports events as httptools does."""

    __slots__ = ("_conn", "_keep_alive", "_protocol", "_status")

    def __init__(self, protocol: _Callbacks) -> None:
        self._protocol = protocol
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_EVENT)
        self._conn.send(_STAND_IN)
        self._conn.send(_END)
        self._status = 0
        self._keep_alive = True

    def get_status_code(self) -> int:
        """The status of the response being parsed."""
        return self._status

    def should_keep_alive(self) -> bool:
        """Whether the connection may carry another request after this response."""
        return self._keep_alive

    def feed_data(self, data: bytes) -> None:
        """Parse ``data``, calling the protocol for each part of the response.

        Raises:
            HttpParserError: The response is malformed.
            HttpParserUpgrade: The server answered 101 Switching Protocols.
        """
        conn = self._conn
        protocol = self._protocol
        try:
            if conn.their_state is h11.DONE:  # the previous response is complete
                conn.start_next_cycle()
                conn.send(_STAND_IN)
                conn.send(_END)
            conn.receive_data(data)
            while True:
                event: Any = conn.next_event()
                kind = type(event)
                if kind is h11.Data:
                    protocol.on_body(bytes(event.data))
                elif kind is h11.Response or kind is h11.InformationalResponse:
                    self._status = status = event.status_code
                    if status == 101:
                        msg = "the server switched protocols"
                        raise HttpParserUpgrade(msg)
                    for name, value in event.headers:
                        protocol.on_header(name, value)
                    protocol.on_headers_complete()
                    if kind is h11.InformationalResponse:
                        protocol.on_message_complete()  # llhttp ends a 1xx message here
                elif kind is h11.EndOfMessage:
                    # more bytes after the response: nobody asked for them, close afterwards
                    self._keep_alive = (
                        conn.their_state is h11.DONE
                        and conn.our_state is h11.DONE
                        and not conn.trailing_data[0]
                    )
                    protocol.on_message_complete()
                    return
                else:  # NEED_DATA, PAUSED or ConnectionClosed: wait for more
                    return
        except h11.RemoteProtocolError as exc:
            if "_SWITCH_UPGRADE" in str(exc):  # h11's word for a 101 nobody asked for
                msg = "the server switched protocols"
                raise HttpParserUpgrade(msg) from exc
            raise HttpParserError(str(exc)) from exc
