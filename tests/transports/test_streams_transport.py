"""StreamTransport against real loopback servers: framing, pooling, faults, TLS, cancellation.

``FaultServer`` (tests/helpers/servers.py) runs in its own thread; the few answers it cannot give
(broken HTTP, 1xx, bodies delimited by close, a keep-alive that dies under a reused
connection) come from tiny asyncio servers started in the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import flnotify
import flnotify.errors
from flnotify import Timeouts
from flnotify.transports import DEFAULT_MAX_RESPONSE_BYTES, AsyncTransport
from flnotify.transports._base import header_lines, headers_of
from helpers.servers import FaultServer, SinkServer, refused_url

pytest.importorskip("httptools")
from flnotify.transports._streams import StreamTransport  # after the skip: needs httptools

BODY = b'{"notification_type": "UPDATE_ROUND_START", "body": {"round": 1}}'
HEADERS = {"Content-Type": "application/json", "webhook-id": "msg_1"}
FAST = Timeouts(connect=2.0, read=2.0, write=2.0, pool=2.0)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


@pytest.fixture
def fresh() -> Iterator[FaultServer]:
    """A server of the test's own, for counting connections."""
    with FaultServer() as s:
        yield s


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


def post_once(url: str) -> flnotify.transports.HttpResponse:
    """One POST through a fresh transport, closed afterwards."""

    async def main() -> flnotify.transports.HttpResponse:
        async with StreamTransport(timeouts=FAST) as t:
            return await t.apost(url, BODY, HEADERS)

    response: flnotify.transports.HttpResponse = run(main())
    return response


def connections(transport: StreamTransport) -> int:
    state = transport._state
    if state is None:
        return 0
    return sum(len(pool.connections) for pool in state.pools.values())


