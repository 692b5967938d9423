"""DNS rebinding: with the address guard on, the POST goes to the address that was checked.

Two real servers listen on the same port of two loopback addresses. The resolver answers
the checked (allowed) address first and the other one afterwards, as a rebinding DNS
server would; the system resolver answers 127.0.0.1 for ``localhost`` as well. Only the
checked server may ever see the POST.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import ssl
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

import flnotify
import flnotify.errors
import flnotify.transports
from flnotify import EndpointPolicy, FunctionCallbacks, Outcome, Receiver, RetryPolicy, Timeouts
from flnotify.endpoints import AsyncResolver, Resolver
from flnotify.errors import TransportErrorKind
from flnotify.testing import MemoryTransport
from flnotify.transports import HttpxTransport
from helpers.servers import AddressServer

TIMEOUTS = Timeouts(connect=2.0, read=2.0, write=2.0, pool=2.0, total=5.0)
CHECKED, OTHER, THIRD = "127.0.0.2", "127.0.0.1", "127.0.0.3"

TransportFactory = Callable[[ssl.SSLContext | None], Any]


def _httpx(ctx: ssl.SSLContext | None) -> Any:
    return HttpxTransport(timeouts=TIMEOUTS, verify=ctx if ctx is not None else True)


def _streams(ctx: ssl.SSLContext | None) -> Any:
    from flnotify.transports import StreamTransport

    return StreamTransport(timeouts=TIMEOUTS, ssl_context=ctx)


FACTORIES = [pytest.param(_httpx, id="httpx")]
if importlib.util.find_spec("httptools") is not None:
    FACTORIES.append(pytest.param(_streams, id="streams"))


@pytest.fixture(params=FACTORIES)
def make_transport(request: pytest.FixtureRequest) -> TransportFactory:
    factory: TransportFactory = request.param
    return factory


class Rebinding:
    """Answers each lookup with the next of ``answers`` (the last one repeats)."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.lookups: list[tuple[str, int]] = []

    def _next(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        return [self.answers[min(len(self.lookups) - 1, len(self.answers) - 1)]]


class SyncRebinding(Rebinding):
    def resolve(self, host: str, port: int) -> Sequence[str]:
        return self._next(host, port)


class AsyncRebinding(Rebinding):
    async def aresolve(self, host: str, port: int) -> Sequence[str]:
        return self._next(host, port)


RESOLVERS = [pytest.param(SyncRebinding, id="sync"), pytest.param(AsyncRebinding, id="async")]


def _servers(*addresses: str, tls: bool = False) -> Iterator[list[AddressServer]]:
    """Servers on the same free port of each loopback address (a certificate for localhost)."""
    for _ in range(20):
        with ExitStack() as stack:
            first = stack.enter_context(AddressServer(addresses[0], tls=tls, names=("localhost",)))
            try:
                rest = [
                    stack.enter_context(
                        AddressServer(
                            a, port=first.port, tls=tls, names=("localhost",), ca=first._ca
                        )
                    )
                    for a in addresses[1:]
                ]
            except OSError:  # the port is taken on another address: try another one
                continue
            yield [first, *rest]
            return
    pytest.fail("no port free on every loopback address")


@pytest.fixture(params=[False, True], ids=["http", "https"])
def pair(request: pytest.FixtureRequest) -> Iterator[list[AddressServer]]:
    yield from _servers(CHECKED, OTHER, tls=request.param)


def _notification(url: str) -> flnotify.TrainingStartNotification:
    return flnotify.TrainingStartNotification(
        receivers=[Receiver(uuid.uuid4(), url)],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )


def _ctx(server: AddressServer) -> ssl.SSLContext | None:
    return server.client_ssl_context() if server.tls else None


@pytest.mark.parametrize("resolver_class", RESOLVERS)
def test_the_post_goes_to_the_checked_address_only(
    make_transport: TransportFactory,
    pair: list[AddressServer],
    resolver_class: type[Rebinding],
) -> None:
    checked, other = pair
    resolver: Any = resolver_class(CHECKED, OTHER)
    policy = EndpointPolicy(block_private=True, allow_networks=[f"{CHECKED}/32"], resolver=resolver)
    url = checked.url("/status/202", host="localhost")
    with flnotify.Notifier(transport=make_transport(_ctx(checked)), policy=policy) as notifier:
        (delivery,) = notifier.send(_notification(url))
        assert delivery.outcome is Outcome.DELIVERED, delivery.error
        assert resolver.lookups == [("localhost", checked.port)]  # one lookup, no second
        (request,) = checked.requests
        assert request.headers["host"] == f"localhost:{checked.port}"
        assert other.requests == []
        assert other.connections_opened == 0

        # the next send checks again: the rebound answer is loopback, refused before any I/O
        (refused,) = notifier.send(_notification(url))
    assert refused.outcome is Outcome.FAILED
    assert isinstance(refused.error, flnotify.errors.TransportError)
    assert refused.error.kind is TransportErrorKind.BLOCKED
    assert isinstance(refused.error.__cause__, flnotify.errors.BlockedAddressError)
    assert len(checked.requests) == 1
    assert other.connections_opened == 0


@pytest.mark.parametrize("resolver_class", RESOLVERS)
def test_each_retry_checks_the_host_again(
    make_transport: TransportFactory,
    pair: list[AddressServer],
    resolver_class: type[Rebinding],
) -> None:
    """A name that rebinds between attempts: the retry is refused, never sent elsewhere."""
    checked, other = pair
    resolver: Any = resolver_class(CHECKED, OTHER)
    policy = EndpointPolicy(block_private=True, allow_networks=[f"{CHECKED}/32"], resolver=resolver)
    url = checked.url("/status/503", host="localhost")
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.0, jitter=0.0)
    with flnotify.Notifier(
        transport=make_transport(_ctx(checked)), policy=policy, retry=retry
    ) as notifier:
        (delivery,) = notifier.send(_notification(url))
    assert resolver.lookups == [("localhost", checked.port)] * 2  # checked before each attempt
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.TransportError)
    assert delivery.error.kind is TransportErrorKind.BLOCKED
    assert delivery.attempts == 1
    assert delivery.status_code == 503  # the last answer is kept
    assert len(checked.requests) == 1
    assert other.connections_opened == 0


