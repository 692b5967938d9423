"""Every transport against a real loopback server that misbehaves in every way we know.

Each case goes through the Notifier and checks: exactly one outcome and one callback per
receiver, the right classification, and the right number of attempts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import flnotify
import flnotify.errors
import flnotify.transports
from flnotify import FunctionCallbacks, Outcome, Receiver, RetryPolicy, Timeouts, TrainingState
from flnotify.testing import seams
from flnotify.transports import HttpxTransport
from helpers.servers import FaultServer, SinkServer, refused_url

TIMEOUTS = Timeouts(connect=2.0, read=0.5, write=2.0, pool=2.0)
CAP = 64 * 1024

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


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


class Run:
    """One send with fake sleeps, recording the callbacks."""

    def __init__(self, transport: Any, **kwargs: Any) -> None:
        self.sleeps: list[float] = []
        self.calls: list[flnotify.Delivery] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        with seams(sleep=sleep):
            self.notifier = flnotify.Notifier(
                transport=transport,
                retry=kwargs.pop("retry", RetryPolicy(max_attempts=3)),
                **kwargs,
            )

    def send(self, *urls: str) -> flnotify.DeliveryReport:
        rs = [Receiver(uuid.uuid4(), url) for url in urls]
        n = flnotify.TrainingRoundStartNotification(
            receivers=rs,
            body=flnotify.RoundBody(round=1, global_model_uuid=uuid.uuid4()),
            training_uuid=uuid.uuid4(),
        )
        try:
            report = self.notifier.send(n, FunctionCallbacks(self.calls.append, self.calls.append))
        finally:
            self.notifier.close()
        assert sorted(id(d) for d in self.calls) == sorted(id(d) for d in report)
        assert len(report) == len(rs)
        return report


def one(report: flnotify.DeliveryReport) -> flnotify.Delivery:
    (delivery,) = report.deliveries
    return delivery


@pytest.mark.parametrize(
    ("path", "outcome", "status", "attempts"),
    [
        ("/status/200", Outcome.DELIVERED, 200, 1),
        ("/status/202", Outcome.DELIVERED, 202, 1),
        ("/status/404", Outcome.FAILED, 404, 1),
        ("/status/409", Outcome.REJECTED, 409, 1),
        ("/status/500", Outcome.REJECTED, 500, 1),
        ("/status/429", Outcome.FAILED, 429, 3),
        ("/redirect", Outcome.FAILED, 301, 1),
        ("/chunked/202", Outcome.DELIVERED, 202, 1),
        ("/keepalive-close", Outcome.DELIVERED, 202, 1),
    ],
)
def test_status_classification(
    make_transport: TransportFactory,
    server: FaultServer,
    path: str,
    outcome: Outcome,
    status: int,
    attempts: int,
) -> None:
    url = server.url(f"{path}?case={uuid.uuid4()}")
    d = one(Run(make_transport(None)).send(url))
    assert (d.outcome, d.status_code, d.attempts) == (outcome, status, attempts)
    assert len(server.requests_for(url.removeprefix(server.base_url()))) == attempts


def test_redirect_is_not_followed(make_transport: TransportFactory, server: FaultServer) -> None:
    server.clear()
    d = one(Run(make_transport(None)).send(server.url("/redirect")))
    assert d.outcome is Outcome.FAILED
    assert [r.path for r in server.requests] == ["/redirect"]


def test_503_with_retry_after_is_honoured_then_fails(
    make_transport: TransportFactory, server: FaultServer
) -> None:
    run = Run(make_transport(None))
    d = one(run.send(server.url(f"/retry-after/503/3?case={uuid.uuid4()}")))
    assert (d.outcome, d.status_code, d.attempts) == (Outcome.FAILED, 503, 3)
    assert run.sleeps == [3.0, 3.0]


def test_flaky_receiver_is_delivered_on_a_later_attempt(
    make_transport: TransportFactory, server: FaultServer
) -> None:
    run = Run(make_transport(None))
    d = one(run.send(server.url(f"/flaky/2/202?case={uuid.uuid4()}")))
    assert (d.outcome, d.status_code, d.attempts) == (Outcome.DELIVERED, 202, 3)
    assert len(run.sleeps) == 2


def test_refused_port_fails_after_the_retry_budget(make_transport: TransportFactory) -> None:
    run = Run(make_transport(None))
    d = one(run.send(refused_url()))
    assert d.outcome is Outcome.FAILED
    assert isinstance(d.error, flnotify.errors.ConnectError)
    assert d.attempts == 3
    assert d.status_code is None
    assert isinstance(d.error.__cause__, Exception)


def test_unresolvable_name_is_a_dns_error(make_transport: TransportFactory) -> None:
    d = one(Run(make_transport(None), retry=RetryPolicy.no_retries()).send("http://nx.invalid/"))
    assert d.outcome is Outcome.FAILED
    assert isinstance(d.error, flnotify.errors.DNSError)


def test_never_answering_peer_times_out(
    make_transport: TransportFactory, server: FaultServer
) -> None:
    d = one(Run(make_transport(None), retry=RetryPolicy(max_attempts=2)).send(server.url("/hang")))
    assert d.outcome is Outcome.FAILED
    assert isinstance(d.error, flnotify.errors.TransportTimeoutError)
    assert d.attempts == 2


def test_slow_headers_time_out(make_transport: TransportFactory, server: FaultServer) -> None:
    run = Run(make_transport(None), retry=RetryPolicy.no_retries())
    d = one(run.send(server.url("/slow-headers/5")))
    assert d.outcome is Outcome.FAILED
    assert isinstance(d.error, flnotify.errors.TransportTimeoutError)


def test_reset_mid_response(make_transport: TransportFactory, server: FaultServer) -> None:
    d = one(Run(make_transport(None)).send(server.url("/reset")))
    assert d.outcome is Outcome.FAILED
    assert isinstance(d.error, (flnotify.errors.ConnectionLostError, flnotify.errors.ProtocolError))
    assert d.attempts == 3


def test_close_without_answer(make_transport: TransportFactory, server: FaultServer) -> None:
    d = one(Run(make_transport(None), retry=RetryPolicy(max_attempts=2)).send(server.url("/close")))
    assert d.outcome is Outcome.FAILED
    assert isinstance(d.error, flnotify.errors.TransportError)
    assert d.attempts == 2


@pytest.mark.parametrize(("status", "outcome"), [(200, Outcome.DELIVERED), (409, Outcome.REJECTED)])
def test_ten_megabyte_response_is_capped_and_classified_by_status(
    make_transport: TransportFactory, server: FaultServer, status: int, outcome: Outcome
) -> None:
    url = server.url(f"/big/{10_000_000}/{status}")
    d = one(Run(make_transport(None)).send(url))
    assert (d.outcome, d.status_code, d.attempts) == (outcome, status, 1)
    if outcome is Outcome.REJECTED:  # kept for diagnosis; delivered ones keep only the status
        assert d.response is not None
        assert len(d.response.body) == CAP
        assert d.response.truncated
    else:
        assert d.response is None

    async def post_directly() -> flnotify.transports.HttpResponse:
        transport = make_transport(None)
        try:
            response: flnotify.transports.HttpResponse = await transport.apost(url, b"{}", {})
        finally:
            await transport.aclose()
        return response

    response = asyncio.run(post_directly())
    assert (response.status_code, len(response.body), response.truncated) == (status, CAP, True)


def test_request_framing(make_transport: TransportFactory, server: FaultServer) -> None:
    url = server.url(f"/status/202?case={uuid.uuid4()}")
    report = Run(make_transport(None)).send(url)
    (request,) = server.requests_for(url.removeprefix(server.base_url()))
    assert request.method == "POST"
    assert not request.chunked
    assert request.headers["content-length"] == str(len(request.body))
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == one(report).message_id
    assert request.json()["notification_type"] == "UPDATE_ROUND_START"


def test_tls_verified_with_the_ca_and_refused_without(make_transport: TransportFactory) -> None:
    with FaultServer(tls=True) as tls:
        ok = one(Run(make_transport(tls.client_ssl_context())).send(tls.url("/status/202")))
        assert ok.outcome is Outcome.DELIVERED
        bad = one(Run(make_transport(None), retry=RetryPolicy.no_retries()).send(tls.url("/")))
        assert bad.outcome is Outcome.FAILED
        assert isinstance(bad.error, flnotify.errors.TransportError)


def test_thousand_receivers_over_many_origins(make_transport: TransportFactory) -> None:
    with SinkServer(status=202, ports=20, record=True) as sink:
        urls = [sink.url(f"/c/{i}", index=i % 20) for i in range(1000)]
        report = Run(make_transport(None)).send(*urls)
        assert report.counts() == {Outcome.DELIVERED: 1000, Outcome.REJECTED: 0, Outcome.FAILED: 0}
        assert sink.request_count == 1000
        assert len({r.headers["webhook-id"] for r in sink.requests}) == 1000
        assert sorted(r.path for r in sink.requests) == sorted(f"/c/{i}" for i in range(1000))


def test_the_originals_behaviours_against_a_real_server(
    make_transport: TransportFactory, server: FaultServer
) -> None:
    repo = flnotify.InMemoryTrainingRepository()
    ok = [Receiver(uuid.uuid4(), server.url(f"/status/202?c={i}")) for i in range(3)]
    rejecting = Receiver(uuid.uuid4(), server.url("/status/409"))
    dead = Receiver(uuid.uuid4(), refused_url())
    training = repo.create_training(
        actor=ok[0],
        participants=[*ok, rejecting],
        model_id=uuid.uuid4(),
        state=TrainingState.ONGOING,
    )
    n = flnotify.TrainingRoundStartNotification.from_training(training)
    run = Run(make_transport(None), repository=repo)
    report = run.notifier.send(n)
    run.notifier.close()
    assert [d.outcome for d in report] == [Outcome.DELIVERED] * 3 + [Outcome.REJECTED]
    after = repo.get_training(training.id)
    assert [p.id for p in after.participants] == [r.id for r in ok]
    assert after.state is TrainingState.ONGOING

    repo.add_participant(training.id, dead)
    n = flnotify.TrainingRoundStartNotification.from_training(repo.get_training(training.id))
    run = Run(make_transport(None), repository=repo)
    report = run.notifier.send(n)
    run.notifier.close()
    assert [d.outcome for d in report] == [Outcome.DELIVERED] * 3 + [Outcome.FAILED]
    assert report.deliveries[-1].attempts == 3
    final = repo.get_training(training.id)
    assert final.state is TrainingState.ERROR
    assert [p.id for p in final.participants] == [r.id for r in [*ok, dead]]


def test_httpx_per_origin_clients_are_bounded_and_closed() -> None:
    transport = HttpxTransport(timeouts=TIMEOUTS, max_origins=2, max_connections_per_origin=2)
    with SinkServer(status=202, ports=5, record=True) as sink:
        urls = [sink.url(f"/c/{i}", index=i % 5) for i in range(50)]
        report = Run(transport).send(*urls)
        assert report.ok
        assert sink.request_count == 50
        # evicted clients and the last ones are all closed (the server sees it a bit later)
        sink.wait_until(lambda: sink.open_connections == 0)
