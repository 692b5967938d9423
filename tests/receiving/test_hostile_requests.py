"""Hostile requests cost linear time and bounded memory, and get the router's own 4xx.

* a property test feeds the router (its core, its ASGI and its WSGI adapter) arbitrary
  header lists and bodies: the answer is one of the router's statuses with its JSON
  error body, nothing escapes, and the work (Python line events inside flnotify,
  counted by a tracer: an operation count, not a clock) grows at most linearly;
* explicit tests on real servers: a flood of repeated signature headers, bodies nested
  far deeper than any notification, and a genuine notification right after each.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any
from uuid import UUID

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.codec
from flnotify import NotificationType, RoundBody, TrainingRoundStartNotification, generate_secret
from flnotify.receiving import NotificationRouter, ReceivingLimits, make_wsgi_server
from flnotify.signing import sign_payload

SECRET = generate_secret()
NOW = 1_700_000_000
ROUND = TrainingRoundStartNotification(
    receivers=(),
    body=RoundBody(round=1, global_model_uuid=UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")),
    training_uuid=UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01"),
)
GOOD_BODY = flnotify.codec.encode(ROUND)
ROUTER_STATUSES = {200, 202, 400, 401, 405, 411, 413, 431, 503}
WEBHOOK_NAMES = ["webhook-id", "webhook-timestamp", "webhook-signature", "Webhook-Signature"]


def make_router(**kwargs: Any) -> NotificationRouter:
    router = NotificationRouter(secrets=SECRET, clock=lambda: float(NOW), **kwargs)
    for kind in NotificationType:
        router.add_handler(kind, lambda notification: None)
    return router


# ---------------------------------------------------------------- counting operations


class OperationCounter:
    """Counts line events executed inside flnotify's own code while tracing."""

    def __init__(self) -> None:
        self.count = 0

    def _trace(self, frame: FrameType, event: str, arg: object) -> Any:
        if "/flnotify/" not in frame.f_code.co_filename:
            return None
        if event == "line":
            self.count += 1
        return self._trace

    def measure(self, func: Callable[[], object]) -> int:
        self.count = 0
        previous = sys.gettrace()
        sys.settrace(self._trace)
        try:
            func()
        finally:
            sys.settrace(previous)
        return self.count


# ---------------------------------------------------------------- three ways in