@pytest.mark.parametrize("resolver_class", RESOLVERS)
def test_the_notifier_tries_the_next_checked_address_when_the_first_is_down(
    make_transport: TransportFactory, resolver_class: type[Rebinding]
) -> None:
    """A client whose first A record is down is reached on the next one, never elsewhere."""

    class TwoAddresses(resolver_class):  # type: ignore[valid-type, misc]
        def _next(self, host: str, port: int) -> list[str]:
            self.lookups.append((host, port))
            return [THIRD, CHECKED]  # nothing listens on THIRD's port

    for (server,) in _servers(CHECKED):
        resolver: Any = TwoAddresses()
        allowed = ipaddress.ip_network(f"{CHECKED}/31")  # .2 and .3
        policy = EndpointPolicy(block_private=True, allow_networks=[allowed], resolver=resolver)
        url = server.url("/status/202", host="localhost")
        with flnotify.Notifier(transport=make_transport(None), policy=policy) as notifier:
            (delivery,) = notifier.send(_notification(url))
        assert delivery.outcome is Outcome.DELIVERED, delivery.error
        assert delivery.attempts == 1
        assert len(server.requests) == 1


def test_a_pinned_connection_is_never_reused_for_another_address(
    make_transport: TransportFactory,
) -> None:
    for first, second in _servers(CHECKED, THIRD):
        resolver = SyncRebinding(CHECKED, THIRD)
        allowed = ipaddress.ip_network(f"{CHECKED}/31")  # .2 and .3
        policy = EndpointPolicy(block_private=True, allow_networks=[allowed], resolver=resolver)
        url = first.url("/status/202", host="localhost")
        with flnotify.Notifier(transport=make_transport(None), policy=policy) as notifier:
            (one,) = notifier.send(_notification(url))
            (two,) = notifier.send(_notification(url))  # the first connection is idle, alive
        assert (one.outcome, two.outcome) == (Outcome.DELIVERED, Outcome.DELIVERED)
        assert (len(first.requests), len(second.requests)) == (1, 1)


@pytest.mark.parametrize("path", ["/redirect/302", "/redirect/307"])
def test_redirects_stay_unfollowed_when_pinned(
    make_transport: TransportFactory, pair: list[AddressServer], path: str
) -> None:
    checked, other = pair
    policy = EndpointPolicy(
        block_private=True, allow_networks=[f"{CHECKED}/32"], resolver=SyncRebinding(CHECKED)
    )
    transport = make_transport(_ctx(checked))
    with flnotify.Notifier(
        transport=transport, policy=policy, retry=RetryPolicy(max_attempts=1)
    ) as notifier:
        (delivery,) = notifier.send(_notification(checked.url(path, host="localhost")))
    assert delivery.outcome is Outcome.FAILED  # a redirect: the endpoint is wrong
    assert delivery.status_code == int(path.rsplit("/", 1)[1])
    assert [r.path for r in checked.requests] == [path]
    assert other.requests == []


