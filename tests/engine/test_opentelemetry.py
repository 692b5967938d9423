"""OpenTelemetry: spans per send and attempt, metrics, trace context in the request headers.

The SDK's in-memory exporter and metric reader see what an OTLP collector would.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.propagators.textmap import CarrierT, Setter, default_setter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import flnotify
import flnotify.errors
import flnotify.hooks
from flnotify import Outcome, Receiver, RetryPolicy
from flnotify.contrib.opentelemetry import OpenTelemetryHook
from flnotify.testing import MemoryRequest, MemoryTransport, seams
from flnotify.transports import HttpxTransport
from helpers.servers import FaultServer

TRAINING = uuid.UUID("5b1d0000-0000-4000-8000-000000000001")


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def hook(self, **kwargs: Any) -> OpenTelemetryHook:
        return OpenTelemetryHook(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.close()


def handler(request: MemoryRequest) -> int:
    """Per path: /ok 202, /flaky 503 the first time, /no 400, /down a refused connection."""
    if request.url.endswith("/down"):
        raise flnotify.errors.ConnectError("connection refused", url=request.url)
    if "/flaky" in request.url:
        handler.flaky += 1  # type: ignore[attr-defined]
        return 503 if handler.flaky == 1 else 202  # type: ignore[attr-defined]
    return 400 if request.url.endswith("/no") else 202


def _notification(*urls: str) -> flnotify.TrainingStartNotification:
    return flnotify.TrainingStartNotification(
        receivers=[Receiver(uuid.uuid4(), url) for url in urls],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=TRAINING,
    )


async def _no_sleep(_: float) -> None:
    return None


def _send(hook: OpenTelemetryHook, transport: Any, *urls: str, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "retry": RetryPolicy(max_attempts=2, jitter=0.0),
        **kwargs,
    }
    with seams(sleep=_no_sleep):
        notifier = flnotify.Notifier(transport=transport, hooks=[hook], **options)
    with notifier:
        return notifier.send(_notification(*urls))


URLS = (
    "http://ok.example/hook?token=s3cret",
    "http://flaky.example:8080/flaky",
    "https://no.example/no",
    "http://down.example/down",
)


def test_a_span_per_send_and_a_child_span_per_attempt(telemetry: Telemetry) -> None:
    handler.flaky = 0  # type: ignore[attr-defined]
    report = _send(telemetry.hook(), MemoryTransport(handler), *URLS)
    outcomes = [d.outcome for d in report]
    assert outcomes == [Outcome.DELIVERED, Outcome.DELIVERED, Outcome.REJECTED, Outcome.FAILED]

    spans = telemetry.spans()
    (send,) = [s for s in spans if s.kind is SpanKind.INTERNAL]
    attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert send.name == "send TRAINING_START"
    assert send.attributes is not None
    assert send.attributes["flnotify.training_id"] == str(TRAINING)
    assert send.attributes["flnotify.receivers"] == 4
    assert (send.attributes["flnotify.delivered"], send.attributes["flnotify.failed"]) == (2, 1)
    assert send.status.status_code is StatusCode.ERROR  # one receiver failed
    # 1 + 2 (a 503, then 202) + 1 + 2 (refused twice)
    assert len(attempts) == 6
    assert send.context is not None
    for span in attempts:
        assert span.name == "POST"
        assert span.parent is not None
        assert span.parent.span_id == send.context.span_id
        assert span.context is not None
        assert span.context.trace_id == send.context.trace_id

    def attempt(url: str, n: int) -> dict[str, Any]:
        (span,) = [
            s
            for s in attempts
            if s.attributes is not None
            and str(s.attributes["url.full"]).startswith(url.split("?")[0])
            and s.attributes.get("http.request.resend_count", 0) == n - 1
        ]
        assert span.attributes is not None
        return dict(span.attributes)

    ok = attempt(URLS[0], 1)
    assert ok["url.full"] == "http://ok.example/hook?token=REDACTED"  # no secret in traces
    assert ok["http.request.method"] == "POST"
    assert (ok["server.address"], ok["server.port"]) == ("ok.example", 80)
    assert ok["http.response.status_code"] == 202
    assert "error.type" not in ok
    assert ok["flnotify.notification_type"] == "TRAINING_START"
    assert ok["flnotify.training_id"] == str(TRAINING)
    assert ok["flnotify.message_id"] == report.deliveries[0].message_id
    first, second = attempt(URLS[1], 1), attempt(URLS[1], 2)
    assert (first["http.response.status_code"], first["error.type"]) == (503, "503")
    assert "flnotify.retry_in" in first
    assert second["http.request.resend_count"] == 1
    assert second["http.response.status_code"] == 202
    assert first["server.port"] == 8080
    assert attempt(URLS[2], 1)["error.type"] == "400"
    down = attempt(URLS[3], 2)
    assert down["error.type"] == "flnotify.errors.ConnectError"
    assert "http.response.status_code" not in down


def test_metrics_by_outcome_attempts_and_durations(telemetry: Telemetry) -> None:
    handler.flaky = 0  # type: ignore[attr-defined]
    _send(telemetry.hook(), MemoryTransport(handler), *URLS)
    by_outcome: dict[str, int] = {}
    for point in telemetry.points("flnotify.deliveries"):
        outcome = point.attributes["flnotify.outcome"]
        by_outcome[outcome] = by_outcome.get(outcome, 0) + point.value
    assert by_outcome == {"delivered": 2, "rejected": 1, "failed": 1}
    failed = [
        p
        for p in telemetry.points("flnotify.deliveries")
        if p.attributes["flnotify.outcome"] == "failed"
    ]
    assert failed[0].attributes["server.address"] == "down.example"  # failure rate per client
    assert failed[0].attributes["error.type"] == "flnotify.errors.ConnectError"
    assert sum(p.value for p in telemetry.points("flnotify.attempts")) == 6
    assert sum(p.count for p in telemetry.points("http.client.request.duration")) == 6
    assert sum(p.count for p in telemetry.points("flnotify.delivery.duration")) == 4
    for point in telemetry.points("http.client.request.duration"):
        assert "flnotify.training_id" not in point.attributes  # no unbounded metric labels


def test_trace_context_is_propagated_in_the_headers(telemetry: Telemetry) -> None:
    transport = MemoryTransport()
    _send(telemetry.hook(propagate=True), transport, "http://ok.example/hook")
    (request,) = transport.requests
    (span,) = [s for s in telemetry.spans() if s.kind is SpanKind.CLIENT]
    assert span.context is not None
    version, trace_id, span_id, _flags = request.headers["traceparent"].split("-")
    assert (version, int(trace_id, 16), int(span_id, 16)) == (
        "00",
        span.context.trace_id,
        span.context.span_id,
    )


def test_no_propagation_by_default(telemetry: Telemetry) -> None:
    transport = MemoryTransport()
    _send(telemetry.hook(), transport, "http://ok.example/hook")
    (request,) = transport.requests
    assert "traceparent" not in request.headers


class Greedy(TraceContextTextMapPropagator):
    """Also tries to overwrite the core's headers: it must not succeed."""

    def inject(
        self, carrier: CarrierT, context: Any = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        super().inject(carrier, context, setter)
        setter.set(carrier, "webhook-id", "msg_forged")
        setter.set(carrier, "Content-Type", "text/plain")


def test_extra_headers_never_replace_the_cores(telemetry: Telemetry) -> None:
    transport = MemoryTransport()
    report = _send(
        telemetry.hook(propagate=True, propagator=Greedy()), transport, "http://a.example/"
    )
    (request,) = transport.requests
    assert request.headers["webhook-id"] == report.deliveries[0].message_id
    assert request.headers["content-type"] == "application/json"
    assert "traceparent" in request.headers


def test_the_trace_context_reaches_the_client_over_the_wire(telemetry: Telemetry) -> None:
    with FaultServer() as server:
        report = _send(telemetry.hook(propagate=True), HttpxTransport(), server.url("/status/202"))
        assert report.deliveries[0].outcome is Outcome.DELIVERED
        (request,) = server.requests
    (span,) = [s for s in telemetry.spans() if s.kind is SpanKind.CLIENT]
    assert span.context is not None
    assert request.headers["traceparent"].split("-")[2] == format(span.context.span_id, "016x")


def test_a_failing_header_hook_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(flnotify.hooks.NullHook):
        def attempt_headers(self, details: flnotify.hooks.AttemptStarted, /) -> dict[str, str]:
            raise RuntimeError("broken")

    transport = MemoryTransport()
    with caplog.at_level(logging.ERROR, logger="flnotify"):
        report = _send(Broken(), transport, "http://a.example/")  # type: ignore[arg-type]
    assert report.deliveries[0].outcome is Outcome.DELIVERED
    assert "Broken.attempt_headers raised" in caplog.text


def test_attempts_cut_short_by_the_deadline_end_their_spans(telemetry: Telemetry) -> None:
    async def hang(_: MemoryRequest) -> int:
        await asyncio.Event().wait()
        return 200

    report = _send(telemetry.hook(), MemoryTransport(hang), "http://a.example/", deadline=0.05)
    assert report.deliveries[0].outcome is Outcome.FAILED
    (span,) = [s for s in telemetry.spans() if s.kind is SpanKind.CLIENT]
    assert span.attributes is not None
    # the engine ends the attempt with the deadline's error, before the send ends
    assert span.attributes["error.type"] == "flnotify.errors.TransportError"
    assert len(telemetry.spans()) == 2  # and the send's


def test_two_concurrent_sends_of_one_notification_have_a_span_each(telemetry: Telemetry) -> None:
    """The same notification object sent twice at once: each send span gets its own attempts."""
    arrived = 0
    all_in = asyncio.Event()
    retried = 0

    async def both_in_flight(request: MemoryRequest) -> int:
        nonlocal arrived, retried
        arrived += 1
        if arrived == 4:  # both sends' first attempts to both receivers are in flight
            all_in.set()
        await all_in.wait()
        if request.url.endswith("/retry"):
            retried += 1
            return 503 if retried <= 2 else 202
        return 202

    notification = _notification("http://a.example/ok", "http://b.example/retry")

    async def main() -> tuple[Any, Any]:
        with seams(sleep=_no_sleep):
            notifier = flnotify.Notifier(
                transport=MemoryTransport(both_in_flight),
                hooks=[telemetry.hook()],
                retry=RetryPolicy(max_attempts=2, jitter=0.0),
                deadline=10.0,  # a regression fails instead of hanging
            )
        try:
            first, second = await asyncio.gather(
                notifier.asend(notification), notifier.asend(notification)
            )
        finally:
            await notifier.aclose()
        return first, second

    reports = asyncio.run(main())
    assert all(r.ok for r in reports)
    spans = telemetry.spans()
    sends = [s for s in spans if s.kind is SpanKind.INTERNAL]
    attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(sends) == 2
    assert len(attempts) == 6  # per send: a.example once, b.example twice
    for send in sends:
        assert send.context is not None
        children = [a for a in attempts if a.parent and a.parent.span_id == send.context.span_id]
        assert sorted(
            (str(a.attributes["server.address"]), a.attributes.get("http.request.resend_count", 0))
            for a in children
            if a.attributes is not None
        ) == [("a.example", 0), ("b.example", 0), ("b.example", 1)]
        assert send.attributes is not None
        assert send.attributes["flnotify.delivered"] == 2
    send_ids = sorted(str(s.attributes and s.attributes["flnotify.send_id"]) for s in sends)
    assert send_ids == sorted(r.send_id for r in reports)
    assert send_ids[0] != send_ids[1]


def test_parts_of_one_send_in_one_process_keep_their_own_attempts(telemetry: Telemetry) -> None:
    """Two parts of one send (outbox batches, Celery chunks) share its id, not its receivers."""
    hook = telemetry.hook()
    notification = _notification("http://a.example/", "http://b.example/")
    a, b = notification.receivers
    parts = [flnotify.hooks.SendStarted(notification, "send-1", (r,)) for r in (a, b)]
    for part in parts:
        hook.on_send_started(part)
    for receiver in (b, a):
        started = flnotify.hooks.AttemptStarted(
            notification, receiver, f"msg_{receiver.id}", 1, receiver.message_endpoint, "send-1"
        )
        hook.on_attempt_started(started)
        hook.on_attempt_ended(flnotify.hooks.AttemptEnded(started, 0.01, 202))
    for receiver in (a, b):
        delivery = flnotify.Delivery(
            notification=notification,
            receiver=receiver,
            outcome=Outcome.DELIVERED,
            message_id=f"msg_{receiver.id}",
            attempts=1,
            elapsed=0.01,
            status_code=202,
            send_id="send-1",
        )
        hook.on_send_ended(
            flnotify.DeliveryReport(notification, (delivery,), 0.01, send_id="send-1")
        )
    spans = telemetry.spans()
    sends = [s for s in spans if s.kind is SpanKind.INTERNAL]  # in the order they ended: a, b
    assert len(sends) == 2
    for send, receiver in zip(sends, (a, b), strict=True):
        assert send.context is not None
        (child,) = [
            s for s in spans if s.parent is not None and s.parent.span_id == send.context.span_id
        ]
        assert child.attributes is not None
        assert child.attributes["flnotify.receiver_id"] == str(receiver.id)
        assert send.attributes is not None
        assert send.attributes["flnotify.delivered"] == 1
