"""``flnotify send``: one notification to the given URLs, with progress and a report."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import uuid
from typing import Any
from uuid import UUID

from .. import (
    ClientRemovedBody,
    ClientRemovedNotification,
    Delivery,
    DeliveryReport,
    EndpointPolicy,
    GlobalModelBody,
    NotificationType,
    Notifier,
    Receiver,
    RetryPolicy,
    RoundBody,
    Signer,
    Timeouts,
    TrainingFinishedNotification,
    TrainingModelTestNotification,
    TrainingNotification,
    TrainingRoundStartNotification,
    TrainingStartNotification,
    TrainingSWAGRoundStartNotification,
)
from ..codec import Codec
from ..errors import EndpointError, FlnotifyError, TransportError
from ..mailbox import MAILBOX_ENDPOINT, MailboxStore, open_mailbox
from ..transports import HttpxTransport
from ._args import check_secret
from ._output import (
    SendProgress,
    Style,
    delivery_detail,
    emit,
    isatty,
    outcome_word,
    report_summary,
    seconds,
    table,
    terminal_width,
)

__all__ = ["OPTIONS", "build_notification", "run_send"]

_ROUND_TYPES = {
    NotificationType.UPDATE_ROUND_START: TrainingRoundStartNotification,
    NotificationType.SWAG_ROUND_START: TrainingSWAGRoundStartNotification,
    NotificationType.MODEL_TEST_ROUND: TrainingModelTestNotification,
}
_MODEL_TYPES = {
    NotificationType.TRAINING_START: TrainingStartNotification,
    NotificationType.TRAINING_FINISHED: TrainingFinishedNotification,
}
_REMOVED = {NotificationType.CLIENT_REMOVED}
_ROUNDS = set(_ROUND_TYPES)
_MODELS = _ROUNDS | set(_MODEL_TYPES)

OPTIONS: dict[str, tuple[set[NotificationType], set[NotificationType]]] = {
    # option: (the types that need it, the types it applies to); checked alike for all
    "round": (_ROUNDS, _ROUNDS),
    "model_uuid": (_MODELS, _MODELS),
    "client_uuid": (_REMOVED, _REMOVED),
    "reason": (set(), _REMOVED),
}
"""Which body options each notification type needs and accepts."""


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _names(kinds: set[NotificationType]) -> str:
    return ", ".join(kind.value for kind in NotificationType if kind in kinds)


def check_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse a missing option the type needs, and an option the type has no use for."""
    kind: NotificationType = args.type
    for option, (needed_by, _) in OPTIONS.items():
        if kind in needed_by and getattr(args, option) is None:
            parser.error(f"{kind.value} needs {_flag(option)}")
    for option, (_, applies_to) in OPTIONS.items():
        if kind not in applies_to and getattr(args, option) is not None:
            parser.error(
                f"{_flag(option)} does not apply to {kind.value} (only to {_names(applies_to)})"
            )


def build_notification(
    args: argparse.Namespace, receivers: list[Receiver], training: UUID
) -> TrainingNotification[Any]:
    """The notification the (checked) arguments describe."""
    kind: NotificationType = args.type
    if kind is NotificationType.CLIENT_REMOVED:
        return ClientRemovedNotification(
            receivers=receivers,
            body=ClientRemovedBody(client_uuid=args.client_uuid, reason=args.reason or ""),
            training_uuid=training,
        )
    if kind in _ROUND_TYPES:
        return _ROUND_TYPES[kind](
            receivers=receivers,
            body=RoundBody(round=args.round, global_model_uuid=args.model_uuid),
            training_uuid=training,
        )
    return _MODEL_TYPES[kind](
        receivers=receivers,
        body=GlobalModelBody(global_model_uuid=args.model_uuid),
        training_uuid=training,
    )


def _receivers(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Receiver]:
    urls: list[str] = args.urls
    policy = EndpointPolicy()
    for url in urls:
        if url == MAILBOX_ENDPOINT:
            continue
        try:
            policy.check_url(url)
        except EndpointError as exc:
            parser.error(f"bad receiver URL {url!r}: {exc.reason}")
    ids: list[UUID] | None = args.receiver_id
    if ids is not None and len(ids) != len(urls):
        parser.error(f"{len(ids)} --receiver-id for {len(urls)} URL(s); give one per URL")
    polling = MAILBOX_ENDPOINT in urls
    if polling and args.mailbox is None:
        parser.error(
            f"{MAILBOX_ENDPOINT} receivers poll a mailbox: give --mailbox PATH (the store "
            "flnotify mailbox serve serves)"
        )
    if polling and ids is None:
        parser.error(
            f"{MAILBOX_ENDPOINT} receivers need --receiver-id: the client id whose mailbox it polls"
        )
    if not polling and args.mailbox is not None:
        parser.error(f"--mailbox goes with {MAILBOX_ENDPOINT} receivers (none given)")
    if args.mailbox is None and args.ack_deadline is not None:
        parser.error("--ack-deadline goes with --mailbox")
    return [
        Receiver(ids[i] if ids is not None else uuid.uuid4(), url) for i, url in enumerate(urls)
    ]


