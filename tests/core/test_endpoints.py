"""Endpoint policy (DESIGN §3): URL checks, the private-address guard, body size.

No network traffic: only literal addresses, and resolution of ``localhost`` and ``.invalid``.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flnotify import EndpointPolicy
from flnotify.endpoints import DEFAULT_MAX_PAYLOAD_BYTES, ParsedEndpoint
from flnotify.errors import (
    BlockedAddressError,
    ConfigurationError,
    DNSError,
    EndpointError,
    FlnotifyError,
    PayloadTooLargeError,
    TransportError,
)

POLICY = EndpointPolicy()
GUARD = EndpointPolicy(block_private=True)

# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://client.example/",
            ("http", "client.example", 80, "/", "http://client.example:80", False),
        ),
        (
            "https://client.example",
            ("https", "client.example", 443, "/", "https://client.example:443", False),
        ),
        (
            "HTTP://Client.Example:8000/fl/msg?x=1#frag",
            ("http", "client.example", 8000, "/fl/msg?x=1", "http://client.example:8000", False),
        ),
        (
            "https://10.1.2.3:8443/notify",
            ("https", "10.1.2.3", 8443, "/notify", "https://10.1.2.3:8443", True),
        ),
        ("http://[::1]:9000/a", ("http", "::1", 9000, "/a", "http://[::1]:9000", True)),
        (
            "http://client.example:/x",
            ("http", "client.example", 80, "/x", "http://client.example:80", False),
        ),
    ],
)
def test_valid_urls(url: str, expected: tuple[str, str, int, str, str, bool]) -> None:
    endpoint = POLICY.check_url(url)
    assert isinstance(endpoint, ParsedEndpoint)
    assert endpoint.url == url
    got = (
        endpoint.scheme,
        endpoint.host,
        endpoint.port,
        endpoint.path_and_query,
        endpoint.origin,
        endpoint.is_ip_literal,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("/relative/path", "not an absolute URL"),
        ("client.example/msg", "not an absolute URL"),
        ("localhost:8000", "not an absolute URL"),
        ("//client.example/msg", "not an absolute URL"),
        ("http:client.example", "not an absolute URL"),
        ("ooo://example.com/", "scheme 'ooo' is not allowed"),
        ("ftp://example.com/", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("javascript://alert(1)", "scheme 'javascript' is not allowed"),
        ("http:///path", "no host"),
        ("http://:8000/path", "no host"),
        ("http://client.example:99999/", "bad port"),
        ("http://client.example:http/", "bad port"),
        ("http://client.example:0/", "port 0"),
        ("http://[::1/", "malformed URL"),
        ("http://client example/", "whitespace"),
        (" http://client.example/", "whitespace"),
        ("http://client.example/\r\nX-Injected: 1", "control characters"),
        ("http://client.example/\x00", "control characters"),
        ("http://user:pw@client.example/", "credentials"),
        ("http://user@client.example/", "credentials"),
    ],
)
def test_invalid_urls(url: str, reason: str) -> None:
    with pytest.raises(EndpointError) as info:
        POLICY.check_url(url)
    assert reason in info.value.reason
    assert info.value.url == url
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [None, 42, b"http://client.example/"])
def test_non_string_url(value: object) -> None:
    with pytest.raises(EndpointError, match="not a string"):
        POLICY.check_url(value)  # type: ignore[arg-type]


def test_scheme_policy_and_userinfo_option() -> None:
    https_only = EndpointPolicy(schemes={"HTTPS"})
    assert https_only.schemes == frozenset({"https"})
    with pytest.raises(EndpointError, match="allowed: https"):
        https_only.check_url("http://client.example/")
    assert https_only.check_url("https://client.example/").port == 443
    lenient = EndpointPolicy(allow_userinfo=True)
    assert lenient.check_url("http://user:pw@client.example/").host == "client.example"
    with pytest.raises(ConfigurationError):
        EndpointPolicy(schemes={"ftp"})


def test_check_url_is_cached() -> None:
    url = "http://cached.example:8000/msg"
    assert POLICY.check_url(url) is POLICY.check_url(url)
    assert EndpointPolicy().check_url(url) is POLICY.check_url(url)


# ---------------------------------------------------------------- the address guard


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.10", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.10.20", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - a literal under test
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "documentation"),
        ("2001:db8::1", "documentation"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:127.0.0.1", "loopback address (IPv4-mapped 127.0.0.1)"),
        ("::ffff:10.0.0.1", "private address (IPv4-mapped 10.0.0.1)"),
        ("::ffff:169.254.169.254", "cloud metadata address (IPv4-mapped 169.254.169.254)"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata address (NAT64 169.254.169.254)"),
        ("2002:c0a8:0101::1", "private address (6to4 192.168.1.1)"),
        ("::127.0.0.1", "IPv4-compatible"),
    ],
)
def test_guard_blocks(address: str, reason: str) -> None:
    with pytest.raises(BlockedAddressError) as info:
        GUARD.check_address(address, url="http://client.example/")
    assert reason in info.value.reason
    assert info.value.url == "http://client.example/"
    assert isinstance(info.value, EndpointError)
    POLICY.check_address(address)  # the guard is off by default: nothing blocked


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_guard_allows_public_literals(address: str) -> None:
    GUARD.check_address(address)
    GUARD.check_address(ipaddress.ip_address(address.split("%")[0]))


def test_allow_list_lets_one_private_network_through() -> None:
    policy = EndpointPolicy(block_private=True, allow_networks=("10.20.0.0/16", "fd00:1::/32"))
    assert policy.allow_networks == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd00:1::/32"),
    )
    policy.check_address("10.20.5.6")
    policy.check_address("::ffff:10.20.5.6")
    policy.check_address("fd00:1::5")
    for blocked in ("10.21.0.1", "192.168.0.1", "fd00:2::5", "127.0.0.1"):
        with pytest.raises(BlockedAddressError):
            policy.check_address(blocked)


def test_allow_list_accepts_a_single_string_and_refuses_garbage() -> None:
    assert EndpointPolicy(allow_networks="10.0.0.0/8").allow_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
    )
    with pytest.raises(ConfigurationError, match="allow_networks"):
        EndpointPolicy(allow_networks=("10.0.0.1/8",))  # host bits set
    with pytest.raises(ConfigurationError, match="allow_networks"):
        EndpointPolicy(allow_networks=("not a network",))


def test_check_address_refuses_non_addresses() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - ipaddress's own message
        GUARD.check_address("client.example")
    with pytest.raises(TypeError):
        GUARD.check_address(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- resolution


def test_guard_off_skips_resolution() -> None:
    assert POLICY.check_host("nonexistent.invalid", 80) == []
    assert asyncio.run(POLICY.acheck_host("nonexistent.invalid", 80)) == []
    assert POLICY.check_endpoint("http://nonexistent.invalid/").host == "nonexistent.invalid"


def test_ip_literals_are_checked_without_resolving() -> None:
    assert GUARD.check_host("8.8.8.8", 443) == ["8.8.8.8"]
    assert GUARD.check_host("[2606:4700:4700::1111]", 443) == ["2606:4700:4700::1111"]
    with pytest.raises(BlockedAddressError):
        GUARD.check_host("127.0.0.1", 80)
    with pytest.raises(BlockedAddressError, match="loopback"):
        GUARD.check_endpoint("http://[::1]:8000/")


def test_localhost_is_blocked_when_guarded() -> None:
    with pytest.raises(BlockedAddressError, match="loopback") as info:
        GUARD.check_host("localhost", 8000, url="http://localhost:8000/")
    assert info.value.url == "http://localhost:8000/"
    with pytest.raises(BlockedAddressError, match="loopback"):
        asyncio.run(GUARD.acheck_endpoint("http://localhost:8000/msg"))


def test_localhost_passes_when_loopback_is_allow_listed() -> None:
    policy = EndpointPolicy(block_private=True, allow_networks=("127.0.0.0/8", "::1/128"))
    addresses = policy.check_host("localhost", 8000)
    assert addresses
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses)
    assert asyncio.run(policy.acheck_host("localhost", 8000)) == addresses
    assert policy.check_endpoint("http://localhost:8000/").port == 8000


def test_unresolvable_name_is_a_dns_error() -> None:
    with pytest.raises(DNSError) as info:
        GUARD.check_host("nonexistent.invalid", 80, url="http://nonexistent.invalid/")
    assert info.value.url == "http://nonexistent.invalid/"
    assert isinstance(info.value, TransportError)
    assert info.value.retryable
    with pytest.raises(DNSError, match=r"nonexistent\.invalid"):
        asyncio.run(GUARD.acheck_endpoint("http://nonexistent.invalid/"))


# ---------------------------------------------------------------- body size


def test_body_size_limit() -> None:
    assert DEFAULT_MAX_PAYLOAD_BYTES == 1024 * 1024
    POLICY.check_body_size(b"x" * DEFAULT_MAX_PAYLOAD_BYTES)
    with pytest.raises(PayloadTooLargeError) as info:
        POLICY.check_body_size(b"x" * (DEFAULT_MAX_PAYLOAD_BYTES + 1))
    assert (info.value.size, info.value.limit) == (
        DEFAULT_MAX_PAYLOAD_BYTES + 1,
        DEFAULT_MAX_PAYLOAD_BYTES,
    )
    assert isinstance(info.value, (ConfigurationError, FlnotifyError, ValueError))
    small = EndpointPolicy(max_body_bytes=10)
    small.check_body_size(b"0123456789")
    with pytest.raises(PayloadTooLargeError):
        small.check_body_size(b"0123456789a")


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_max_body_bytes_must_be_positive_int(value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        EndpointPolicy(max_body_bytes=value)  # type: ignore[arg-type]


_URL_PIECES = st.tuples(
    st.sampled_from(["http", "https", "HTTP", "ftp", "ooo", "", "http:"]),
    st.sampled_from(["://", ":/", "//", ""]),
    st.sampled_from(
        [
            "host",
            "127.0.0.1",
            "[::1]",
            "user:pw@host",
            "",
            "host:8080",
            "host:0",
            "host:99999",
            "ho st",
            "host?x",
            "host#f",
            "[::1",
            "h\x00",
        ]
    ),
    st.sampled_from(["", "/", "/a/b", "/a?b=/c", "/a#frag", "/ space", "/tab\t", "?q", "#f"]),
)


@given(pieces=_URL_PIECES, guard=st.booleans())
@settings(max_examples=300, derandomize=True, database=None)
def test_validate_url_refuses_exactly_what_check_url_refuses(
    pieces: tuple[str, str, str, str], guard: bool
) -> None:
    url = "".join(pieces)
    policy = EndpointPolicy(block_private=guard)
    refused: EndpointError | None = None
    try:
        policy.check_url(url)
    except EndpointError as exc:
        refused = exc
    if refused is None:
        policy.validate_url(url)
    else:
        with pytest.raises(EndpointError) as info:
            policy.validate_url(url)
        assert info.value.url == refused.url
