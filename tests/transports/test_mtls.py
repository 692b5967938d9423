"""Mutual TLS: the server presents a client certificate to receivers that require one.

Every receiver here is a real loopback TLS server that requires a client certificate
signed by its site's CA (``trustme`` makes both CAs and all certificates).
"""

from __future__ import annotations

import importlib.util
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import flnotify
import flnotify.errors
from flnotify import Outcome, Receiver, RetryPolicy, Timeouts
from flnotify.transports import HttpxTransport, TLSConfig, TLSFor
from helpers.servers import AddressServer, ClientCertRefusingServer

TIMEOUTS = Timeouts(connect=2.0, read=2.0, write=2.0, pool=2.0, total=5.0)

TransportFactory = Callable[..., Any]


def _httpx(**kwargs: Any) -> Any:
    return HttpxTransport(timeouts=TIMEOUTS, **kwargs)


def _streams(**kwargs: Any) -> Any:
    from flnotify.transports import StreamTransport

    return StreamTransport(timeouts=TIMEOUTS, **kwargs)


FACTORIES = [pytest.param(_httpx, id="httpx")]
if importlib.util.find_spec("httptools") is not None:
    FACTORIES.append(pytest.param(_streams, id="streams"))


@pytest.fixture(params=FACTORIES)
def make_transport(request: pytest.FixtureRequest) -> TransportFactory:
    factory: TransportFactory = request.param
    return factory


class Site:
    """A receiver's site: the CA of its server certificate, the CA it wants clients from."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.server_ca = trustme.CA()
        self.client_ca = trustme.CA()
        self.ca_bundle = tmp / f"{name}-ca.pem"
        self.server_ca.cert_pem.write_to_path(str(self.ca_bundle))
        self.client_pem = tmp / f"{name}-client.pem"
        client = self.client_ca.issue_cert("fl-server.example")
        client.private_key_and_cert_chain_pem.write_to_path(str(self.client_pem))

    def tls(self) -> TLSConfig:
        """What the FL server needs for this site: its certificate, and the site's CA."""
        return TLSConfig(certificate=self.client_pem, ca_bundle=self.ca_bundle)

    def server(self) -> AddressServer:
        return AddressServer(tls=True, ca=self.server_ca, client_ca=self.client_ca)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path, "a")


@pytest.fixture
def server(site: Site) -> Iterator[AddressServer]:
    with site.server() as s:
        yield s


def _send(transport: Any, *urls: str) -> list[flnotify.Delivery]:
    n = flnotify.TrainingStartNotification(
        receivers=[Receiver(uuid.uuid4(), url) for url in urls],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    with flnotify.Notifier(transport=transport, retry=RetryPolicy(max_attempts=1)) as notifier:
        return list(notifier.send(n))


def test_the_right_certificate_is_delivered(
    make_transport: TransportFactory, site: Site, server: AddressServer
) -> None:
    (delivery,) = _send(make_transport(tls=site.tls()), server.url("/status/202"))
    assert delivery.outcome is Outcome.DELIVERED, delivery.error
    assert len(server.requests) == 1


def _assert_refused(delivery: flnotify.Delivery, server: AddressServer) -> None:
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.ConnectError), delivery.error
    assert "TLS handshake" in str(delivery.error)
    assert delivery.error.__cause__ is not None
    assert server.requests == []


def test_without_a_certificate_a_typed_failure(
    make_transport: TransportFactory, site: Site, server: AddressServer
) -> None:
    no_cert = TLSConfig(ca_bundle=site.ca_bundle)
    (delivery,) = _send(make_transport(tls=no_cert), server.url("/status/202"))
    _assert_refused(delivery, server)


def test_a_certificate_of_another_ca_is_refused(
    make_transport: TransportFactory, tmp_path: Path, site: Site, server: AddressServer
) -> None:
    stranger = Site(tmp_path, "stranger")
    wrong = TLSConfig(certificate=stranger.client_pem, ca_bundle=site.ca_bundle)
    (delivery,) = _send(make_transport(tls=wrong), server.url("/status/202"))
    _assert_refused(delivery, server)


def test_a_server_of_an_untrusted_ca_is_refused(
    make_transport: TransportFactory, tmp_path: Path, site: Site, server: AddressServer
) -> None:
    other = Site(tmp_path, "other")  # trusts another CA than the one of the server
    mine = TLSConfig(certificate=site.client_pem, ca_bundle=other.ca_bundle)
    (delivery,) = _send(make_transport(tls=mine), server.url("/status/202"))
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.ConnectError)
    assert server.requests == []


