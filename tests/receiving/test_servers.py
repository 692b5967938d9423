"""Self-tests of the loopback servers in ``servers.py``, with stdlib clients only."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http.client
import json
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from helpers.servers import FaultServer, SinkServer, refused_url


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv
        assert srv.errors == []


@contextlib.contextmanager
def connect(
    srv: FaultServer,
    *,
    timeout: float = 2.0,
    context: ssl.SSLContext | None = None,
    index: int = 0,
) -> Iterator[http.client.HTTPConnection]:
    conn: http.client.HTTPConnection
    if srv.tls:
        conn = http.client.HTTPSConnection(
            srv.host, srv.ports[index], timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(srv.host, srv.ports[index], timeout=timeout)
    try:
        yield conn
    finally:
        conn.close()


def fetch(
    conn: http.client.HTTPConnection,
    path: str,
    *,
    method: str = "POST",
    body: bytes = b'{"x": 1}',
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=body, headers=hdrs)
    response = conn.getresponse()
    return response, response.read()


def raw_request(path: str, body: bytes = b"{}") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_tls_until_closed(
    sock: socket.socket, incoming: ssl.MemoryBIO, tls: ssl.SSLObject, received: list[bytes]
) -> None:
    while data := sock.recv(65536):
        incoming.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            received.append(tls.read(65536))


# --------------------------------------------------------------------------- status


@pytest.mark.parametrize("status", [200, 202, 404, 500])
def test_status_answers_code_with_body_and_records_request(
    server: FaultServer, status: int
) -> None:
    with connect(server) as conn:
        response, body = fetch(
            conn, f"/status/{status}?q=1", body=b'{"round": 3}', headers={"X-Sig": "abc"}
        )
    assert response.status == status
    assert int(response.headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"status": status}

    (recorded,) = server.wait_for_requests(1)
    assert recorded.method == "POST"
    assert recorded.path == f"/status/{status}"
    assert recorded.target == f"/status/{status}?q=1"
    assert recorded.headers["x-sig"] == "abc"
    assert recorded.headers["content-length"] == "12"
    assert recorded.body == b'{"round": 3}'
    assert recorded.json() == {"round": 3}
    assert not recorded.chunked
    assert recorded.connection_id == 1
    assert recorded.port == server.port
    assert server.requests_for(f"/status/{status}") == [recorded]
    assert server.requests_for(f"/status/{status}?q=1") == [recorded]


def test_204_has_no_body(server: FaultServer) -> None:
    with connect(server) as conn:
        response, body = fetch(conn, "/status/204")
        assert (response.status, body) == (204, b"")
        # The connection is still usable afterwards.
        response, _ = fetch(conn, "/status/200")
        assert response.status == 200


def test_unknown_path_answers_default_status(server: FaultServer) -> None:
    with connect(server) as conn:
        response, body = fetch(conn, "/nope")
        assert response.status == 404
        assert "no behaviour" in json.loads(body)["error"]
        response, _ = fetch(conn, "/status/notanumber")
        assert response.status == 400


def test_keep_alive_reuses_one_connection(server: FaultServer) -> None:
    with connect(server) as conn:
        for path in ("/status/202", "/status/500", "/status/200"):
            fetch(conn, path)
    ids = {r.connection_id for r in server.wait_for_requests(3)}
    assert ids == {1}
    assert server.connections_opened == 1


def test_separate_connections_get_separate_ids(server: FaultServer) -> None:
    for _ in range(2):
        with connect(server) as conn:
            fetch(conn, "/status/200")
    assert [r.connection_id for r in server.wait_for_requests(2)] == [1, 2]
    server.wait_until(lambda: server.open_connections == 0)


def test_chunked_request_is_recorded_and_decoded(server: FaultServer) -> None:
    with connect(server) as conn:
        conn.request("POST", "/status/202", body=iter([b'{"a":', b" 1}"]), encode_chunked=True)
        response = conn.getresponse()
        response.read()
    assert response.status == 202
    (recorded,) = server.wait_for_requests(1)
    assert recorded.chunked
    assert "content-length" not in recorded.headers
    assert recorded.body == b'{"a": 1}'


def test_expect_100_continue(server: FaultServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(
            b"POST /status/200 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"{}")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
    assert server.wait_for_requests(1)[0].body == b"{}"


# --------------------------------------------------------------------------- retry-after


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_seconds(server: FaultServer, status: int) -> None:
    with connect(server) as conn:
        response, _ = fetch(conn, f"/retry-after/{status}/7")
    assert response.status == status
    assert response.headers["Retry-After"] == "7"


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_http_date(server: FaultServer, status: int) -> None:
    with connect(server) as conn:
        response, _ = fetch(conn, f"/retry-after-date/{status}/30")
    assert response.status == status
    when = email.utils.parsedate_to_datetime(response.headers["Retry-After"])
    delta = (when - datetime.now(timezone.utc)).total_seconds()
    assert 27 <= delta <= 31


# --------------------------------------------------------------------------- faults


def test_hang_never_answers(server: FaultServer) -> None:
    with connect(server, timeout=0.3) as conn:
        conn.request("POST", "/hang", body=b"{}")
        with pytest.raises(TimeoutError):
            conn.getresponse()
    assert server.wait_for_requests(1)[0].path == "/hang"


def test_hang_ends_when_client_closes(server: FaultServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(raw_request("/hang"))
        server.wait_for_requests(1)
        assert server.open_connections == 1
    server.wait_until(lambda: server.open_connections == 0)


def test_stop_is_immediate_with_hanging_and_slow_clients() -> None:
    srv = FaultServer()
    srv.start()
    try:
        with contextlib.ExitStack() as stack:
            socks = [
                stack.enter_context(socket.create_connection((srv.host, srv.port), timeout=2))
                for _ in range(3)
            ]
            socks[0].sendall(raw_request("/hang"))
            socks[1].sendall(raw_request("/slow-headers/60"))
            socks[2].sendall(raw_request("/big/100000000"))  # never read by the client
            srv.wait_for_requests(3)
            started = time.monotonic()
            srv.stop()
            assert time.monotonic() - started < 1.0
            for sock in socks:
                with contextlib.suppress(ConnectionResetError):
                    read_until_closed(sock)  # EOF or reset: either way, not a hang
    finally:
        srv.stop()
    assert srv.errors == []


def test_slow_headers_sends_status_line_then_waits(server: FaultServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(raw_request("/slow-headers/30/202"))
        assert sock.recv(100) == b"HTTP/1.1 202 Accepted\r\n"
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(100)


def test_slow_headers_completes_after_delay(server: FaultServer) -> None:
    started = time.monotonic()
    with connect(server) as conn:
        response, body = fetch(conn, "/slow-headers/0.2")
    assert time.monotonic() - started >= 0.2
    assert response.status == 200
    assert json.loads(body) == {"status": 200}


def test_slow_body_sends_headers_then_waits(server: FaultServer) -> None:
    with connect(server, timeout=0.3) as conn:
        conn.request("POST", "/slow-body/30", body=b"{}")
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(TimeoutError):
            response.read()


def test_reset_sends_rst(server: FaultServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(raw_request("/reset"))
        with pytest.raises(ConnectionResetError):
            read_until_closed(sock)


def test_reset_is_a_connection_error_for_http_client(server: FaultServer) -> None:
    with connect(server) as conn:
        conn.request("POST", "/reset", body=b"{}")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            conn.getresponse().read()


def test_close_closes_without_response(server: FaultServer) -> None:
    with connect(server) as conn:
        conn.request("POST", "/close", body=b"{}")
        with pytest.raises(http.client.RemoteDisconnected):
            conn.getresponse()
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(raw_request("/close"))
        assert read_until_closed(sock) == b""


@pytest.mark.parametrize(("path", "status"), [("/redirect", 301), ("/redirect/307", 307)])
def test_redirect(server: FaultServer, path: str, status: int) -> None:
    with connect(server) as conn:
        response, _ = fetch(conn, path)
        assert response.status == status
        assert response.headers["Location"] == server.url("/status/200")
        response, _ = fetch(conn, "/status/200")
        assert response.status == 200


def test_big_body(server: FaultServer) -> None:
    size = 10 * 1024 * 1024
    with connect(server) as conn:
        response, body = fetch(conn, f"/big/{size}")
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        assert len(body) == size
        response, body = fetch(conn, "/big/10/500")
        assert (response.status, body) == (500, b"x" * 10)


def test_big_body_client_may_stop_reading(server: FaultServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(raw_request(f"/big/{50 * 1024 * 1024}"))
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    server.wait_until(lambda: server.open_connections == 0)
    with connect(server) as conn:
        assert fetch(conn, "/status/200")[0].status == 200


def test_chunked_response(server: FaultServer) -> None:
    with connect(server) as conn:
        response, body = fetch(conn, "/chunked/202")
        assert response.status == 202
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert json.loads(body) == {"status": 202, "chunked": True}
        # Keep-alive after a chunked answer.
        assert fetch(conn, "/status/200")[0].status == 200
    assert {r.connection_id for r in server.wait_for_requests(2)} == {1}


def test_flaky_counts_per_target(server: FaultServer) -> None:
    with connect(server) as conn:
        statuses = [fetch(conn, "/flaky/2/202")[0].status for _ in range(4)]
        other = [fetch(conn, "/flaky/2/202?id=b")[0].status for _ in range(3)]
    assert statuses == [503, 503, 202, 202]
    assert other == [503, 503, 202]
    assert len(server.requests_for("/flaky/2/202")) == 7
    assert len(server.requests_for("/flaky/2/202?id=b")) == 3


def test_keepalive_close(server: FaultServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(raw_request("/keepalive-close"))
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert b"\r\nConnection: close\r\n" in data

    with connect(server) as conn:
        response, _ = fetch(conn, "/keepalive-close")
        assert response.status == 202
        assert response.headers["Connection"] == "close"
        fetch(conn, "/status/200")  # http.client reconnects
    assert [r.connection_id for r in server.requests_for("/keepalive-close")] == [1, 2]
    assert server.requests_for("/status/200")[0].connection_id == 3


def test_client_connection_close_is_honoured(server: FaultServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(
            b"POST /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in data


def test_refused_url() -> None:
    url = refused_url("/x")
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert FaultServer.refused_url().endswith("/")


def test_multiple_ports_share_state() -> None:
    with FaultServer(ports=2) as srv:
        assert len(set(srv.ports)) == 2
        assert srv.urls("/a") == [f"http://127.0.0.1:{p}/a" for p in srv.ports]
        for index in (0, 1):
            with connect(srv, index=index) as conn:
                fetch(conn, "/flaky/1/200")
        assert [r.port for r in srv.wait_for_requests(2)] == srv.ports
        assert srv.port_request_counts == {srv.ports[0]: 1, srv.ports[1]: 1}


def test_wait_for_requests_times_out(server: FaultServer) -> None:
    with pytest.raises(TimeoutError):
        server.wait_for_requests(1, timeout=0.05)


def test_async_waiting_does_not_block_the_loop(server: FaultServer) -> None:
    async def scenario() -> None:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(raw_request("/status/202?async=1"))
            await writer.drain()
            recorded = await server.wait_for_requests_async(1, path="/status/202")
            assert recorded[0].target == "/status/202?async=1"
            assert (await reader.readline()).startswith(b"HTTP/1.1 202")
            with pytest.raises(TimeoutError):
                await server.wait_for_requests_async(2, timeout=0.05)
        finally:
            writer.close()
            await writer.wait_closed()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- sink


def test_sink_serves_many_requests_fast() -> None:
    with SinkServer() as sink:
        started = time.monotonic()
        with connect(sink) as conn:
            for i in range(1000):
                response, _ = fetch(conn, f"/client/{i}", body=b'{"n": 1}')
                assert response.status == 202
        assert time.monotonic() - started < 5
        assert sink.request_count == 1000
        assert sink.requests == []  # record=False by default
        assert sink.connections_opened == 1
        assert sink.errors == []


def test_sink_records_when_asked_and_spreads_over_ports() -> None:
    with SinkServer(500, ports=3, record=True) as sink:
        assert len(set(sink.ports)) == 3
        for index in range(3):
            with connect(sink, index=index) as conn:
                response, _ = fetch(conn, "/status/200", body=f'{{"i": {index}}}'.encode())
                assert response.status == 500  # a sink ignores behaviour paths
        recorded = sink.wait_for_requests(3)
        assert [r.json() for r in recorded] == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert sorted(sink.port_request_counts.values()) == [1, 1, 1]


# --------------------------------------------------------------------------- TLS


def test_tls_with_ca_context() -> None:
    with FaultServer(tls=True) as srv:
        assert srv.url("/status/200").startswith("https://127.0.0.1:")
        with connect(srv, context=srv.client_ssl_context()) as conn:
            response, _ = fetch(conn, "/status/202")
            assert response.status == 202
            assert fetch(conn, "/chunked/200")[0].status == 200
        # The CA file works as a trust anchor too, also for the DNS name.
        ctx = ssl.create_default_context(cafile=srv.ca_pem_path)
        with (
            socket.create_connection((srv.host, srv.port), timeout=2) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls_sock,
        ):
            tls_sock.sendall(raw_request("/status/200"))
            assert tls_sock.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
        assert {r.connection_id for r in srv.wait_for_requests(3)} == {1, 2}
        assert srv.errors == []


def test_tls_verification_fails_without_ca() -> None:
    with FaultServer(tls=True) as srv:
        with (
            connect(srv, context=ssl.create_default_context()) as conn,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            conn.request("POST", "/status/200", body=b"{}")
        srv.wait_until(lambda: srv.handshake_failures == 1)
        assert srv.request_count == 0


def test_tls_hang() -> None:
    with FaultServer(tls=True) as srv:
        with connect(srv, timeout=0.3, context=srv.client_ssl_context()) as conn:
            conn.request("POST", "/hang", body=b"{}")
            with pytest.raises(TimeoutError):
                conn.getresponse()
        assert srv.wait_for_requests(1)[0].path == "/hang"
        assert srv.errors == []


def test_tls_reset_sends_rst_after_partial_response() -> None:
    # ssl.SSLSocket reports a reset as a ragged EOF (b""), so drive TLS over
    # memory BIOs and read the TCP socket directly to see the RST itself.
    with FaultServer(tls=True) as srv:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = srv.client_ssl_context().wrap_bio(incoming, outgoing, server_hostname=srv.host)
        with socket.create_connection((srv.host, srv.port), timeout=2) as sock:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    incoming.write(sock.recv(65536))
            tls.write(raw_request("/reset"))
            sock.sendall(outgoing.read())
            received: list[bytes] = []
            with pytest.raises(ConnectionResetError):
                read_tls_until_closed(sock, incoming, tls, received)
        assert b"".join(received) == b"HTTP/1.1 200 OK\r\nContent-Le"
        assert srv.errors == []


def test_tls_sink_and_stop_with_unfinished_handshake() -> None:
    with SinkServer(tls=True) as sink:
        with connect(sink, context=sink.client_ssl_context()) as conn:
            assert fetch(conn, "/")[0].status == 202
        # A client that connects but never starts TLS must not delay stop.
        with socket.create_connection((sink.host, sink.port), timeout=2):
            sink.wait_until(lambda: sink.connections_opened == 2)
            started = time.monotonic()
            sink.stop()
            assert time.monotonic() - started < 1.0


def test_server_cannot_be_restarted() -> None:
    srv = FaultServer()
    with srv:
        pass
    with pytest.raises(RuntimeError):
        srv.start()


def test_plain_server_has_no_ca(server: FaultServer) -> None:
    with pytest.raises(RuntimeError):
        server.client_ssl_context()
    assert server.url("status/200") == f"http://127.0.0.1:{server.port}/status/200"
