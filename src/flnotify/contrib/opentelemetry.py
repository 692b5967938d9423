"""OpenTelemetry traces and metrics of deliveries, as a delivery hook (extra ``otel``).

``pip install 'flnotify[otel]'``, then pass the hook to any driver::

    from flnotify.contrib.opentelemetry import OpenTelemetryHook

    notifier = Notifier(hooks=[OpenTelemetryHook()])

Every driver (the [`Notifier`][flnotify.Notifier], Celery workers, the outbox dispatcher)
calls it from the one delivery core, so none has tracing code of its own. What it records:

* a span per send (``send <notification type>``, kind ``INTERNAL``, with
  ``flnotify.send_id``: two sends of one notification object have a span each) and a child
  span per attempt (``POST``, kind ``CLIENT``) with the attributes of OpenTelemetry's HTTP client
  semantic conventions (``http.request.method``, ``url.full`` without credentials or query
  values, ``server.address``, ``server.port``, ``http.response.status_code``,
  ``error.type``, ``http.request.resend_count``) and flnotify's own
  (``flnotify.notification_type``, ``flnotify.training_id``, ``flnotify.message_id``,
  ``flnotify.receiver_id``);
* counters ``flnotify.deliveries`` (by ``flnotify.outcome``) and ``flnotify.attempts``,
  and histograms ``http.client.request.duration`` (each attempt) and
  ``flnotify.delivery.duration`` (first attempt to outcome), in seconds.

With ``propagate=True`` each attempt carries the trace context in its headers
(``traceparent``, W3C Trace Context by default), so a client's spans join the server's trace.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit
from uuid import UUID

from opentelemetry import metrics, propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode

from .._hooks import AttemptEnded, AttemptStarted, NullHook, SendStarted
from .._notification import Notification
from .._report import Delivery, DeliveryReport
from .._types import Outcome, ReceiverLike
from .._version import __version__

__all__ = ["OpenTelemetryHook"]

_SCOPE = "flnotify"
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
"""The HTTP semantic conventions' advice for ``http.client.request.duration``."""
_DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=16_384)
def _target(url: str) -> tuple[str, str, int]:
    """``(url.full, server.address, server.port)``: credentials and query values redacted."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        return "", "", 0
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED:REDACTED@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = "&".join(
            f"{pair.partition('=')[0]}=REDACTED" if "=" in pair else pair
            for pair in query.split("&")
        )
    full = SplitResult(parts.scheme, netloc, parts.path, query, "").geturl()
    return full, host, port


def _error_type(error: BaseException) -> str:
    """``error.type``: the class's public, fully qualified name."""
    cls = type(error)
    module = "flnotify.errors" if cls.__module__.startswith("flnotify") else cls.__module__
    return f"{module}.{cls.__qualname__}"


def _notification_attributes(notification: Notification[Any]) -> dict[str, str]:
    attributes = {"flnotify.notification_type": notification.notification_type.value}
    training = getattr(notification, "training_uuid", None)
    if training is not None:
        attributes["flnotify.training_id"] = str(training)
    return attributes


class _Send:
    """The span of one send and the spans of its attempts in flight."""

    __slots__ = ("_ids", "attempts", "context", "receivers", "span")

    def __init__(self, span: trace.Span, receivers: tuple[ReceiverLike, ...]) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.attempts: dict[tuple[str, int], trace.Span] = {}
        self.receivers = receivers
        self._ids: frozenset[UUID] | None = None

    def has(self, receiver: ReceiverLike) -> bool:
        """Whether ``receiver`` is one of this run's (built once, when parts must be told apart)."""
        if self._ids is None:
            self._ids = frozenset(r.id for r in self.receivers)
        return receiver.id in self._ids