def test_per_receiver_settings_for_sites_with_their_own_ca(
    make_transport: TransportFactory, tmp_path: Path, site: Site, server: AddressServer
) -> None:
    other = Site(tmp_path, "b")
    asked: list[tuple[str, int]] = []
    with other.server() as second:

        def tls_for(host: str, port: int) -> TLSConfig | None:
            asked.append((host, port))
            return other.tls() if port == second.port else None

        chooser: TLSFor = tls_for
        transport = make_transport(tls=site.tls(), tls_for=chooser)
        urls = [server.url("/status/202"), second.url("/status/202"), second.url("/status/200")]
        deliveries = _send(transport, *urls)
        assert [d.outcome for d in deliveries] == [Outcome.DELIVERED] * 3, [
            d.error for d in deliveries
        ]
        assert len(second.requests) == 2
    assert len(server.requests) == 1
    # once per origin (its pool), never per attempt
    assert sorted(set(asked)) == sorted(asked)
    assert ("127.0.0.1", second.port) in asked


def test_settings_are_checked_when_the_transport_is_built(
    make_transport: TransportFactory, tmp_path: Path
) -> None:
    missing = TLSConfig(certificate=tmp_path / "nowhere.pem")
    with pytest.raises(flnotify.errors.ConfigurationError, match="cannot be loaded"):
        make_transport(tls=missing)
    with pytest.raises(flnotify.errors.ConfigurationError, match="key without a certificate"):
        TLSConfig(key=tmp_path / "key.pem")


def test_contexts_are_built_once_per_value(site: Site) -> None:
    assert site.tls().context() is site.tls().context()
    assert TLSConfig(ca_bundle=site.ca_bundle).context() is not site.tls().context()


def test_a_refusal_after_a_tls13_handshake_is_typed(
    make_transport: TransportFactory, site: Site
) -> None:
    with ClientCertRefusingServer(site.server_ca) as server:
        (delivery,) = _send(make_transport(tls=site.tls()), server.url("/status/202"))
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.ConnectError), delivery.error
    assert "the TLS handshake was refused" in str(delivery.error)
    assert "(TLS alert unknown ca)" in str(delivery.error)  # what the server said
    assert server.refused == 1


VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("certificate", [False, True], ids=["no-certificate", "foreign"])
def test_an_asyncio_server_refusing_our_certificate_is_a_typed_failure(
    make_transport: TransportFactory,
    tmp_path: Path,
    site: Site,
    version: ssl.TLSVersion,
    certificate: bool,
) -> None:
    """As uvicorn with ``ssl_cert_reqs=CERT_REQUIRED``: it closes without a TLS alert."""
    stranger = Site(tmp_path, "stranger")
    tls = TLSConfig(
        certificate=stranger.client_pem if certificate else None, ca_bundle=site.ca_bundle
    )
    tls13 = version is ssl.TLSVersion.TLSv1_3
    with AddressServer(tls=True, ca=site.server_ca, client_ca=site.client_ca, tls13=tls13) as s:
        (delivery,) = _send(make_transport(tls=tls), s.url("/status/202"))
        assert s.requests == []
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.ConnectError), delivery.error
    assert str(delivery.error).startswith("the TLS handshake was refused")
    assert "without a TLS alert" in str(delivery.error)
    if tls13:  # our side of the handshake was done: the server closed at the first read
        assert "most likely it refused our client certificate" in str(delivery.error)
    else:
        assert "does it require a client certificate?" in str(delivery.error)


@pytest.mark.parametrize(
    ("version", "certificate", "said"),
    [
        (
            ssl.TLSVersion.TLSv1_3,
            False,
            "the server requires a client certificate and we sent none"
            " (TLS alert certificate required)",
        ),
        (
            ssl.TLSVersion.TLSv1_3,
            True,
            "the server refused our client certificate (TLS alert unknown ca)",
        ),
        (ssl.TLSVersion.TLSv1_2, False, "the server refused it (TLS alert handshake failure)"),
        (
            ssl.TLSVersion.TLSv1_2,
            True,
            "the server refused our client certificate (TLS alert unknown ca)",
        ),
    ],
    ids=["tls1.3-none", "tls1.3-refused", "tls1.2-none", "tls1.2-refused"],
)
def test_the_servers_alert_is_said(
    make_transport: TransportFactory,
    site: Site,
    version: ssl.TLSVersion,
    certificate: bool,
    said: str,
) -> None:
    tls = site.tls() if certificate else TLSConfig(ca_bundle=site.ca_bundle)
    with ClientCertRefusingServer(site.server_ca, version) as server:
        (delivery,) = _send(make_transport(tls=tls), server.url("/status/202"))
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.ConnectError), delivery.error
    assert str(delivery.error).startswith("the TLS handshake was refused")
    assert said in str(delivery.error)
    assert isinstance(delivery.error.__cause__, Exception)
    assert server.refused == 1
