"""A small mailbox server on loopback, made of the wire format alone, for the poller's tests.

``FakeMailbox`` serves ``POST {base}/fetch`` and ``POST {base}/ack`` from a threaded
``http.server`` on 127.0.0.1: it verifies each request's signature with the client's
secret, refuses a replayed nonce or another client's mailbox (401), holds a fetch while
the mailbox is empty (a condition variable, woken by ``post`` or ``close``), offers every
unacknowledged message again at each fetch (signed at the offer, as the real app does) and
records every acknowledgement. ``script_fetches`` / ``script_acks`` give raw answers
(any status, headers and bytes) for the next requests, after authentication::

    with FakeMailbox(client_id, secret) as mailbox:
        mailbox.post(codec.encode(notification))
        poller = MailboxPoller(mailbox.url, client_id=client_id, secret=secret, router=router)
        ...
        assert mailbox.acks == [[Ack(message_id, 202)]]
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from uuid import UUID

from flnotify import Signer
from flnotify.mailbox._wire import (
    Ack,
    MailboxProtocolError,
    WireMessage,
    messages_document,
    parse_ack,
    parse_fetch,
)
from flnotify.signing import Verifier, new_message_id


def _client_of(body: bytes) -> UUID | None:
    """The client a request body names, before anything else is checked."""
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        return UUID(json.loads(body)["client"])
    return None


__all__ = ["FakeMailbox", "Raw", "Seen"]


@dataclass(frozen=True)
class Raw:
    """A scripted answer, written as it is (then the connection closes)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = True


@dataclass
class _Letter:
    id: str
    body: bytes
    secret: str | None  # signs the offer; None: the mailbox's client secret
    headers: dict[str, str] | None = None  # offered as they are (forgeries)


@dataclass
class Seen:
    """One request as the mailbox judged it."""

    path: str
    status: int
    nonce: str = ""
    fetch_max: int | None = None
    fetch_wait: float | None = None


@dataclass
class _State:
    letters: list[_Letter] = field(default_factory=list)
    acks: list[list[Ack]] = field(default_factory=list)
    nonces: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    fetch_answers: collections.deque[Raw | None] = field(default_factory=collections.deque)
    ack_answers: collections.deque[Raw] = field(default_factory=collections.deque)
    holding: int = 0
    closing: bool = False