class OpenTelemetryHook(NullHook):
    """Traces and measures deliveries; see the module docstring for what it records.

    Args:
        tracer_provider: Where spans go; the global provider by default.
        meter_provider: Where metrics go; the global provider by default.
        propagate: Put the trace context of each attempt in its request headers.
        propagator: How to write it; the global propagator (W3C Trace Context and
            baggage unless configured otherwise) by default.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        propagate: bool = False,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider)
        self._deliveries = meter.create_counter(
            "flnotify.deliveries",
            unit="{delivery}",
            description="Receivers that reached an outcome, by outcome.",
        )
        self._attempts = meter.create_counter(
            "flnotify.attempts", unit="{attempt}", description="POSTs made to receivers."
        )
        self._attempt_duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of each attempt (one POST to a receiver).",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._delivery_duration = meter.create_histogram(
            "flnotify.delivery.duration",
            unit="s",
            description="Time from a receiver's first attempt to its outcome, backoff included.",
            explicit_bucket_boundaries_advisory=_DELIVERY_BUCKETS,
        )
        self._propagate = propagate
        self._propagator = propagator
        self._sends: dict[str, list[_Send]] = {}
        """The sends in progress by send id: parts of one send (outbox batches, Celery chunks)
        share an id and have disjoint receivers."""

    # -- sends --------------------------------------------------------------------------

    def on_send_started(self, details: SendStarted, /) -> None:
        """Start the send's span."""
        notification = details.notification
        attributes: dict[str, str | int] = {
            **_notification_attributes(notification),
            "flnotify.receivers": len(details.receivers),
            "flnotify.send_id": details.send_id,
        }
        span = self._tracer.start_span(
            f"send {notification.notification_type.value}",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )
        self._sends.setdefault(details.send_id, []).append(_Send(span, details.receivers))

    def on_send_ended(self, report: DeliveryReport, /) -> None:
        """End the send's span (and those of attempts a deadline cut short)."""
        sends = self._sends.get(report.send_id)
        if not sends:
            return
        send = sends[0]
        if len(sends) > 1 and report.deliveries:  # parts of one send: the one with these
            send = next((s for s in sends if s.has(report.deliveries[0].receiver)), send)
        sends.remove(send)
        if not sends:
            del self._sends[report.send_id]
        for span in send.attempts.values():  # cancelled in flight: no answer, no error
            span.set_attribute("error.type", "cancelled")
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
            span.end()
        counts = dict.fromkeys(Outcome, 0)
        for delivery in report.deliveries:
            counts[delivery.outcome] += 1
        span = send.span
        for outcome, count in counts.items():
            span.set_attribute(f"flnotify.{outcome.value}", count)
        if counts[Outcome.FAILED]:
            span.set_status(Status(StatusCode.ERROR, f"{counts[Outcome.FAILED]} failed"))
        span.end()

    # -- attempts -------------------------------------------------------------------------

    def _send_of(self, details: AttemptStarted) -> _Send | None:
        """The send the attempt belongs to: by its send id, then by its receiver."""
        sends = self._sends.get(details.send_id)
        if not sends:
            return None
        if len(sends) == 1:
            return sends[0]
        return next((s for s in sends if s.has(details.receiver)), None)

    def on_attempt_started(self, details: AttemptStarted, /) -> None:
        """Start the attempt's span, a child of the send's."""
        full, host, port = _target(details.url)
        attributes: dict[str, str | int] = {
            "http.request.method": "POST",
            "url.full": full,
            "server.address": host,
            "server.port": port,
            **_notification_attributes(details.notification),
            "flnotify.message_id": details.message_id,
            "flnotify.receiver_id": str(details.receiver.id),
        }
        if details.attempt > 1:
            attributes["http.request.resend_count"] = details.attempt - 1
        send = self._send_of(details)
        span = self._tracer.start_span(
            "POST",
            context=None if send is None else send.context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        if send is not None:
            send.attempts[(details.message_id, details.attempt)] = span
        else:  # no send span to hang it on (a driver without send hooks): end it now
            span.end()

    def attempt_headers(self, details: AttemptStarted, /) -> Mapping[str, str] | None:
        """The trace context of the attempt's span, for its request headers (if propagating)."""
        if not self._propagate:
            return None
        send = self._send_of(details)
        span = None if send is None else send.attempts.get((details.message_id, details.attempt))
        if span is None:
            return None
        carrier: dict[str, str] = {}
        propagator = self._propagator or propagate.get_global_textmap()
        propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def on_attempt_ended(self, details: AttemptEnded, /) -> None:
        """End the attempt's span; count it and record its duration."""
        started = details.started
        _, host, port = _target(started.url)
        attributes: dict[str, str | int] = {
            "http.request.method": "POST",
            "server.address": host,
            "server.port": port,
            "flnotify.notification_type": started.notification.notification_type.value,
        }
        status = details.status_code
        error_type: str | None = None
        if status is not None:
            attributes["http.response.status_code"] = status
            if status >= 400:
                error_type = str(status)
        if details.error is not None:
            error_type = _error_type(details.error)
        if error_type is not None:
            attributes["error.type"] = error_type
        self._attempts.add(1, attributes)
        self._attempt_duration.record(details.duration, attributes)

        send = self._send_of(started)
        span = None if send is None else send.attempts.pop((started.message_id, started.attempt))
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if details.retry_in is not None:
            span.set_attribute("flnotify.retry_in", details.retry_in)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            description = str(details.error) if details.error is not None else None
            span.set_status(Status(StatusCode.ERROR, description))
        span.end()

    # -- outcomes -------------------------------------------------------------------------

    def on_outcome(self, delivery: Delivery, /) -> None:
        """Count the receiver's outcome and record how long it took."""
        _, host, _ = _target(delivery.receiver.message_endpoint)
        attributes: dict[str, str | int] = {
            "flnotify.outcome": delivery.outcome.value,
            "flnotify.notification_type": delivery.notification.notification_type.value,
            "server.address": host,
        }
        if delivery.error is not None:
            attributes["error.type"] = _error_type(delivery.error)
        elif delivery.outcome is not Outcome.DELIVERED and delivery.status_code is not None:
            attributes["error.type"] = str(delivery.status_code)
        self._deliveries.add(1, attributes)
        if delivery.attempts:
            self._delivery_duration.record(delivery.elapsed, attributes)