def test_a_transport_that_cannot_pin_is_refused_for_host_names() -> None:
    class Unpinned:
        """Has apost, but no pins_connections: it would resolve the name again."""

        def __init__(self) -> None:
            self.inner = MemoryTransport()

        async def apost(
            self, url: str, body: bytes, headers: Any
        ) -> flnotify.transports.HttpResponse:
            return await self.inner.apost(url, body, headers)

        async def aclose(self) -> None:
            pass

    transport = Unpinned()
    policy = EndpointPolicy(
        block_private=True, allow_networks=[f"{CHECKED}/32"], resolver=SyncRebinding(CHECKED)
    )
    with flnotify.Notifier(transport=transport, policy=policy) as notifier:
        (named,) = notifier.send(_notification("http://localhost:9/hook"))
        (literal,) = notifier.send(_notification(f"http://{CHECKED}:9/hook"))
    assert named.outcome is Outcome.FAILED
    assert isinstance(named.error, flnotify.errors.TransportError)
    assert named.error.kind is TransportErrorKind.BLOCKED
    assert "cannot connect to the checked address" in str(named.error)
    assert literal.outcome is Outcome.DELIVERED  # an IP literal needs no second lookup
    assert [r.url for r in transport.inner.requests] == [f"http://{CHECKED}:9/hook"]


def test_resolver_protocols_and_errors() -> None:
    assert isinstance(SyncRebinding(CHECKED), Resolver)
    assert isinstance(AsyncRebinding(CHECKED), AsyncResolver)
    with pytest.raises(flnotify.errors.ConfigurationError, match="neither resolve"):
        EndpointPolicy(resolver=object())  # type: ignore[arg-type]

    class Failing:
        def resolve(self, host: str, port: int) -> Sequence[str]:
            raise OSError("no such host")

    policy = EndpointPolicy(block_private=True, resolver=Failing())
    with pytest.raises(flnotify.errors.DNSError, match="no such host"):
        policy.check_host("client.example", 443)
    async_only = EndpointPolicy(block_private=True, resolver=AsyncRebinding(CHECKED))
    with pytest.raises(flnotify.errors.ConfigurationError, match="acheck_host"):
        async_only.check_host("client.example", 443)
    allowed = EndpointPolicy(
        block_private=True, allow_networks=[f"{CHECKED}/32"], resolver=SyncRebinding(CHECKED)
    )
    assert allowed.check_host("client.example", 443) == [CHECKED]


def _rebinding_policy() -> tuple[EndpointPolicy, SyncRebinding]:
    resolver = SyncRebinding(CHECKED, OTHER)
    policy = EndpointPolicy(block_private=True, allow_networks=[f"{CHECKED}/32"], resolver=resolver)
    return policy, resolver


def test_the_outbox_dispatcher_posts_to_the_checked_address_only(
    make_transport: TransportFactory, tmp_path: Path
) -> None:
    from flnotify.outbox import Outbox, OutboxDispatcher

    for checked, other in _servers(CHECKED, OTHER):
        policy, resolver = _rebinding_policy()
        with (
            Outbox(tmp_path / "outbox.db") as outbox,
            flnotify.Notifier(transport=make_transport(None), policy=policy) as notifier,
        ):
            batch = outbox.put(_notification(checked.url("/status/202", host="localhost")))
            OutboxDispatcher(outbox, notifier).run()
            (entry,) = outbox.entries(batch)
        assert entry.outcome is Outcome.DELIVERED
        assert len(resolver.lookups) == 1
        assert len(checked.requests) == 1
        assert other.connections_opened == 0


def test_a_celery_task_posts_to_the_checked_address_only() -> None:
    """The task body of a worker (run eagerly here: no broker is needed to show it)."""
    from celery import Celery  # type: ignore[import-untyped]

    from flnotify.contrib.celery import CeleryDelivery

    app = Celery(f"flnotify-pinning-{uuid.uuid4().hex[:8]}", broker="memory://")
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    for checked, other in _servers(CHECKED, OTHER):
        policy, resolver = _rebinding_policy()
        outcomes: list[flnotify.Delivery] = []
        record = FunctionCallbacks(outcomes.append, outcomes.append)
        sender = CeleryDelivery(
            app,
            transport_factory=lambda: HttpxTransport(timeouts=TIMEOUTS),
            policy=policy,
            callbacks={"record": lambda _, record=record: record},
        )
        try:
            sender.enqueue(
                _notification(checked.url("/status/202", host="localhost")), callbacks="record"
            )
        finally:
            sender.close()
            app.close()
        assert [d.outcome for d in outcomes] == [Outcome.DELIVERED]
        assert len(resolver.lookups) == 1
        assert len(checked.requests) == 1
        assert other.connections_opened == 0