# -- tiny raw servers in the test's loop ---------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve ``handler(reader, writer, connection_number)``; yield (base URL, requests/conn)."""
    counts: list[int] = []
    tasks: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.add(writer)
        counts.append(0)
        try:
            await handler(reader, writer, len(counts) - 1)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            writers.discard(writer)
            tasks.discard(task)

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", counts
    finally:
        srv.close()
        for writer in list(writers):
            writer.transport.abort()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await srv.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def answering(*responses: bytes, close: bool = False) -> Handler:
    """Read a request, send the next canned response; close after the last one if asked."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        for response in responses:
            await read_request(reader)
            writer.write(response)
            await writer.drain()
        if not close:
            await reader.read()

    return handler


# -- the basics ------------------------------------------------------------------------------


def test_is_an_async_transport() -> None:
    assert isinstance(StreamTransport(), AsyncTransport)
    assert StreamTransport().max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES


def test_content_length_response(server: FaultServer) -> None:
    response = post_once(server.url("/status/200"))
    assert response.status_code == 200
    assert response.body == b'{"status": 200}'
    assert response.headers["content-type"] == "application/json"
    assert not response.truncated


def test_chunked_response(server: FaultServer) -> None:
    response = post_once(server.url("/chunked/201"))
    assert response.status_code == 201
    assert response.body == b'{"status": 201, "chunked": true}'


def test_request_framing(fresh: FaultServer) -> None:
    big = b"x" * 200_000  # written apart from the head

    async def main() -> None:
        async with StreamTransport(timeouts=FAST, user_agent="tests/1") as t:
            await t.apost(fresh.url("/status/202?q=1&x=%20y"), BODY, HEADERS)
            await t.apost(
                fresh.url("/status/202"),
                big,
                # the transport owns framing: these are ignored
                {"Host": "evil", "Content-Length": "1", "Transfer-Encoding": "chunked"},
            )
            await t.apost(fresh.url("/status/202"), b"", {"User-Agent": "caller/2"})

    run(main())
    first, second, third = fresh.requests
    assert first.method == "POST"
    assert first.target == "/status/202?q=1&x=%20y"
    assert first.http_version == "HTTP/1.1"
    assert first.headers["host"] == f"127.0.0.1:{fresh.port}"
    assert first.headers["content-length"] == str(len(BODY))
    assert first.headers["content-type"] == "application/json"
    assert first.headers["webhook-id"] == "msg_1"
    assert first.headers["user-agent"] == "tests/1"
    assert first.body == BODY
    for request in (first, second, third):
        assert "transfer-encoding" not in request.headers
        assert not request.chunked
        assert [n for n, _ in request.header_list].count("host") == 1
        assert [n for n, _ in request.header_list].count("user-agent") == 1
    assert second.headers["host"] == f"127.0.0.1:{fresh.port}"
    assert second.headers["content-length"] == str(len(big))
    assert second.body == big
    assert third.headers["content-length"] == "0"
    assert third.headers["user-agent"] == "caller/2"


def test_host_header_and_target_forms() -> None:
    async def main() -> None:
        t = StreamTransport()
        state = t._state_for(asyncio.get_running_loop())
        assert state.origin("http://Example.COM:80", "u").lines == "Host: example.com\r\n"
        assert state.origin("https://example.com:443", "u").lines == "Host: example.com\r\n"
        assert state.origin("https://example.com:8443", "u").lines == ("Host: example.com:8443\r\n")
        assert state.origin("http://[::1]:8080", "u").lines == "Host: [::1]:8080\r\n"
        assert state.origin("http://bücher.example", "u").lines == (
            "Host: xn--bcher-kva.example\r\n"
        )
        assert state.origin("http://u:p%40ss@h", "u").lines == (
            "Host: h\r\nAuthorization: Basic dTpwQHNz\r\n"
        )
        # one pool per (scheme, host, port), however the authority is spelled
        assert (
            state.origin("http://EXAMPLE.com", "u").pool
            is state.origin("http://example.com:80", "u").pool
        )
        await t.aclose()

    run(main())


def test_target_is_quoted(fresh: FaultServer) -> None:
    async def main() -> None:
        async with StreamTransport(timeouts=FAST) as t:
            await t.apost(fresh.url("/status/200") + "?a=b c&é=1#fragment", BODY, {})
            await t.apost(f"http://127.0.0.1:{fresh.port}?only=query", BODY, {})

    run(main())
    assert fresh.requests[0].target == "/status/200?a=b%20c&%C3%A9=1"
    assert fresh.requests[1].target == "/?only=query"


# -- keep-alive and the pool ---------------------------------------------------------------


def test_keep_alive_reuses_one_connection(fresh: FaultServer) -> None:
    async def main() -> None:
        async with StreamTransport(timeouts=FAST) as t:
            for _ in range(3):
                response = await t.apost(fresh.url("/status/202"), BODY, HEADERS)
                assert response.status_code == 202
            assert connections(t) == 1

    run(main())
    assert fresh.connections_opened == 1
    assert {r.connection_id for r in fresh.requests} == {1}


def test_connection_close_is_honoured(fresh: FaultServer) -> None:
    async def main() -> None:
        async with StreamTransport(timeouts=FAST) as t:
            response = await t.apost(fresh.url("/keepalive-close"), BODY, HEADERS)
            assert response.status_code == 202
            assert connections(t) == 0  # not pooled
            response = await t.apost(fresh.url("/status/200"), BODY, HEADERS)
            assert response.status_code == 200

    run(main())
    assert fresh.connections_opened == 2
    assert not fresh.errors


def test_idle_connection_closed_by_server_is_not_reused() -> None:
    async def main() -> None:
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        async with (
            raw_server(answering(ok, close=True)) as (url, counts),
            StreamTransport(timeouts=FAST) as t,
        ):
            assert (await t.apost(url + "/", BODY, {})).status_code == 200
            state = t._state
            assert state is not None
            pool = next(iter(state.pools.values()))
            # the server closes the idle connection; the pool notices before reusing it
            for _ in range(100):
                if not pool.idle:
                    break
                await asyncio.sleep(0.01)
            assert not pool.idle
            assert (await t.apost(url + "/", BODY, {})).status_code == 200
            assert len(counts) == 2

    run(main())


def test_stale_reused_connection_is_retried_once() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def first_only(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int
    ) -> None:
        # answers one request per connection, then reads the next and hangs up on it
        await read_request(reader)
        writer.write(ok)
        await writer.drain()
        await read_request(reader)

    async def main() -> None:
        async with raw_server(first_only) as (url, counts), StreamTransport(timeouts=FAST) as t:
            assert (await t.apost(url + "/a", BODY, {})).body == b"ok"
            # reused connection dies before any byte -> one retry on a new connection
            assert (await t.apost(url + "/b", BODY, {})).body == b"ok"
            assert len(counts) == 2

    run(main())


def test_fresh_connection_closed_without_answer_is_not_retried() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await read_request(reader)

    async def main() -> None:
        async with raw_server(hang_up) as (url, counts), StreamTransport(timeouts=FAST) as t:
            with pytest.raises(flnotify.errors.ConnectionLostError, match="before any response"):
                await t.apost(url + "/", BODY, {})
            assert len(counts) == 1

    run(main())


def test_reused_connection_broken_mid_response_is_not_retried() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await read_request(reader)
        writer.write(ok)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    async def main() -> None:
        async with raw_server(half) as (url, counts), StreamTransport(timeouts=FAST) as t:
            await t.apost(url + "/", BODY, {})
            with pytest.raises(flnotify.errors.ConnectionLostError, match="middle of the response"):
                await t.apost(url + "/", BODY, {})
            assert len(counts) == 1

    run(main())


def test_pool_timeout() -> None:
    async def main() -> None:
        with FaultServer() as srv:
            t = StreamTransport(
                timeouts=Timeouts(connect=2.0, read=5.0, write=2.0, pool=0.1),
                max_connections_per_origin=1,
            )
            hanging = asyncio.ensure_future(t.apost(srv.url("/hang"), BODY, {}))
            await srv.wait_for_requests_async(1)
            with pytest.raises(
                flnotify.errors.TransportTimeoutError, match="waiting for a free connection"
            ):
                await t.apost(srv.url("/status/200"), BODY, {})
            hanging.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hanging
            # the slot is free again
            assert (await t.apost(srv.url("/status/200"), BODY, {})).status_code == 200
            await t.aclose()

    run(main())


def test_many_concurrent_requests_to_several_origins() -> None:
    limit = 3

    async def main(srv: SinkServer) -> None:
        urls = [srv.url(f"/r/{i}", index=i % 5) for i in range(500)]
        async with StreamTransport(timeouts=FAST, max_connections_per_origin=limit) as t:
            responses = await asyncio.gather(*(t.apost(u, BODY, HEADERS) for u in urls))
            state = t._state
            assert state is not None
            assert all(pool.size <= limit for pool in state.pools.values())
        assert {r.status_code for r in responses} == {202}

    with SinkServer(ports=5) as srv:
        run(main(srv))
        assert srv.request_count == 500
        assert set(srv.port_request_counts.values()) == {100}
        assert srv.connections_opened <= 5 * limit


def test_max_idle_connections_over_all_origins() -> None:
    async def main(srv: SinkServer) -> None:
        async with StreamTransport(timeouts=FAST, max_idle_connections=2) as t:
            for i in range(4):
                await t.apost(srv.url("/", index=i), BODY, {})
            state = t._state
            assert state is not None
            assert state.idle_count == 2
            assert sum(len(p.idle) for p in state.pools.values()) == 2

    with SinkServer(ports=4) as srv:
        run(main(srv))
        srv.wait_until(lambda: srv.open_connections == 0)


# -- what comes back -----------------------------------------------------------------------


def test_body_cap_keeps_status_and_closes_connection(fresh: FaultServer) -> None:
    async def main() -> None:
        async with StreamTransport(timeouts=FAST) as t:
            response = await t.apost(fresh.url("/big/10485760"), BODY, HEADERS)
            assert response.status_code == 200
            assert response.truncated
            assert response.body == b"x" * DEFAULT_MAX_RESPONSE_BYTES
            assert connections(t) == 0
            response = await t.apost(fresh.url("/big/100"), BODY, HEADERS)
            assert response.body == b"x" * 100
            assert not response.truncated

    run(main())
    assert fresh.connections_opened == 2


def test_body_exactly_at_cap_is_not_truncated(server: FaultServer) -> None:
    async def main() -> None:
        async with StreamTransport(timeouts=FAST, max_response_bytes=1000) as t:
            response = await t.apost(server.url("/big/1000"), BODY, HEADERS)
            assert (len(response.body), response.truncated) == (1000, False)
            response = await t.apost(server.url("/big/1001"), BODY, HEADERS)
            assert (len(response.body), response.truncated) == (1000, True)

    run(main())


def test_redirect_is_not_followed(server: FaultServer) -> None:
    response = post_once(server.url("/redirect/301"))
    assert response.status_code == 301
    assert response.headers["location"].endswith("/status/200")


def test_interim_responses_are_skipped() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"
    )

    async def main() -> None:
        async with (
            raw_server(answering(answer, answer)) as (url, counts),
            StreamTransport(timeouts=FAST) as t,
        ):
            for _ in range(2):
                response = await t.apost(url + "/", BODY, {})
                assert response.status_code == 202
                assert response.body == b"ok"
                assert "link" not in response.headers
                assert response.headers["x-final"] == "yes"
            assert len(counts) == 1

    run(main())


def test_body_delimited_by_connection_close() -> None:
    async def main() -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
        async with (
            raw_server(answering(answer, close=True)) as (url, _),
            StreamTransport(timeouts=FAST) as t,
        ):
            response = await t.apost(url + "/", BODY, {})
            assert response.body == b"until the end"
            assert connections(t) == 0

    run(main())


def test_http_10_response_is_not_kept_alive() -> None:
    async def main() -> None:
        answer = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
        async with raw_server(answering(answer)) as (url, _), StreamTransport(timeouts=FAST) as t:
            assert (await t.apost(url + "/", BODY, {})).body == b"ok"
            assert connections(t) == 0

    run(main())


# -- faults --------------------------------------------------------------------------------


def test_read_timeout_on_a_server_that_never_answers(server: FaultServer) -> None:
    async def main() -> float:
        timeouts = Timeouts(connect=2.0, read=0.2, write=2.0, pool=2.0)
        async with StreamTransport(timeouts=timeouts) as t:
            start = time.monotonic()
            with pytest.raises(
                flnotify.errors.TransportTimeoutError, match="reading the response"
            ) as info:
                await t.apost(server.url("/hang"), BODY, HEADERS)
            assert info.value.url == server.url("/hang")
            assert info.value.retryable
            assert connections(t) == 0
            return time.monotonic() - start

    elapsed = run(main())
    assert 0.19 <= elapsed < 1.0


def test_read_timeout_counts_from_the_last_data(server: FaultServer) -> None:
    async def main() -> None:
        timeouts = Timeouts(connect=2.0, read=0.3, write=2.0, pool=2.0)
        async with StreamTransport(timeouts=timeouts) as t:
            # the status line comes at once, the rest after 0.2 s: no gap exceeds 0.3 s
            response = await t.apost(server.url("/slow-headers/0.2/201"), BODY, HEADERS)
            assert response.status_code == 201
            with pytest.raises(flnotify.errors.TransportTimeoutError):
                await t.apost(server.url("/slow-body/0.5"), BODY, HEADERS)

    run(main())


def test_connect_refused() -> None:
    url = refused_url()

    async def main() -> None:
        async with StreamTransport(timeouts=FAST) as t:
            with pytest.raises(flnotify.errors.ConnectError) as info:
                await t.apost(url, BODY, HEADERS)
            assert isinstance(info.value.__cause__, OSError)
            assert info.value.url == url
            assert connections(t) == 0
            with pytest.raises(flnotify.errors.ConnectError):  # the failed slot was freed
                await t.apost(url, BODY, HEADERS)

    run(main())


def test_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def no_such_host(*args: Any, **kwargs: Any) -> Any:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(loop, "getaddrinfo", no_such_host)
        async with StreamTransport(timeouts=FAST) as t:
            with pytest.raises(flnotify.errors.DNSError) as info:
                await t.apost("http://client.example/msg", BODY, HEADERS)
            assert isinstance(info.value.__cause__, socket.gaierror)

    run(main())


def test_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def never(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(10)

        monkeypatch.setattr(loop, "create_connection", never)
        timeouts = Timeouts(connect=0.1, read=2.0, write=2.0, pool=2.0)
        async with StreamTransport(timeouts=timeouts) as t:
            with pytest.raises(flnotify.errors.TransportTimeoutError, match="connecting to"):
                await t.apost("http://127.0.0.1:9/", BODY, HEADERS)

    run(main())


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/x",
        "127.0.0.1:8080/x",
        "http:///path",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:port/",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:/",
        "http://exa mple.com/",
        "http://host\r\nX-Evil: 1/",
        "http://[::1/",
        "",
    ],
)
def test_invalid_url_before_any_io(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def no_io(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("no connection may be attempted")

        monkeypatch.setattr(loop, "create_connection", no_io)
        async with StreamTransport() as t:
            with pytest.raises(flnotify.errors.InvalidURLError) as info:
                await t.apost(url, BODY, HEADERS)
            assert not info.value.retryable

    run(main())


@pytest.mark.parametrize(
    "headers",
    [{"X-Evil": "a\r\nInjected: 1"}, {"X-Bad\r\n": "x"}, {"": "x"}, {"X-Uni": "\u20ac"}],
)
def test_invalid_headers_before_any_io(headers: dict[str, str], server: FaultServer) -> None:
    async def main() -> None:
        async with StreamTransport(timeouts=FAST) as t:
            with pytest.raises(flnotify.errors.InvalidURLError):
                await t.apost(server.url("/status/200"), BODY, headers)
            assert connections(t) == 0

    run(main())


def test_reset_mid_response(server: FaultServer) -> None:
    async def main() -> None:
        async with StreamTransport(timeouts=FAST) as t:
            with pytest.raises(flnotify.errors.ConnectionLostError) as info:
                await t.apost(server.url("/reset"), BODY, HEADERS)
            assert info.value.__cause__ is None or isinstance(info.value.__cause__, OSError)
            assert connections(t) == 0

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HELLO\r\n\r\n",
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["garbage", "status", "length", "chunk", "huge-head", "upgrade"],
)
def test_malformed_response_is_a_protocol_error(answer: bytes) -> None:
    async def main() -> None:
        async with raw_server(answering(answer)) as (url, _), StreamTransport(timeouts=FAST) as t:
            with pytest.raises(flnotify.errors.ProtocolError):
                await t.apost(url + "/", BODY, {})
            assert connections(t) == 0

    run(main())


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server() -> Iterator[FaultServer]:
    pytest.importorskip("trustme")
    with FaultServer(tls=True) as s:
        yield s


def test_tls_with_the_servers_ca(tls_server: FaultServer) -> None:
    async def main() -> None:
        ctx = tls_server.client_ssl_context()
        async with StreamTransport(timeouts=FAST, ssl_context=ctx) as t:
            for name in ("127.0.0.1", "localhost"):
                url = tls_server.url("/status/200", host=name)
                assert (await t.apost(url, BODY, HEADERS)).status_code == 200

    run(main())


def test_tls_verification_is_on_by_default(tls_server: FaultServer) -> None:
    async def main() -> None:
        async with StreamTransport(timeouts=FAST) as t:
            with pytest.raises(flnotify.errors.ConnectError, match="not trusted") as info:
                await t.apost(tls_server.url("/status/200"), BODY, HEADERS)
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
            assert connections(t) == 0

    run(main())


# -- cancellation and closing --------------------------------------------------------------


def test_cancelled_request_closes_its_connection(fresh: FaultServer) -> None:
    async def main() -> None:
        async with StreamTransport(timeouts=FAST) as t:
            task = asyncio.ensure_future(t.apost(fresh.url("/hang"), BODY, HEADERS))
            await fresh.wait_for_requests_async(1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert connections(t) == 0
            await fresh.wait_until_async(lambda: fresh.open_connections == 0)
            # the slot was given back
            assert (await t.apost(fresh.url("/status/200"), BODY, HEADERS)).status_code == 200

    run(main())


def test_cancelled_while_waiting_for_the_pool() -> None:
    async def main() -> None:
        with FaultServer() as srv:
            async with StreamTransport(timeouts=FAST, max_connections_per_origin=1) as t:
                hanging = asyncio.ensure_future(t.apost(srv.url("/hang"), BODY, {}))
                await srv.wait_for_requests_async(1)
                waiting = asyncio.ensure_future(t.apost(srv.url("/status/200"), BODY, {}))
                await asyncio.sleep(0)
                waiting.cancel()
                hanging.cancel()
                for task in (waiting, hanging):
                    with pytest.raises(asyncio.CancelledError):
                        await task
                assert (await t.apost(srv.url("/status/200"), BODY, {})).status_code == 200

    run(main())


def test_aclose_closes_idle_connections_and_allows_reuse(fresh: FaultServer) -> None:
    async def main() -> None:
        t = StreamTransport(timeouts=FAST)
        await t.apost(fresh.url("/status/200"), BODY, HEADERS)
        await fresh.wait_until_async(lambda: fresh.open_connections == 1)
        await t.aclose()
        await fresh.wait_until_async(lambda: fresh.open_connections == 0)
        await t.apost(fresh.url("/status/200"), BODY, HEADERS)  # opens a new pool
        await t.aclose()

    run(main())
    assert fresh.connections_opened == 2


def test_aclose_fails_requests_in_flight(server: FaultServer) -> None:
    async def main() -> None:
        t = StreamTransport(timeouts=FAST)
        target = f"/hang?case={uuid.uuid4()}"
        task = asyncio.ensure_future(t.apost(server.url(target), BODY, HEADERS))
        await server.wait_for_requests_async(1, path=target)  # the request is in flight
        await t.aclose()
        with pytest.raises(flnotify.errors.ConnectionLostError):
            await task

    run(main())


def test_aclose_does_not_retry_on_a_new_connection(fresh: FaultServer) -> None:
    async def main() -> None:
        t = StreamTransport(timeouts=FAST)
        await t.apost(fresh.url("/status/200"), BODY, HEADERS)
        task = asyncio.ensure_future(t.apost(fresh.url("/hang"), BODY, HEADERS))  # reused
        await fresh.wait_for_requests_async(2)
        await t.aclose()
        with pytest.raises(flnotify.errors.ConnectionLostError):
            await task
        await fresh.wait_until_async(lambda: fresh.open_connections == 0)

    run(main())
    assert fresh.connections_opened == 1


def test_one_transport_on_two_event_loops(server: FaultServer) -> None:
    t = StreamTransport(timeouts=FAST)

    async def main() -> int:
        response = await t.apost(server.url("/status/200"), BODY, HEADERS)
        await t.aclose()
        return response.status_code

    assert asyncio.run(main()) == 200
    assert asyncio.run(main()) == 200


def test_configuration_is_checked() -> None:
    with pytest.raises(flnotify.errors.ConfigurationError):
        StreamTransport(max_connections_per_origin=0)
    with pytest.raises(flnotify.errors.ConfigurationError):
        StreamTransport(max_response_bytes=-1)
    with pytest.raises(flnotify.errors.ConfigurationError):
        StreamTransport(user_agent="a\r\nb: c")


def test_response_headers_mapping() -> None:
    import copy
    import pickle

    answer = (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nX-Empty:\r\nRetry-After: 7\r\n"
        b"Content-Length: 0\r\n\r\n"
    )

    async def main() -> flnotify.transports.HttpResponse:
        async with raw_server(answering(answer)) as (url, _), StreamTransport(timeouts=FAST) as t:
            response: flnotify.transports.HttpResponse = await t.apost(url + "/", BODY, {})
            return response

    response = run(main())
    headers = response.headers
    assert headers == {"x-a": "2", "x-empty": "", "retry-after": "7", "content-length": "0"}
    assert headers["retry-after"] == "7"
    assert headers.get("missing") is None
    assert len(headers) == 4
    assert "x-a" in repr(headers)
    assert pickle.loads(pickle.dumps(headers)) == dict(headers)  # noqa: S301 - our own bytes
    assert copy.deepcopy(response) == response


def drive_all(
    transport: StreamTransport, urls: list[str], concurrency: int = 4
) -> dict[int, tuple[Any, Any]]:
    """Every job's outcome from ``drive`` (the fast lane's way), by token."""
    outcomes: dict[int, tuple[Any, Any]] = {}

    def done(token: int, response: Any, exc: Exception | None) -> None:
        assert token not in outcomes, "a job reported twice"
        outcomes[token] = (response, exc)

    jobs = iter([(url, f"webhook-id: msg_{i}\r\n", i) for i, url in enumerate(urls)])

    async def main() -> None:
        try:
            await asyncio.wait_for(transport.drive(b"{}", {}, jobs, done, concurrency), 10)
        finally:
            await transport.aclose()

    asyncio.run(main())
    return outcomes


def test_drive_reports_a_response_followed_by_junk_in_the_same_packet() -> None:
    # The response completes inside the parser, then the junk follows: every job is
    # reported once, and drive() ends.
    with FaultServer(record=True) as server:
        server.scripts["junk"] = [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\x01\x02junk"]
        server.scripts["ok"] = [b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"]
        urls = [server.url("/script/junk"), server.url("/script/ok"), server.url("/script/ok")]
        outcomes = drive_all(StreamTransport(timeouts=Timeouts(total=5.0)), urls, 1)
    assert sorted(outcomes) == [0, 1, 2]
    assert outcomes[0][0].status_code == 200
    assert [outcomes[i][0].status_code for i in (1, 2)] == [202, 202]
    assert [r.headers["webhook-id"] for r in server.requests] == ["msg_0", "msg_1", "msg_2"]


def test_drive_refuses_a_bad_url_before_any_io_and_goes_on() -> None:
    with FaultServer(record=True) as server:
        server.scripts["ok"] = [b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"]
        urls = ["ftp://nowhere/x", server.url("/script/ok")]
        outcomes = drive_all(StreamTransport(), urls)
    assert isinstance(outcomes[0][1], flnotify.errors.InvalidURLError)
    assert outcomes[1][0].status_code == 202
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Host", "x"),
        ("content-length", "1"),
        ("bad name", "x"),
        ("x-a", "1\r\nx-b: 2"),
        ("x-a", "\x00"),
    ],
)
def test_header_lines_refuse_what_a_job_may_not_write(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=repr(name)):
        header_lines([(name, value)])


def test_header_lines_refuse_a_shared_name_and_read_back_as_written() -> None:
    with pytest.raises(ValueError, match="User-Agent"):
        header_lines([("User-Agent", "x")], ("user-agent",))
    pairs = [("webhook-id", "msg_1"), ("x-empty", ""), ("x-colon", "a: b\tc")]
    lines = header_lines(pairs)
    assert lines == "webhook-id: msg_1\r\nx-empty: \r\nx-colon: a: b\tc\r\n"
    assert headers_of(lines) == dict(pairs)


def test_drive_hands_a_completed_connection_to_the_next_job_of_its_origin_only() -> None:
    # Jobs alternate between two origins, one at a time: one connection per origin, each
    # reused; a "Connection: close" answer makes the next job of that origin open a new one.
    with FaultServer(ports=2) as server:
        a, b = server.url("/status/202", index=0), server.url("/status/202", index=1)
        closing = server.url("/keepalive-close", index=0)
        urls = [a, b, a, b, closing, a, b, a]
        outcomes = drive_all(StreamTransport(timeouts=Timeouts(total=5.0)), urls, 1)
        opened = server.connections_opened
    assert sorted(outcomes) == list(range(len(urls)))
    assert [outcomes[i][0].status_code for i in range(len(urls))] == [202] * len(urls)
    assert opened == 3  # origin a, origin b, and a again after the close


def drive_to_one_origin(
    path: str, jobs: int, per_origin: int, concurrency: int, pool: float | None = None
) -> tuple[dict[int, tuple[Any, Any]], int]:
    """Every outcome of ``jobs`` driven to one origin's ``path``, and the connections opened."""
    with FaultServer() as server:
        timeouts = Timeouts(total=5.0, pool=pool)
        transport = StreamTransport(timeouts=timeouts, max_connections_per_origin=per_origin)
        outcomes = drive_all(transport, [server.url(path)] * jobs, concurrency)
        return outcomes, server.connections_opened


