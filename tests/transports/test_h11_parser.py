"""The h11 parser behind StreamTransport when httptools is not installed (the default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flnotify.transports._h11parser import HttpParserError, HttpParserUpgrade, HttpResponseParser

TESTS = Path(__file__).resolve().parent


class Events:
    """Records the callbacks in order, as the transport's connection would get them."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.parser = HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.log.append(("header", (name, value)))

    def on_headers_complete(self) -> None:
        self.log.append(("headers", self.parser.get_status_code()))

    def on_body(self, body: bytes) -> None:
        self.log.append(("body", body))

    def on_message_complete(self) -> None:
        self.log.append(("complete", self.parser.should_keep_alive()))


def test_a_response_in_one_piece_then_another_on_the_same_connection() -> None:
    events = Events()
    events.parser.feed_data(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok")
    assert events.log == [
        ("header", (b"content-length", b"2")),
        ("headers", 202),
        ("body", b"ok"),
        ("complete", True),
    ]
    events.log.clear()
    events.parser.feed_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert events.log == [
        ("header", (b"content-length", b"0")),
        ("headers", 404),
        ("complete", True),
    ]


def test_byte_by_byte_chunked_with_an_interim_answer_first() -> None:
    events = Events()
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    for i in range(len(raw)):
        events.parser.feed_data(raw[i : i + 1])
    kinds = [kind for kind, _ in events.log]
    assert kinds[:2] == ["headers", "complete"]  # the 1xx is a message of its own
    assert events.log[0] == ("headers", 100)
    assert ("headers", 200) in events.log
    assert b"".join(v for k, v in events.log if k == "body") == b"abcde"  # type: ignore[misc]
    assert events.log[-1] == ("complete", True)


def test_connection_close_and_http_1_0_are_not_kept_alive() -> None:
    for head in (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ):
        events = Events()
        events.parser.feed_data(head)
        assert events.log[-1] == ("complete", False)


def test_bytes_after_the_response_make_the_connection_unusable() -> None:
    events = Events()
    events.parser.feed_data(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    assert events.log[-1] == ("complete", False)
    assert [k for k, _ in events.log].count("headers") == 1


def test_a_body_until_the_end_of_the_connection_is_reported_as_it_comes() -> None:
    events = Events()
    events.parser.feed_data(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert events.log == [("headers", 200), ("body", b"some")]  # the transport ends it at EOF


def test_malformed_answers_and_upgrades_raise_like_httptools() -> None:
    with pytest.raises(HttpParserError):
        Events().parser.feed_data(b"SMTP ready\r\n\r\n")
    with pytest.raises(HttpParserError):
        Events().parser.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    with pytest.raises(HttpParserUpgrade):
        Events().parser.feed_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")


def test_a_huge_head_is_refused() -> None:
    events = Events()
    with pytest.raises(HttpParserError):
        events.parser.feed_data(b"HTTP/1.1 200 OK\r\n" + b"x-a: b\r\n" * 20_000)


def test_the_stream_transport_suite_passes_on_the_h11_parser() -> None:
    # The transport's own tests and fault tests, with this parser in httptools' place
    # (as on an install without the fast extra), in a fresh interpreter.
    code = (
        "import sys\n"
        "from flnotify.transports import _h11parser\n"
        "sys.modules['httptools'] = _h11parser\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-W', 'error',"
        " 'test_streams_transport.py', 'test_transport_faults.py']))\n"
    )
    result = subprocess.run(  # noqa: S603 - a fixed command
        [sys.executable, "-c", code],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
    assert "skipped" not in result.stdout


def test_the_default_transport_works_without_httptools() -> None:
    code = (
        "import sys\n"
        "sys.modules['httptools'] = None\n"
        "import flnotify\n"
        "from flnotify.transports._streams import httptools\n"
        "assert httptools.__name__ == 'flnotify.transports._h11parser', httptools\n"
        "n = flnotify.Notifier()\n"
        "assert type(n.transport).__name__ == 'StreamTransport'\n"
        "n.close()\n"
    )
    result = subprocess.run(  # noqa: S603 - a fixed command
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