def test_a_hosts_own_httpx_client_is_pinned_by_addressing_the_checked_ip() -> None:
    import httpx

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    policy = EndpointPolicy(
        block_private=True, allow_networks=[f"{CHECKED}/32"], resolver=SyncRebinding(CHECKED)
    )
    transport = HttpxTransport(async_client=client)
    with flnotify.Notifier(transport=transport, policy=policy) as notifier:
        (delivery,) = notifier.send(_notification("https://client.example:8443/fl?x=1"))
        notifier.engine.run_sync(client.aclose())
    assert delivery.outcome is Outcome.DELIVERED
    (request,) = seen
    assert str(request.url) == f"https://{CHECKED}:8443/fl?x=1"
    assert request.headers["host"] == "client.example:8443"
    assert request.extensions["sni_hostname"] == "client.example"  # TLS checks the name


# -- several checked addresses: the first that takes the connection ------------------------

DEAD = "127.0.0.4"  # nothing listens there: every connection is refused


def _apost(transport: Any, url: str, connect_to: Any) -> flnotify.transports.HttpResponse:
    async def main() -> flnotify.transports.HttpResponse:
        try:
            response: flnotify.transports.HttpResponse = await transport.apost(
                url, b"{}", {"content-type": "application/json"}, connect_to=connect_to
            )
            return response
        finally:
            await transport.aclose()

    return asyncio.run(main())


def test_a_refused_first_address_gives_way_to_the_next_checked_one(
    make_transport: TransportFactory, pair: list[AddressServer]
) -> None:
    checked, other = pair
    url = checked.url("/status/202", host="localhost")
    response = _apost(make_transport(_ctx(checked)), url, [DEAD, CHECKED])
    assert response.status_code == 202
    (request,) = checked.requests
    assert request.headers["host"] == f"localhost:{checked.port}"
    assert other.requests == []  # only the addresses given are ever tried
    assert other.connections_opened == 0


def test_when_every_address_refuses_the_error_names_them(
    make_transport: TransportFactory, pair: list[AddressServer]
) -> None:
    checked, _ = pair
    url = checked.url("/status/202", host="localhost")
    with pytest.raises(flnotify.errors.ConnectError) as info:
        _apost(make_transport(_ctx(checked)), url, (DEAD, "127.0.0.5"))
    assert f"tried 2 addresses: {DEAD}, 127.0.0.5" in str(info.value)
    assert info.value.url == url
    assert checked.requests == []


@pytest.mark.parametrize("connect_to", [[], [""], [CHECKED, 7]])
def test_connect_to_must_name_addresses(make_transport: TransportFactory, connect_to: Any) -> None:
    with pytest.raises(flnotify.errors.InvalidURLError, match="connect_to must name"):
        _apost(make_transport(None), "http://localhost:9/hook", connect_to)


def test_a_silent_first_address_is_given_up_within_the_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A black-holed address costs the connect limit, then the next one is tried in time."""
    from flnotify.transports import StreamTransport

    for checked, _ in _servers(CHECKED, OTHER):
        url = checked.url("/status/202", host="localhost")

        async def main(total: float, url: str = url) -> flnotify.transports.HttpResponse:
            loop = asyncio.get_running_loop()
            connect = loop.create_connection

            async def silent_dead(factory: Any, host: str, *args: Any, **kwargs: Any) -> Any:
                if host == DEAD:
                    await asyncio.Event().wait()  # never answers
                return await connect(factory, host, *args, **kwargs)

            monkeypatch.setattr(loop, "create_connection", silent_dead)
            timeouts = Timeouts(connect=0.2, read=2.0, write=2.0, pool=2.0, total=total)
            async with StreamTransport(timeouts=timeouts) as transport:
                return await transport.apost(url, b"{}", {}, connect_to=[DEAD, CHECKED])

        assert asyncio.run(main(total=5.0)).status_code == 202
        with pytest.raises(flnotify.errors.TransportTimeoutError, match=f"connecting to {DEAD}"):
            asyncio.run(main(total=0.2))  # no time left for the next address
        assert len(checked.requests) == 1