def via_core(router: NotificationRouter, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
    return router.handle("POST", headers, body)


def via_asgi(router: NotificationRouter, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
    app: Any = router.asgi_app()
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": headers}
    asyncio.run(app(scope, receive, send))
    start, end = sent
    return start["status"], dict(start["headers"]), end["body"]


def via_wsgi(router: NotificationRouter, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
    }
    for name, value in headers:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if key in ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
            continue
        # as servers do: repeated headers folded with commas
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    captured: list[Any] = []

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> Any:
        captured.append((int(status.split()[0]), dict(response_headers)))
        return None

    app: Any = router.wsgi_app()
    chunks = app(environ, start_response)
    status, response_headers = captured[0]
    return status, {k.encode(): v.encode() for k, v in response_headers.items()}, b"".join(chunks)


def normalise(result: Any) -> tuple[int, dict[bytes, bytes], bytes]:
    if isinstance(result, tuple):
        return result
    return result.status, {k.encode(): v.encode() for k, v in result.headers}, result.body


WAYS = {"core": via_core, "asgi": via_asgi, "wsgi": via_wsgi}


def assert_router_answer(status: int, headers: dict[bytes, bytes], body: bytes) -> None:
    assert status in ROUTER_STATUSES
    if status >= 400:
        assert headers[b"content-type"] == b"application/json"
        document = json.loads(body)
        assert set(document) == {"error", "detail"}


# ---------------------------------------------------------------- the property


header_names = st.one_of(
    st.sampled_from(WEBHOOK_NAMES),
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
        min_size=1,
        max_size=20,
    ),
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=200)
header_lists = st.lists(
    st.tuples(header_names, header_values).map(
        lambda pair: (pair[0].encode("latin-1"), pair[1].encode("latin-1"))
    ),
    max_size=150,
)


def nested(depth: int, opener: str) -> bytes:
    if opener == "[":
        return b"[" * depth + b"[]" + b"]" * depth
    return b'{"k":' * depth + b'{"a":1}' + b"}" * depth


bodies = st.one_of(
    st.binary(max_size=300),
    st.just(GOOD_BODY),
    st.builds(nested, st.integers(0, 3000), st.sampled_from("[{")),
    st.builds(
        lambda d: (
            b'{"notification_type":"UPDATE_ROUND_START","body":'
            + b'{"round":' * d
            + b"1"
            + b"}" * d
            + b',"training_uuid":"x"}'
        ),
        st.integers(0, 2000),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(way=st.sampled_from(sorted(WAYS)), headers=header_lists, body=bodies, signed=st.booleans())
def test_any_headers_and_body_get_a_router_answer_at_linear_cost(
    way: str, headers: list[tuple[bytes, bytes]], body: bytes, signed: bool
) -> None:
    router = make_router()
    if signed:
        signed_headers = sign_payload(body, SECRET, msg_id="msg_prop", timestamp=NOW)
        headers = [(k.encode(), v.encode()) for k, v in signed_headers.items()] + headers
    counter = OperationCounter()
    results: list[Any] = []
    operations = counter.measure(lambda: results.append(WAYS[way](router, headers, body)))
    assert_router_answer(*normalise(results[0]))
    # linear: a constant plus a few operations per header; the body is scanned in C
    assert operations <= 3000 + 40 * len(headers), (operations, len(headers), len(body))


# ---------------------------------------------------------------- explicit: linear growth


def flood(count: int) -> list[tuple[bytes, bytes]]:
    signed = sign_payload(GOOD_BODY, SECRET, msg_id="msg_flood", timestamp=NOW)
    headers = [(k.encode(), v.encode()) for k, v in signed.items()]
    return headers + [(b"webhook-signature", b"v1," + b"A" * 43 + b"=")] * count


UNLIMITED = ReceivingLimits(
    max_headers=10**7, max_header_bytes=10**9, max_signatures=10**7, max_body_bytes=10**8
)


@pytest.mark.parametrize("limits", [None, UNLIMITED], ids=["default-limits", "no-limits"])
def test_a_flood_of_repeated_signature_headers_costs_linear_operations(
    limits: ReceivingLimits | None,
) -> None:
    router = make_router(limits=limits, dedup=None) if limits else make_router(dedup=None)
    counter = OperationCounter()
    small = counter.measure(lambda: router.handle("POST", flood(1_000), GOOD_BODY))
    large = counter.measure(lambda: router.handle("POST", flood(16_000), GOOD_BODY))
    assert large <= 16 * 1.5 * small  # 16 times the input: at most ~16 times the work
    answer = router.handle("POST", flood(16_000), GOOD_BODY)
    # without limits the one genuine signature among them is found: linear, and accepted
    assert answer.status == (431 if limits is None else 202)


def cpu_seconds(func: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        func()
        best = min(best, time.process_time() - start)
    return best


def test_folding_repeated_signature_headers_is_not_quadratic() -> None:
    # the C-level work (joining strings) is invisible to a line tracer: compare the CPU
    # time of two input sizes instead; quadratic folding made 16x the input cost ~256x
    router = make_router(limits=UNLIMITED)
    small, large = flood(4_000), flood(64_000)
    ratio = cpu_seconds(lambda: router.handle("POST", large, GOOD_BODY)) / max(
        cpu_seconds(lambda: router.handle("POST", small, GOOD_BODY)), 1e-4
    )
    assert ratio < 64, ratio


@pytest.mark.parametrize("depth", [40, 10_000, 1_000_000])
@pytest.mark.parametrize("way", sorted(WAYS))
def test_deep_nesting_is_the_routers_400(way: str, depth: int) -> None:
    body = b'{"notification_type":"TRAINING_START","body":' + b"[" * depth + b"]" * depth + b"}"
    if len(body) > ReceivingLimits().max_body_bytes:
        body = b"[" * (ReceivingLimits().max_body_bytes - 10)  # unbalanced and huge
    router = make_router(max_body_bytes=4 * 1024 * 1024)
    headers = [
        (k.encode(), v.encode()) for k, v in sign_payload(body, SECRET, timestamp=NOW).items()
    ]
    status, response_headers, response_body = normalise(WAYS[way](router, headers, body))
    assert status == 400
    assert response_headers[b"content-type"] == b"application/json"
    assert json.loads(response_body)["error"] == "invalid_notification"
    assert "nested deeper than 32 levels" in json.loads(response_body)["detail"]


def test_router_bugs_are_its_own_json_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    router = make_router()

    def broken(*args: object, **kwargs: object) -> None:
        raise RecursionError("a bug")

    monkeypatch.setattr("flnotify.receiving._router.inspect_request", broken)
    headers = [
        (k.encode(), v.encode()) for k, v in sign_payload(GOOD_BODY, SECRET, timestamp=NOW).items()
    ]
    for way in sorted(WAYS):
        status, _, body = normalise(WAYS[way](router, headers, GOOD_BODY))
        assert (status, json.loads(body)["error"]) == (500, "internal_error")
    assert "the router failed on a request" in caplog.text


# ---------------------------------------------------------------- real servers


@contextlib.contextmanager
def serve_asgi(router: NotificationRouter) -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(router.asgi_app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def serve_wsgi(router: NotificationRouter) -> Iterator[int]:
    server = make_wsgi_server("127.0.0.1", 0, router.wsgi_app())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


SERVERS = {"uvicorn": serve_asgi, "wsgiref": serve_wsgi}


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer until the server closes; (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(request)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def request_bytes(headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [b"POST /fl/notify HTTP/1.1", b"host: 127.0.0.1", b"connection: close"]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"content-type: application/json", b"content-length: " + str(len(body)).encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def genuine(msg_id: str) -> bytes:
    signed = sign_payload(GOOD_BODY, SECRET, msg_id=msg_id)
    return request_bytes([(k.encode(), v.encode()) for k, v in signed.items()], GOOD_BODY)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_real_server_flood_of_repeated_headers_is_a_json_431(server: str) -> None:
    router = NotificationRouter(secrets=SECRET)
    router.add_handler(TrainingRoundStartNotification, lambda notification: None)
    flood_request = request_bytes(flood(20_000)[3:], GOOD_BODY)  # ~1 MB of headers, unsigned
    assert len(flood_request) > 1_000_000
    with SERVERS[server](router) as port:
        status, headers, body = exchange(port, flood_request)
        after = exchange(port, genuine("msg_after_flood"))
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "headers_too_large"
    assert after[0] == 202


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_real_server_deep_nesting_is_a_json_400(server: str) -> None:
    router = NotificationRouter(secrets=SECRET)
    router.add_handler(TrainingRoundStartNotification, lambda notification: None)
    body = b"[" * 500_000 + b"]" * 500_000
    signed = sign_payload(body, SECRET)
    with SERVERS[server](router) as port:
        status, headers, answer = exchange(
            port, request_bytes([(k.encode(), v.encode()) for k, v in signed.items()], body)
        )
        after = exchange(port, genuine("msg_after_nesting"))
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "nested deeper than" in json.loads(answer)["detail"]
    assert after[0] == 202