def run_send(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check the arguments, send, show progress on a terminal, print the report."""
    check_options(args, parser)
    receivers = _receivers(args, parser)
    check_secret(parser, args.secret)
    generated = args.training_uuid is None
    training: UUID = uuid.uuid4() if generated else args.training_uuid
    notification = build_notification(args, receivers, training)
    signed = args.secret is not None
    live = not (args.json or args.quiet) and isatty(sys.stderr)
    progress = SendProgress(sys.stderr, "sending", len(receivers)) if live else None
    with contextlib.ExitStack() as stack:
        mailbox: MailboxStore | None = None
        if args.mailbox is not None:
            try:
                deadline = {} if args.ack_deadline is None else {"ack_deadline": args.ack_deadline}
                mailbox = open_mailbox(args.mailbox, **deadline)
                stack.enter_context(mailbox)
            except FlnotifyError as exc:
                emit(f"flnotify send: cannot open the mailbox {args.mailbox!r}: {exc}", sys.stderr)
                return 1
        notifier = Notifier(
            transport=HttpxTransport(timeouts=Timeouts.all(args.timeout)),
            retry=RetryPolicy(max_attempts=args.attempts),
            signer=Signer(args.secret) if signed else None,
            policy=EndpointPolicy(),
            hooks=() if progress is None else [progress],
            mailbox=mailbox,
        )
        if not (args.json or args.quiet):
            emit(_header(notification, signed=signed, generated=generated), sys.stdout)
        with notifier, progress if progress is not None else contextlib.nullcontext():
            report = notifier.send(notification)  # progress, if any, is the Notifier's hook
    out = sys.stdout
    style = Style(out)
    if args.json:
        document = report_dict(report, signed=signed, generated=generated)
        emit(json.dumps(document, indent=2), out)
    elif args.quiet:
        emit(f"{report_summary(report)}; training {training}", out)
    else:
        short = ["receiver", "endpoint", "outcome", "status", "tries", "time", "detail"]
        emit(table(_rows(report, style), style, width=terminal_width(out), short=short), out)
        emit(report_summary(report), out)
    return 0 if report.ok else 1


def _header(notification: TrainingNotification[Any], *, signed: bool, generated: bool) -> str:
    body = json.dumps(Codec().to_dict(notification)["body"], separators=(",", ":"))
    how = "signed" if signed else "unsigned"
    polling = [r.message_endpoint == MAILBOX_ENDPOINT for r in notification.receivers]
    if any(polling):  # the mailbox app signs what a client fetches, with its own secret
        fetched = "signed at fetch with each client's secret"
        how = fetched if all(polling) else f"{how}; mailbox: {fetched}"
    new = " (new; give --training-uuid to choose)" if generated else ""
    return (
        f"{notification.notification_type.value} {body} ({how})\n"
        f"training {notification.training_uuid}{new}"
    )


def _rows(report: DeliveryReport, style: Style) -> list[list[str]]:
    rows = [["receiver", "endpoint", "outcome", "status", "attempts", "time", "detail"]]
    for d in report:
        rows.append(
            [
                str(d.receiver.id),
                d.receiver.message_endpoint,
                style.outcome(d.outcome),
                "-" if d.status_code is None else str(d.status_code),
                str(d.attempts),
                seconds(d.elapsed),
                delivery_detail(d),
            ]
        )
    return rows


def delivery_dict(delivery: Delivery) -> dict[str, Any]:
    """One receiver's line of the JSON report."""
    error = delivery.error
    return {
        "receiver_id": str(delivery.receiver.id),
        "endpoint": delivery.receiver.message_endpoint,
        "outcome": delivery.outcome.value,
        "status_code": delivery.status_code,
        "attempts": delivery.attempts,
        "elapsed": round(delivery.elapsed, 4),
        "message_id": delivery.message_id,
        "error": None if error is None else str(error),
        "error_kind": error.kind.value if isinstance(error, TransportError) else None,
    }


def report_dict(report: DeliveryReport, *, signed: bool, generated: bool) -> dict[str, Any]:
    """The JSON report: the wire document, how it went, and every receiver's delivery."""
    counts = report.counts()
    return {
        **Codec().to_dict(report.notification),
        "training_uuid_generated": generated,
        "signed": signed,
        "ok": report.ok,
        "counts": {outcome_word(outcome): count for outcome, count in counts.items()},
        "summary": report_summary(report),
        "elapsed": round(report.elapsed, 4),
        "deliveries": [delivery_dict(d) for d in report],
    }