def test_drive_parks_jobs_of_a_busy_origin_on_its_connections_up_to_the_limit() -> None:
    # 40 jobs to one origin, 10 at once: each connection of ours carries the next job of
    # its origin, and a new one opens only while each busy one already has a job waiting.
    # The first ten alternate (open, park, open, ...): five connections, each with one job
    # waiting, and each completion hands its waiting job over, so no sixth is needed (a
    # task per job would have opened all six the pool allows).
    outcomes, opened = drive_to_one_origin("/delay/0.01/202", 40, 6, 10)
    assert [outcomes[i][0].status_code for i in range(40)] == [202] * 40
    assert opened == 5


def test_drive_sends_parked_jobs_on_new_connections_when_each_answer_closes_its_own() -> None:
    # One connection allowed, every answer closes it: a parked job cannot ride on it and
    # opens the next connection itself; none is stranded.
    outcomes, opened = drive_to_one_origin("/keepalive-close", 6, 1, 3)
    assert [outcomes[i][0].status_code for i in range(6)] == [202] * 6
    assert opened == 6


def test_a_parked_job_that_waited_longer_than_the_pool_timeout_fails_as_apost_would() -> None:
    outcomes, _ = drive_to_one_origin("/delay/0.3/202", 2, 1, 2, pool=0.05)
    assert outcomes[0][0].status_code == 202
    error = outcomes[1][1]
    assert isinstance(error, flnotify.errors.TransportTimeoutError)
    assert "waiting for a free connection" in str(error)
