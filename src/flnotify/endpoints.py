"""Server-side endpoint policy: which receiver URLs flnotify will POST to, and how much.

[`EndpointPolicy`][] decides, before any request is made:

* **URL shape** ([`check_url`][flnotify.EndpointPolicy.check_url], pure and cached): an absolute
  ``http``/``https`` URL with a host, a valid port, no whitespace or control characters
  and (by default) no ``user:password@`` part, which would end up in logs and reports.
* **Address guard** (optional, ``block_private=True``): every address the host resolves to
  must be publicly routable — not private, loopback, link-local, multicast, unspecified,
  reserved or a cloud metadata address, also when written as IPv4-mapped, NAT64 or 6to4
  IPv6 — unless it lies in one of ``allow_networks``. FL clients often live on private
  networks, hence the allow-list, and hence the guard is off by default.
* **Request body size** ([`check_body_size`][flnotify.EndpointPolicy.check_body_size]).

What the guard does **not** protect against:

* **Proxies.** When the HTTP client goes through a proxy (e.g. ``HTTPS_PROXY``), the proxy
  connects wherever it likes; the check sees only the name.
* Redirects are not a hole: flnotify never follows them.

DNS rebinding is closed by the drivers, not here: the addresses [`EndpointPolicy.acheck_host`][]
returns are the ones checked, and the [`Notifier`][flnotify.Notifier] makes the transport
connect to the first of them (``connect_to=``) instead of resolving the name again. A
``resolver=`` (a [`Resolver`][flnotify.endpoints.Resolver] or
[`AsyncResolver`][flnotify.endpoints.AsyncResolver]) replaces the system's name lookup.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeAlias, cast, runtime_checkable
from urllib.parse import urlsplit

import attrs

from ._exceptions import (
    BlockedAddressError,
    ConfigurationError,
    DNSError,
    EndpointError,
    PayloadTooLargeError,
)
from ._validators import at_least_one

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "AsyncResolver",
    "IPAddress",
    "IPNetwork",
    "ParsedEndpoint",
    "Resolver",
]

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
"""Request bodies larger than this (1 MiB) are refused before sending."""

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
"""An IPv4 or IPv6 address."""

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
"""An IPv4 or IPv6 network."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_AUTHORITY_DELIMITERS = re.compile(r"[?#]")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f]")
_URL_CACHE_SIZE = 16_384


@runtime_checkable
class Resolver(Protocol):
    """Resolves host names for the address guard, blocking (e.g. a pinned table in tests)."""

    def resolve(self, host: str, port: int) -> Sequence[str | IPAddress]:
        """The addresses of ``host``, best first; raise ``OSError`` when it does not resolve."""
        ...


@runtime_checkable
class AsyncResolver(Protocol):
    """Resolves host names for the address guard, on the event loop (e.g. aiodns)."""

    async def aresolve(self, host: str, port: int) -> Sequence[str | IPAddress]:
        """The addresses of ``host``, best first; raise ``OSError`` when it does not resolve."""
        ...


def _check_resolver(_: object, __: object, value: Resolver | AsyncResolver | None) -> None:
    if value is not None and not hasattr(value, "resolve") and not hasattr(value, "aresolve"):
        msg = f"resolver {type(value).__name__} has neither resolve() nor aresolve()"
        raise ConfigurationError(msg)


def _networks(*entries: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in entries)


# Checked in order: the first match names the reason. Explicit lists rather than
# ``is_private``/``is_global``, whose meaning changed between Python releases.
_BLOCKED_V4 = _networks(
    ("169.254.169.254/32", "a cloud metadata address"),
    ("100.100.100.200/32", "a cloud metadata address"),
    ("0.0.0.0/8", "an unspecified address"),
    ("127.0.0.0/8", "a loopback address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a private address (carrier-grade NAT)"),
    ("169.254.0.0/16", "a link-local address"),
    ("224.0.0.0/4", "a multicast address"),
    ("192.0.0.0/24", "a reserved address"),
    ("192.0.2.0/24", "a reserved address (documentation)"),
    ("198.51.100.0/24", "a reserved address (documentation)"),
    ("203.0.113.0/24", "a reserved address (documentation)"),
    ("192.88.99.0/24", "a reserved address"),
    ("198.18.0.0/15", "a reserved address (benchmarking)"),
    ("240.0.0.0/4", "a reserved address"),
)
_BLOCKED_V6 = _networks(
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fc00::/7", "a private address"),
    ("fec0::/10", "a private address (site-local)"),
    ("fe80::/10", "a link-local address"),
    ("ff00::/8", "a multicast address"),
    ("::/96", "a reserved address (IPv4-compatible)"),
    ("100::/64", "a reserved address (discard)"),
    ("2001::/23", "a reserved address"),
    ("2001:db8::/32", "a reserved address (documentation)"),
    ("3fff::/20", "a reserved address (documentation)"),
    ("64:ff9b:1::/48", "a reserved address (local NAT64)"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def _embedded_v4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), and the form."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if address.sixtofour is not None:
        return address.sixtofour, "6to4"
    return None


def _blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not publicly routable, or ``None`` when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            reason = _blocked_reason(embedded[0])
            return None if reason is None else f"{reason} ({embedded[1]} {embedded[0]})"
        table: tuple[tuple[IPNetwork, str], ...] = _BLOCKED_V6
    else:
        table = _BLOCKED_V4
    for network, reason in table:
        if address in network:
            return reason
    return None


def _to_address(value: object) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    if isinstance(value, str):
        return ipaddress.ip_address(value)
    msg = f"expected an IP address, not {type(value).__name__}"
    raise TypeError(msg)


def _to_networks(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    if isinstance(values, str):
        values = (values,)
    try:
        return tuple(ipaddress.ip_network(v) for v in values)
    except (ValueError, TypeError) as exc:
        msg = f"allow_networks: {exc}"
        raise ConfigurationError(msg) from None


def _to_schemes(values: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        values = (values,)
    schemes = frozenset(v.lower() for v in values)
    unknown = schemes - _DEFAULT_PORTS.keys()
    if unknown:
        msg = f"schemes may only contain 'http' and 'https', not {sorted(unknown)}"
        raise ConfigurationError(msg)
    return schemes


@attrs.frozen
class ParsedEndpoint:
    """A receiver URL that passed [`EndpointPolicy.check_url`][].

    Args:
        url: The URL as given.
        scheme: ``http`` or ``https``, lower-case.
        host: The host name (lower-case) or IP literal (IPv6 without brackets).
        port: The port, defaulted from the scheme.
        path_and_query: What goes on the request line, at least ``/``; no fragment.
        origin: ``scheme://host:port``, a key for connection pools and per-origin limits.
        is_ip_literal: Whether ``host`` is an IP address rather than a name.
    """

    url: str
    scheme: str
    host: str
    port: int
    path_and_query: str
    origin: str
    is_ip_literal: bool


@functools.lru_cache(maxsize=_URL_CACHE_SIZE)
def _parse_url(url: str, schemes: frozenset[str], allow_userinfo: bool) -> ParsedEndpoint | str:
    """The parsed endpoint, or why the URL is refused (cached: it runs per receiver)."""
    if not url:
        return "empty URL"
    if _FORBIDDEN_CHARS.search(url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"malformed URL ({exc})"
    try:
        port = parts.port
    except ValueError as exc:
        return f"bad port ({exc})"
    scheme = parts.scheme.lower()
    if not scheme or not url[len(scheme) + 1 :].startswith("//"):
        return "not an absolute URL (expected scheme://host/...)"
    if scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        return f"scheme {scheme!r} is not allowed (allowed: {allowed})"
    host = parts.hostname
    if not host:
        return "no host"
    if not allow_userinfo and "@" in parts.netloc:
        return "credentials in the URL are not allowed (they would be logged)"
    if port is None:  # also for an empty port ("host:"), which RFC 3986 allows
        port = _DEFAULT_PORTS[scheme]
    elif port == 0:
        return "port 0 is not a valid destination"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        is_ip = False
    else:
        is_ip = True
    path = parts.path or "/"
    path_and_query = f"{path}?{parts.query}" if parts.query else path
    netloc_host = f"[{host}]" if ":" in host else host
    return ParsedEndpoint(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        path_and_query=path_and_query,
        origin=f"{scheme}://{netloc_host}:{port}",
        is_ip_literal=is_ip,
    )


def _dns_error(host: str, url: str | None, exc: BaseException) -> DNSError:
    problem = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return DNSError(f"cannot resolve {host!r}: {problem}", url=url or host)


@attrs.frozen
class EndpointPolicy:
    """Which receiver endpoints flnotify POSTs to; see the module docstring for the limits.

    Args:
        schemes: Allowed URL schemes, a subset of ``{"http", "https"}``.
        block_private: Refuse hosts that resolve to non-public addresses (off by default:
            FL clients often live on private networks).
        allow_networks: Networks allowed even when ``block_private`` is on, e.g.
            ``("10.20.0.0/16",)``; strings are converted.
        allow_userinfo: Accept ``user:password@`` in URLs (off: it would leak into logs).
        max_body_bytes: The largest request body that may be sent.
        resolver: Resolves host names for the guard instead of the system's
            ``getaddrinfo`` (a [`Resolver`][flnotify.endpoints.Resolver], an
            [`AsyncResolver`][flnotify.endpoints.AsyncResolver], or both). The Notifier
            connects to the first address it returns, so the name is never resolved twice.
    """

    schemes: frozenset[str] = attrs.field(default=frozenset(_DEFAULT_PORTS), converter=_to_schemes)
    block_private: bool = False
    allow_networks: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_to_networks)
    allow_userinfo: bool = False
    max_body_bytes: int = attrs.field(default=DEFAULT_MAX_PAYLOAD_BYTES, validator=at_least_one)
    resolver: Resolver | AsyncResolver | None = attrs.field(default=None, validator=_check_resolver)

    def check_url(self, url: str) -> ParsedEndpoint:
        """Parse and check a receiver URL; pure, no I/O, cached by URL.

        Raises:
            EndpointError: The URL is not a string, empty, relative, has a scheme not in
                ``schemes``, no host, a bad port, credentials, whitespace or control
                characters; ``reason`` says which.
        """
        if not isinstance(url, str):
            raise EndpointError(repr(url), f"not a string ({type(url).__name__})")
        result = _parse_url(url, self.schemes, self.allow_userinfo)
        if isinstance(result, str):
            raise EndpointError(url, result)
        return result

    def validate_url(self, url: str) -> None:
        """Refuse what [`check_url`][] refuses, without building a [`ParsedEndpoint`][].

        The hot path of a fan-out: every receiver has a URL of its own, but thousands share
        a few origins, so the ``scheme://authority`` part is checked once per origin
        (cached) and only the path is checked per URL.

        Raises:
            EndpointError: As [`check_url`][].
        """
        if isinstance(url, str):
            start = url.find("://")
            end = url.find("/", start + 3) if start > 0 else -1
            if end > 0 and not _AUTHORITY_DELIMITERS.search(url, 0, end):
                origin = _parse_url(url[:end] + "/", self.schemes, self.allow_userinfo)
                if isinstance(origin, str):
                    raise EndpointError(url, origin)
                if _FORBIDDEN_CHARS.search(url, end):
                    raise EndpointError(url, "contains whitespace or control characters")
                return
        self.check_url(url)  # the rare forms take the full parse

    def check_address(self, ip: str | IPAddress, *, url: str | None = None) -> None:
        """Refuse a guarded address; does nothing while ``block_private`` is off.

        Args:
            ip: The address (a string may carry an IPv6 zone, ``fe80::1%eth0``).
            url: The endpoint, for the error; defaults to the address.

        Raises:
            BlockedAddressError: The address is not publicly routable and not allowed.
            ValueError: ``ip`` is not an IP address.
        """
        if not self.block_private:
            return
        address = _to_address(ip)
        reason = _blocked_reason(address)
        if reason is None or self._allowed(address):
            return
        raise BlockedAddressError(url or str(ip), f"{ip} is {reason}")

    def _allowed(self, address: IPAddress) -> bool:
        if not self.allow_networks:
            return False
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_v4(address)
            if embedded is not None:
                candidates.append(embedded[0])
        return any(a in net for a in candidates for net in self.allow_networks)

    def _precheck_host(self, host: str, url: str | None) -> list[str] | None:
        """The result when no resolution is needed (guard off, IP literal), else ``None``."""
        if not self.block_private:
            return []
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None
        self.check_address(address, url=url)
        return [str(address)]

    def _check_resolved(self, resolved: Iterable[object], host: str, url: str | None) -> list[str]:
        """Check every resolved address; any blocked one refuses the host."""
        addresses = list(dict.fromkeys(str(address) for address in resolved))
        if not addresses:
            raise DNSError(f"cannot resolve {host!r}: no addresses", url=url or host)
        for address in addresses:
            self.check_address(address, url=url or host)
        return addresses

    def check_host(self, host: str, port: int, *, url: str | None = None) -> list[str]:
        """Resolve ``host`` and check every address (blocking); see [`acheck_host`][].

        Raises:
            ConfigurationError: The ``resolver`` has only ``aresolve``.
        """
        done = self._precheck_host(host, url)
        if done is not None:
            return done
        resolver = self.resolver
        try:
            if resolver is None:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                return self._check_resolved((info[4][0] for info in infos), host, url)
            resolve = getattr(resolver, "resolve", None)
            if resolve is None:
                msg = f"resolver {type(resolver).__name__} has no resolve(); use acheck_host"
                raise ConfigurationError(msg)
            resolved = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise _dns_error(host, url, exc) from exc
        return self._check_resolved(resolved, host, url)

    async def acheck_host(self, host: str, port: int, *, url: str | None = None) -> list[str]:
        """Resolve ``host`` and check every address it resolves to.

        Skips resolution entirely while ``block_private`` is off (returns ``[]``); an IP
        literal is checked without resolving. Uses the ``resolver``'s ``aresolve`` if it
        has one, else its ``resolve`` in a worker thread, else the event loop's
        ``getaddrinfo``.

        Args:
            host: The host name or IP literal.
            port: The port (passed to the resolver).
            url: The endpoint, for errors.

        Returns:
            The distinct addresses checked, in the resolver's order: the transport
            connects to the first one.

        Raises:
            BlockedAddressError: Any resolved address is guarded.
            DNSError: The name did not resolve.
        """
        done = self._precheck_host(host, url)
        if done is not None:
            return done
        loop = asyncio.get_running_loop()
        resolver = self.resolver
        try:
            if resolver is None:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                return self._check_resolved((info[4][0] for info in infos), host, url)
            aresolve = getattr(resolver, "aresolve", None)
            if aresolve is not None:
                resolved = await aresolve(host, port)
            else:
                resolved = await loop.run_in_executor(
                    None, cast(Resolver, resolver).resolve, host, port
                )
        except (OSError, UnicodeError) as exc:
            raise _dns_error(host, url, exc) from exc
        return self._check_resolved(resolved, host, url)

    def check_endpoint(self, url: str) -> ParsedEndpoint:
        """[`check_url`][], then [`check_host`][] (blocking) when the guard is on."""
        endpoint = self.check_url(url)
        self.check_host(endpoint.host, endpoint.port, url=url)
        return endpoint

    async def acheck_endpoint(self, url: str) -> ParsedEndpoint:
        """[`check_url`][], then [`acheck_host`][] when the guard is on."""
        endpoint = self.check_url(url)
        await self.acheck_host(endpoint.host, endpoint.port, url=url)
        return endpoint

    def check_body_size(self, body: bytes) -> None:
        """Refuse a request body over ``max_body_bytes``.

        Raises:
            PayloadTooLargeError: It is larger.
        """
        if len(body) > self.max_body_bytes:
            raise PayloadTooLargeError(len(body), self.max_body_bytes)