class FakeMailbox:
    """One client's mailbox on 127.0.0.1 (see the module's docstring).

    Args:
        client_id: The only client it serves.
        secret: That client's secret: its requests must be signed with it, and offered
            messages are.
        max_wait: The longest hold of a fetch (the real app's ``max_wait``).
        tolerance: Seconds a request's timestamp may lie from now.
        takes_acks: Take acknowledgements carried by a fetch, and say so (an app of this
            release); by default it answers as an older app, which has only ``/ack``.
    """

    def __init__(
        self,
        client_id: UUID,
        secret: str,
        *,
        max_wait: float = 30.0,
        tolerance: float = 60.0,
        takes_acks: bool = False,
    ) -> None:
        self.takes_acks = takes_acks
        self.client_id = client_id
        self.secret = secret
        self.max_wait = max_wait
        self.verifier = Verifier(secret, tolerance=tolerance)
        self.cond = threading.Condition()
        self.state = _State()
        self.holding_started = threading.Event()
        """Set when a fetch starts being held (the mailbox was empty)."""
        self.acked = threading.Event()
        """Set at each recorded acknowledgement."""
        handler = type("Handler", (_Handler,), {"mailbox": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = False
        self.server.block_on_close = True
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.url = self.base + "/mailbox"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))

    def __enter__(self) -> FakeMailbox:
        self.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self.cond:
            self.state.closing = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()  # joins the handler threads, held ones included
        self.thread.join(10)

    # -- what a test does ------------------------------------------------------------------

    def post(
        self,
        body: bytes,
        message_id: str | None = None,
        *,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Queue a message (signed with ``secret``, or offered with ``headers`` as they are)."""
        letter = _Letter(message_id or new_message_id(), body, secret, headers)
        with self.cond:
            self.state.letters.append(letter)
            self.cond.notify_all()
        return letter.id

    def script_fetches(self, *answers: Raw | None) -> None:
        """Answer the next fetches with these (``None``: serve that one normally)."""
        with self.cond:
            self.state.fetch_answers.extend(answers)

    def script_acks(self, *answers: Raw) -> None:
        with self.cond:
            self.state.ack_answers.extend(answers)

    @property
    def acks(self) -> list[list[Ack]]:
        with self.cond:
            return [list(a) for a in self.state.acks]

    @property
    def seen(self) -> list[Seen]:
        with self.cond:
            return list(self.state.seen)

    @property
    def holding(self) -> int:
        with self.cond:
            return self.state.holding

    @property
    def pending(self) -> list[str]:
        with self.cond:
            return [letter.id for letter in self.state.letters]

    # -- serving ---------------------------------------------------------------------------

    def _offer(self, letters: list[_Letter]) -> bytes:
        now = int(time.time())
        messages = []
        for letter in letters:
            if letter.headers is not None:
                headers = dict(letter.headers)
            else:
                headers = Signer(letter.secret or self.secret).headers(letter.id, now, letter.body)
                headers["content-type"] = "application/json"
                headers["user-agent"] = "flnotify-test-mailbox"
            messages.append(WireMessage(headers, letter.body))
        return messages_document(messages, takes_acks=self.takes_acks)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> Raw:
        """The answer to one request (called from the server's threads)."""
        nonce = headers.get("webhook-id", "")
        refused = self._authenticate(headers, body)
        if refused is not None:
            self._record(Seen(path, refused.status, nonce))
            return refused
        if path.endswith("/ack"):
            return self._ack(body, nonce)
        if path.endswith("/fetch"):
            return self._fetch(body, nonce)
        self._record(Seen(path, 404, nonce))
        return Raw(404, b'{"error":"not_found"}')

    def _record(self, seen: Seen) -> None:
        with self.cond:
            self.state.seen.append(seen)

    def _authenticate(self, headers: dict[str, str], body: bytes) -> Raw | None:
        unauthorized = Raw(401, b'{"error":"unauthorized","detail":"not this client"}')
        if _client_of(body) != self.client_id:
            return unauthorized
        try:
            verified = self.verifier.verify(headers, body)
        except Exception:
            return unauthorized
        with self.cond:
            if verified.id in self.state.nonces:
                return unauthorized  # a replay
            self.state.nonces.add(verified.id)
        return None

    def _ack(self, body: bytes, nonce: str) -> Raw:
        with self.cond:
            if self.state.ack_answers:
                scripted = self.state.ack_answers.popleft()
                self.state.seen.append(Seen("/ack", scripted.status, nonce))
                return scripted
        try:
            _, acks = parse_ack(body, max_acks=1000)
        except MailboxProtocolError as exc:
            self._record(Seen("/ack", 400, nonce))
            return Raw(400, f'{{"error":"malformed","detail":"{exc}"}}'.encode())
        self._record(Seen("/ack", 200, nonce))
        taken = self._take(acks)
        return Raw(200, f'{{"accepted":{taken}}}'.encode(), close=False)

    def _take(self, acks: list[Ack]) -> int:
        with self.cond:
            acked = {a.id for a in acks}
            taken = sum(1 for letter in self.state.letters if letter.id in acked)
            self.state.letters = [x for x in self.state.letters if x.id not in acked]
            self.state.acks.append(acks)
        self.acked.set()
        return taken

    def _fetch(self, body: bytes, nonce: str) -> Raw:
        try:
            request = parse_fetch(body)
        except MailboxProtocolError:
            self._record(Seen("/fetch", 400, nonce))
            return Raw(400, b'{"error":"malformed"}')
        seen = Seen("/fetch", 200, nonce, request.max, request.wait)
        if request.acks and self.takes_acks:
            self._take(list(request.acks))
        with self.cond:
            scripted = self.state.fetch_answers.popleft() if self.state.fetch_answers else None
            if scripted is not None:
                seen.status = scripted.status
                self.state.seen.append(seen)
                return scripted
            if not self.state.letters and request.wait > 0 and not self.state.closing:
                self.state.holding += 1
                self.holding_started.set()
                try:
                    self.cond.wait_for(
                        lambda: bool(self.state.letters) or self.state.closing,
                        timeout=min(request.wait, self.max_wait),
                    )
                finally:
                    self.state.holding -= 1
            letters = list(self.state.letters[: request.max])
            self.state.seen.append(seen)
        return Raw(200, self._offer(letters), (("content-type", "application/json"),), close=False)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mailbox: FakeMailbox

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        raw = self.mailbox.answer(self.path, headers, body)
        try:
            self.send_response_only(raw.status)
            for name, value in raw.headers:
                self.send_header(name, value)
            self.send_header("content-length", str(len(raw.body)))
            if raw.close:
                self.send_header("connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(raw.body)
            self.wfile.flush()
        except OSError:  # the client went away (a cancelled poll): nothing to answer
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass  # quiet: the tests read what they need from ``seen``
