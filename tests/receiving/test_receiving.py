"""The client side: the router's answer table, dedup, and the ASGI/WSGI adapters on real servers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

import flnotify
import flnotify.codec
from flnotify import (
    GlobalModelBody,
    Notification,
    NotificationType,
    RoundBody,
    TrainingRoundStartNotification,
    TrainingStartNotification,
    generate_secret,
)
from flnotify.errors import ConfigurationError, IdStoreError
from flnotify.receiving import (
    AsyncIdStore,
    IdClaim,
    IdStore,
    InMemoryIdStore,
    MessageContext,
    NotificationRouter,
    Reply,
    Response,
    asgi_app,
)
from flnotify.signing import sign_payload
from helpers.receivers import ALL_TYPES, SERVERS, Recorder

NOW = 1_700_000_000
SECRET = generate_secret()
OLD_SECRET = generate_secret()
TRAINING = UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01")
MODEL = UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")
CLIENT = UUID("c1e2a3b4-d5f6-4789-abcd-ef0123456789")

ROUND = TrainingRoundStartNotification(
    receivers=(), body=RoundBody(round=3, global_model_uuid=MODEL), training_uuid=TRAINING
)


def signed_request(
    notification: Notification[Any] | bytes = ROUND,
    secret: str | Sequence[str] = SECRET,
    *,
    msg_id: str | None = None,
    ts: int | None = NOW,
) -> tuple[dict[str, str], bytes]:
    body = notification if isinstance(notification, bytes) else flnotify.codec.encode(notification)
    headers = sign_payload(body, secret, msg_id=msg_id, timestamp=ts)
    headers["content-type"] = "application/json"
    return headers, body


def make_router(handler: Callable[..., Any] | None = None, **kwargs: Any) -> NotificationRouter:
    kwargs.setdefault("secrets", SECRET)
    kwargs.setdefault("clock", lambda: float(NOW))
    router = NotificationRouter(**kwargs)
    if handler is not None:
        for kind in NotificationType:
            router.add_handler(kind, handler)
    return router


def post(router: NotificationRouter, headers: Mapping[str, str], body: bytes) -> Response:
    return router.handle("POST", headers, body)


# ---------------------------------------------------------------- success and default statuses


@pytest.mark.parametrize(("notification", "status"), ALL_TYPES)
def test_default_status_per_type(notification: Notification[Any], status: int) -> None:
    handler = Recorder()
    response = post(make_router(handler), *signed_request(notification))
    assert response.status == status
    assert handler.calls == [notification]
    assert response.header("content-length") == "0"


def test_handler_receives_typed_notification_and_context() -> None:
    got: list[tuple[Notification[Any], MessageContext]] = []
    router = make_router()

    @router.on(TrainingRoundStartNotification)
    def on_round(notification: TrainingRoundStartNotification, context: MessageContext) -> None:
        got.append((notification, context))

    headers, body = signed_request(msg_id="msg_ctx")
    assert post(router, headers, body).status == 202
    [(notification, context)] = got
    assert isinstance(notification, TrainingRoundStartNotification)
    assert notification.body.round == 3
    assert (context.id, context.timestamp, context.verified) == ("msg_ctx", NOW, True)
    assert context.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("result", "status", "body", "content_type"),
    [
        (204, 204, b"", None),
        (500, 500, b"", None),
        (Reply(201), 201, b"", None),
        (Reply(200, {"accepted": True}), 200, b'{"accepted":true}', "application/json"),
        (Reply(409, "busy"), 409, b"busy", "text/plain; charset=utf-8"),
        (Reply(200, b"\x00raw", "application/x-raw"), 200, b"\x00raw", "application/x-raw"),
    ],
)
def test_handler_chooses_status_and_body(
    result: Any, status: int, body: bytes, content_type: str | None
) -> None:
    response = post(make_router(Recorder(result)), *signed_request())
    assert (response.status, response.body) == (status, body)
    assert response.header("content-type") == content_type
    assert response.header("content-length") == str(len(body))


def test_registered_default_status() -> None:
    router = make_router()
    router.add_handler(NotificationType.UPDATE_ROUND_START, Recorder(), status=200)
    assert post(router, *signed_request()).status == 200


@pytest.mark.parametrize("bad", ["ok", 99, 600, True, 3.0, object(), Reply(200, {"x": object()})])
def test_handler_returning_nonsense_is_a_logged_500(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    response = post(make_router(Recorder(bad)), *signed_request())
    assert response.status == 500
    assert response.json()["error"] == "handler_error"
    assert any(r.exc_info and isinstance(r.exc_info[1], TypeError) for r in caplog.records)


def test_reply_validates_its_status() -> None:
    with pytest.raises(ValueError, match="200 to 599"):
        Reply(100)


# ---------------------------------------------------------------- sync and async, both cores


async def async_recorder(
    calls: list[Notification[Any]], result: Any = None
) -> Callable[[Notification[Any]], Any]:
    async def handler(notification: Notification[Any]) -> Any:
        await asyncio.sleep(0)
        calls.append(notification)
        return result

    return handler


def test_sync_handler_sync_core() -> None:
    handler = Recorder()
    assert post(make_router(handler), *signed_request()).status == 202
    assert len(handler.calls) == 1


def test_async_handler_sync_core() -> None:
    calls: list[Notification[Any]] = []
    handler = asyncio.run(async_recorder(calls, 201))
    assert post(make_router(handler), *signed_request()).status == 201
    assert calls == [ROUND]


def test_sync_handler_async_core_runs_in_a_thread() -> None:
    threads: list[int] = []

    def handler(notification: Notification[Any]) -> None:
        threads.append(threading.get_ident())

    async def main() -> tuple[Response, Response]:
        first = await make_router(handler).ahandle("POST", *signed_request())
        direct = make_router(handler, sync_handlers_in_thread=False)
        second = await direct.ahandle("POST", *signed_request())
        return first, second

    first, second = asyncio.run(main())
    assert (first.status, second.status) == (202, 202)
    assert threads[0] != threading.get_ident()
    assert threads[1] == threading.get_ident()


def test_async_handler_async_core() -> None:
    calls: list[Notification[Any]] = []

    async def main() -> Response:
        router = make_router(await async_recorder(calls, Reply(200, {"ok": 1})))
        return await router.ahandle("POST", *signed_request())

    response = asyncio.run(main())
    assert (response.status, response.json()) == (200, {"ok": 1})
    assert calls == [ROUND]


def test_async_handler_in_sync_core_inside_a_loop_is_a_500_not_a_hang(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(notification: Notification[Any]) -> None:
        raise AssertionError  # never awaited

    async def main() -> Response:
        return make_router(handler).handle("POST", *signed_request())

    assert asyncio.run(main()).status == 500
    assert any("ahandle" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_callable_object_with_async_call() -> None:
    class Handler:
        def __init__(self) -> None:
            self.calls = 0

        async def __call__(self, notification: Notification[Any]) -> int:
            self.calls += 1
            return 200

    handler = Handler()
    assert asyncio.run(make_router(handler).ahandle("POST", *signed_request())).status == 200
    assert handler.calls == 1


# ---------------------------------------------------------------- verification


def test_tampered_body_is_401() -> None:
    handler = Recorder()
    headers, body = signed_request()
    response = post(make_router(handler), headers, body.replace(b'"round":3', b'"round":4'))
    assert response.status == 401
    assert response.json()["error"] == "verification_failed"
    assert handler.calls == []


def test_wrong_secret_is_401_without_naming_secrets() -> None:
    response = post(make_router(Recorder()), *signed_request(secret=generate_secret()))
    assert response.status == 401
    assert SECRET.removeprefix("whsec_")[:8] not in response.body.decode()
    assert "secret" in response.json()["detail"]


def test_rotated_secrets_accept_old_and_new() -> None:
    router = make_router(Recorder(), secrets=[OLD_SECRET, SECRET])
    assert post(router, *signed_request(secret=OLD_SECRET)).status == 202
    assert post(router, *signed_request(secret=SECRET)).status == 202
    assert post(router, *signed_request(secret=[OLD_SECRET, SECRET])).status == 202
    assert post(router, *signed_request(secret=generate_secret())).status == 401


@pytest.mark.parametrize(("offset", "word"), [(-301, "too old"), (301, "future")])
def test_expired_and_future_timestamps_are_401(offset: int, word: str) -> None:
    handler = Recorder()
    response = post(make_router(handler), *signed_request(ts=NOW + offset))
    assert response.status == 401
    assert word in response.json()["detail"]
    assert handler.calls == []


def test_tolerance_is_configurable() -> None:
    router = make_router(Recorder(), tolerance=1000)
    assert post(router, *signed_request(ts=NOW - 999)).status == 202


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_401(missing: str) -> None:
    headers, body = signed_request()
    del headers[missing]
    response = post(make_router(Recorder()), headers, body)
    assert response.status == 401
    assert missing in response.json()["detail"]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-signature", "v1,***"),
        ("webhook-signature", "nonsense"),
        ("webhook-timestamp", "x"),
    ],
)
def test_malformed_headers_are_401(header: str, value: str) -> None:
    headers, body = signed_request()
    headers[header] = value
    response = post(make_router(Recorder()), headers, body)
    assert response.status == 401
    assert "malformed" in response.json()["detail"]


def test_verification_failures_are_logged_as_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flnotify"):
        post(make_router(Recorder()), *signed_request(secret=generate_secret()))
    assert [r.levelno for r in caplog.records if r.name == "flnotify"] == [logging.WARNING]


def test_unsigned_router_accepts_unsigned_requests() -> None:
    contexts: list[MessageContext] = []

    def handler(notification: Notification[Any], context: MessageContext) -> None:
        contexts.append(context)

    router = make_router(handler, secrets=None)
    assert not router.verifies
    body = flnotify.codec.encode(ROUND)
    assert post(router, {}, body).status == 202
    assert (
        post(router, {"webhook-id": "msg_u", "webhook-timestamp": "9" * 5000}, body).status == 202
    )
    assert post(router, {"webhook-timestamp": "1700000000"}, body).status == 202
    assert [(c.id, c.timestamp, c.verified) for c in contexts] == [
        (None, None, False),
        ("msg_u", None, False),
        (None, NOW, False),
    ]


def test_bad_router_configuration() -> None:
    with pytest.raises(ConfigurationError):
        NotificationRouter(secrets="whsec_!!")
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        NotificationRouter(max_body_bytes=0)
    with pytest.raises(ConfigurationError, match="unknown_type_status"):
        NotificationRouter(unknown_type_status=99)


# ---------------------------------------------------------------- deduplication


def test_replayed_id_is_200_without_running_the_handler_again() -> None:
    handler = Recorder()
    router = make_router(handler)
    headers, body = signed_request(msg_id="msg_once")
    assert post(router, headers, body).status == 202
    retry_headers, _ = signed_request(msg_id="msg_once", ts=NOW + 5)  # a retry: new timestamp
    replay = post(router, retry_headers, body)
    assert replay.status == 200
    assert "duplicate" in replay.json()["detail"]
    assert len(handler.calls) == 1
    assert post(router, *signed_request(msg_id="msg_other")).status == 202
    assert len(handler.calls) == 2


@pytest.mark.parametrize("failure", ["raise", 503, 400])
def test_failed_handling_is_not_remembered(failure: object) -> None:
    outcomes: list[object] = [failure, None]

    def handler(notification: Notification[Any]) -> Any:
        outcome = outcomes.pop(0)
        if outcome == "raise":
            raise RuntimeError
        return outcome

    router = make_router(handler)
    headers, body = signed_request(msg_id="msg_retry")
    assert post(router, headers, body).status == (500 if failure == "raise" else failure)
    assert post(router, headers, body).status == 202
    assert outcomes == []
    assert post(router, headers, body).status == 200  # now remembered


def test_duplicate_while_the_first_is_running_is_503_retry_after() -> None:
    router = make_router()
    headers, body = signed_request(msg_id="msg_busy")
    inner: list[Response] = []

    @router.on(NotificationType.UPDATE_ROUND_START)
    def handler(notification: Notification[Any]) -> None:
        inner.append(post(router, headers, body))  # the same message arrives meanwhile

    assert post(router, headers, body).status == 202
    [busy] = inner
    assert busy.status == 503
    assert busy.header("retry-after") == "1"
    assert post(router, headers, body).status == 200


def test_duplicate_while_running_async() -> None:
    router = make_router()
    headers, body = signed_request(msg_id="msg_busy_async")
    started, release = asyncio.Event(), asyncio.Event()

    @router.on(NotificationType.UPDATE_ROUND_START)
    async def handler(notification: Notification[Any]) -> None:
        started.set()
        await release.wait()

    async def main() -> list[int]:
        first = asyncio.create_task(router.ahandle("POST", headers, body))
        await started.wait()
        second = await router.ahandle("POST", headers, body)
        release.set()
        third = await first
        fourth = await router.ahandle("POST", headers, body)
        return [second.status, third.status, fourth.status]

    assert asyncio.run(main()) == [503, 202, 200]


def test_cancelled_handling_releases_the_id() -> None:
    router = make_router()
    headers, body = signed_request(msg_id="msg_cancel")
    started = asyncio.Event()
    calls: list[int] = []

    @router.on(NotificationType.UPDATE_ROUND_START)
    async def handler(notification: Notification[Any]) -> None:
        calls.append(1)
        started.set()
        if len(calls) == 1:
            await asyncio.Event().wait()  # until cancelled

    async def main() -> int:
        task = asyncio.create_task(router.ahandle("POST", headers, body))
        await started.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return (await router.ahandle("POST", headers, body)).status

    assert asyncio.run(main()) == 202
    assert len(calls) == 2


def test_unsigned_requests_are_deduplicated_by_their_id_header() -> None:
    handler = Recorder()
    router = make_router(handler, secrets=None)
    body = flnotify.codec.encode(ROUND)
    for _ in range(2):
        post(router, {"Webhook-Id": "msg_plain"}, body)
    post(router, {}, body)
    post(router, {}, body)
    assert len(handler.calls) == 3


def test_dedup_can_be_turned_off() -> None:
    handler = Recorder()
    router = make_router(handler, dedup=None)
    headers, body = signed_request(msg_id="msg_twice")
    assert [post(router, headers, body).status for _ in range(2)] == [202, 202]
    assert len(handler.calls) == 2


def test_ids_are_remembered_only_after_verification() -> None:
    handler = Recorder()
    router = make_router(handler)
    headers, body = signed_request(msg_id="msg_forged", secret=generate_secret())
    assert post(router, headers, body).status == 401
    assert post(router, *signed_request(msg_id="msg_forged")).status == 202
    assert len(handler.calls) == 1


def test_custom_id_store() -> None:
    class DictStore:
        def __init__(self) -> None:
            self.ids: dict[str, IdClaim] = {}

        def claim(self, message_id: str) -> IdClaim:
            if message_id in self.ids:
                return self.ids[message_id]
            self.ids[message_id] = IdClaim.IN_FLIGHT
            return IdClaim.CLAIMED

        def complete(self, message_id: str) -> None:
            self.ids[message_id] = IdClaim.HANDLED

        def release(self, message_id: str) -> None:
            self.ids.pop(message_id, None)

    store = DictStore()
    assert isinstance(store, IdStore)
    assert not isinstance(store, AsyncIdStore)
    handler = Recorder()
    router = make_router(handler, dedup=store)
    post(router, *signed_request(msg_id="msg_db"))
    assert store.ids == {"msg_db": IdClaim.HANDLED}
    # a sync-only store under ahandle runs in a worker thread
    headers, body = signed_request(msg_id="msg_db_async")
    assert asyncio.run(router.ahandle("POST", headers, body)).status == 202
    assert asyncio.run(router.ahandle("POST", headers, body)).status == 200
    assert len(handler.calls) == 2


def test_an_object_without_claim_is_refused_as_store() -> None:
    class Old:
        def seen(self, message_id: str) -> bool:
            return False

        def add(self, message_id: str) -> None:
            pass

    with pytest.raises(ConfigurationError, match="claim/complete/release"):
        NotificationRouter(dedup=Old())  # type: ignore[arg-type]


@pytest.mark.parametrize("failing", ["claim", "complete"])
def test_failing_id_store_is_a_retryable_503_or_logged(
    failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(InMemoryIdStore):
        def claim(self, message_id: str) -> IdClaim:
            if failing == "claim":
                raise IdStoreError("sqlite", "database is locked")
            return super().claim(message_id)

        def complete(self, message_id: str) -> None:
            raise IdStoreError("sqlite", "disk I/O error")

    handler = Recorder()
    response = post(make_router(handler, dedup=Broken()), *signed_request())
    if failing == "claim":
        assert response.status == 503  # retryable: the sender tries again later
        assert response.header("retry-after") == "1"
        assert "locked" not in response.body.decode()
        assert handler.calls == []
    else:
        assert response.status == 202  # the handler ran; failing to record it is logged
        assert "could not record message id" in caplog.text


def test_in_memory_store_claims_window_lease_and_bound() -> None:
    now = [0.0]
    store = InMemoryIdStore(max_entries=3, window_seconds=10, lease_seconds=2, clock=lambda: now[0])
    assert store.claim("a") is IdClaim.CLAIMED
    assert store.claim("a") is IdClaim.IN_FLIGHT
    store.complete("a")
    assert store.claim("a") is IdClaim.HANDLED
    now[0] = 5
    assert store.claim("b") is IdClaim.CLAIMED
    store.release("b")  # the handler failed: the retry may claim it again
    assert store.claim("b") is IdClaim.CLAIMED
    now[0] = 7.5
    assert store.claim("b") is IdClaim.CLAIMED  # the lease lapsed (a crashed worker)
    store.complete("b")
    store.release("b")  # a release never forgets a handled id
    now[0] = 10.5
    assert store.claim("a") is IdClaim.CLAIMED  # handled "a" expired
    store.complete("a")
    for name in "cde":
        assert store.claim(name) is IdClaim.CLAIMED
    assert len(store) == 3
    assert store.claim("b") is IdClaim.CLAIMED  # evicted: the oldest
    with pytest.raises(ConfigurationError):
        InMemoryIdStore(max_entries=0)
    with pytest.raises(ConfigurationError):
        InMemoryIdStore(window_seconds=-1)
    with pytest.raises(ConfigurationError):
        InMemoryIdStore(lease_seconds=0)


# ---------------------------------------------------------------- bad requests


def test_non_post_is_405() -> None:
    for method in ("GET", "PUT", "HEAD", "DELETE"):
        response = make_router(Recorder()).handle(method, {}, b"")
        assert response.status == 405
        assert response.header("Allow") == "POST"


def test_oversized_body_is_413_before_verification() -> None:
    handler = Recorder()
    router = make_router(handler, max_body_bytes=64)
    headers, body = signed_request()
    assert len(body) > 64
    response = post(router, headers, body)
    assert response.status == 413
    assert response.json()["error"] == "payload_too_large"
    assert handler.calls == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"notification_type": ', "$: invalid JSON"),
        (b"[]", "$: expected a JSON object"),
        (b'{"body": {}}', "$.notification_type: required field missing"),
        (
            b'{"notification_type":"UPDATE_ROUND_START","body":{"round":"3","global_model_uuid":"'
            + str(MODEL).encode()
            + b'"},"training_uuid":"'
            + str(TRAINING).encode()
            + b'"}',
            "$.body.round",
        ),
        (b'{"notification_type":"TRAINING_START","body":{}}', "$.body.global_model_uuid"),
    ],
)
def test_undecodable_body_is_400_naming_the_problem(body: bytes, detail: str) -> None:
    handler = Recorder()
    response = post(make_router(handler), *signed_request(body))
    assert response.status == 400
    assert response.json()["error"] == "invalid_notification"
    assert response.json()["detail"].startswith(detail)
    assert handler.calls == []


UNKNOWN = b'{"notification_type":"SOMETHING_NEW","body":{},"training_uuid":"x"}'


def test_unknown_type_is_400_by_default() -> None:
    response = post(make_router(Recorder()), *signed_request(UNKNOWN))
    assert response.status == 400
    assert response.json() == {
        "error": "unknown_notification_type",
        "detail": "unknown notification type 'SOMETHING_NEW'",
    }


@pytest.mark.parametrize("status", [200, 422, 501])
def test_unknown_type_status_is_configurable(status: int) -> None:
    router = make_router(Recorder(), unknown_type_status=status)
    assert post(router, *signed_request(UNKNOWN)).status == status


def test_known_type_without_handler_uses_unknown_type_status() -> None:
    router = make_router(unknown_type_status=422)
    router.add_handler(NotificationType.TRAINING_START, Recorder())
    response = post(router, *signed_request(ROUND))
    assert response.status == 422
    assert response.json()["error"] == "unhandled_notification_type"


def test_handler_exception_is_500_logged_without_details_in_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(notification: Notification[Any]) -> None:
        raise RuntimeError("secret internal detail /etc/model.pt")

    with caplog.at_level(logging.ERROR, logger="flnotify"):
        response = post(make_router(handler), *signed_request(msg_id="msg_boom"))
    assert response.status == 500
    text = response.body.decode()
    assert "secret internal detail" not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    assert response.json()["error"] == "handler_error"
    [record] = [r for r in caplog.records if r.name == "flnotify"]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert "msg_boom" in record.getMessage()


def test_async_handler_exception_is_500() -> None:
    async def handler(notification: Notification[Any]) -> None:
        raise RuntimeError("boom")

    response = asyncio.run(make_router(handler).ahandle("POST", *signed_request()))
    assert response.status == 500
    assert "boom" not in response.body.decode()


# ---------------------------------------------------------------- registration


def test_registration_forms() -> None:
    start, finish, swag = Recorder(), Recorder(), Recorder()
    router = make_router(handlers={TrainingStartNotification: start, "TRAINING_FINISHED": finish})
    router.on(NotificationType.SWAG_ROUND_START, NotificationType.MODEL_TEST_ROUND)(swag)
    for notification, status in ALL_TYPES:
        expected = (
            400
            if notification.notification_type
            in (
                NotificationType.UPDATE_ROUND_START,
                NotificationType.CLIENT_REMOVED,
            )
            else status
        )
        assert post(router, *signed_request(notification)).status == expected
    assert (len(start.calls), len(finish.calls), len(swag.calls)) == (1, 1, 2)
    assert "TRAINING_START" in repr(router)


def test_registration_errors() -> None:
    router = make_router(Recorder())
    with pytest.raises(ConfigurationError, match="already has a handler"):
        router.on(NotificationType.TRAINING_START)(Recorder())
    with pytest.raises(ConfigurationError):
        router.on()  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError):
        NotificationRouter().add_handler(42, Recorder())  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="not callable"):
        NotificationRouter().add_handler("TRAINING_START", "not callable")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="status"):
        NotificationRouter().add_handler("TRAINING_START", Recorder(), status=700)


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        ("update_round_start", "did you mean 'UPDATE_ROUND_START'?"),
        ("NO_SUCH_TYPE", "known: CLIENT_REMOVED, MODEL_TEST_ROUND, SWAG_ROUND_START"),
        ("UPDATE_ROUND_START ", "did you mean 'UPDATE_ROUND_START'?"),
    ],
)
def test_unknown_wire_types_are_refused_at_registration(kind: str, hint: str) -> None:
    router = NotificationRouter()
    with pytest.raises(ConfigurationError, match="is not a known notification type") as caught:
        router.add_handler(kind, Recorder())
    assert hint in str(caught.value)
    assert "TRAINING_FINISHED, TRAINING_START, UPDATE_ROUND_START" in str(caught.value)
    with pytest.raises(ConfigurationError, match="not a known notification type"):
        router.on("TRAINING_START", kind)(Recorder())
    assert repr(router) == "NotificationRouter(<unsigned>, handlers=[])"  # none registered


def test_unregistered_classes_and_kinds_are_refused() -> None:
    import enum

    import attrs

    class Kind(enum.Enum):
        EVAL = "MODEL_EVAL"

        @property
        def description(self) -> str:
            return "Evaluate"

    @attrs.frozen
    class EvalNotification(flnotify.TrainingNotification[GlobalModelBody]):
        notification_type = Kind.EVAL

    router = NotificationRouter()
    with pytest.raises(ConfigurationError, match="'MODEL_EVAL' is not a known"):
        router.add_handler(EvalNotification, Recorder())
    with pytest.raises(ConfigurationError, match="'MODEL_EVAL' is not a known"):
        router.add_handler(Kind.EVAL, Recorder())
    registry = flnotify.codec.default_registry().copy()
    registry.register(EvalNotification)
    custom = NotificationRouter(codec=flnotify.codec.Codec(registry=registry), secrets=None)
    custom.add_handler(Kind.EVAL, Recorder())
    assert "MODEL_EVAL" in repr(custom)


def test_decorator_returns_the_function() -> None:
    router = NotificationRouter()

    @router.on(NotificationType.TRAINING_START)
    def handler(notification: TrainingStartNotification) -> None:
        return None

    assert handler.__name__ == "handler"


# ---------------------------------------------------------------- adapters without a server


def call_wsgi(router: NotificationRouter, environ: dict[str, Any]) -> tuple[str, bytes]:
    captured: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured.append(status)
        return lambda data: None

    base = {"REQUEST_METHOD": "POST", "wsgi.input": io.BytesIO(b"")}
    body = b"".join(router.wsgi_app()({**base, **environ}, start_response))
    return captured[0], body


def test_wsgi_edge_cases() -> None:
    router = make_router(Recorder(), max_body_bytes=100)
    assert call_wsgi(router, {})[0] == "411 Length Required"
    assert call_wsgi(router, {"CONTENT_LENGTH": "abc"})[0] == "400 Bad Request"
    assert call_wsgi(router, {"CONTENT_LENGTH": "101"})[0] == "413 Request Entity Too Large"
    assert call_wsgi(router, {"REQUEST_METHOD": "GET"})[0] == "405 Method Not Allowed"
    body = flnotify.codec.encode(ROUND)
    terminated = {"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True}
    unsigned = make_router(Recorder(), secrets=None)
    assert call_wsgi(unsigned, terminated)[0] == "202 Accepted"
    big = {"wsgi.input": io.BytesIO(b"x" * 200), "wsgi.input_terminated": True}
    assert call_wsgi(router, big)[0] == "413 Request Entity Too Large"


def test_asgi_lifespan_and_websocket() -> None:
    app = asgi_app(make_router(Recorder()))
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        await app({"type": "lifespan"}, receive, send)
        await app({"type": "websocket"}, receive, send)
        await app({"type": "something-else"}, receive, send)

    asyncio.run(main())
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]


def test_asgi_body_cap_and_disconnect() -> None:
    app = make_router(Recorder(), max_body_bytes=10).asgi_app()

    async def run(messages: list[dict[str, Any]], headers: list[Any]) -> list[Any]:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "headers": headers}
        await app(scope, receive, send)
        return sent

    chunks = [{"type": "http.request", "body": b"123456", "more_body": True}] * 2
    sent = asyncio.run(run(list(chunks), []))
    assert sent[0]["status"] == 413
    sent = asyncio.run(run([], [(b"content-length", b"11")]))
    assert sent[0]["status"] == 413
    assert asyncio.run(run([{"type": "http.disconnect"}], [])) == []


def test_asgi_app_through_httpx_transport() -> None:
    handler = Recorder()
    app = make_router(handler, clock=time.time).asgi_app()

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://client") as client:
            headers, body = signed_request(ts=None)
            return await client.post("/any/path", content=body, headers=headers)

    assert asyncio.run(main()).status_code == 202
    assert handler.calls == [ROUND]


# ---------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # One client for the module: building one costs ~0.1 s (its SSL context).
    with httpx.Client(timeout=5, trust_env=False) as client:
        yield client


def post_signed(
    client: httpx.Client,
    url: str,
    notification: Notification[Any],
    secret: str,
    *,
    msg_id: str | None = None,
) -> httpx.Response:
    """Send one signed notification as the server would; the one place to swap the sender."""
    headers, body = signed_request(notification, secret, msg_id=msg_id, ts=None)
    return client.post(url, content=body, headers=headers)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_real_server_receives_signed_notifications(server: str, http: httpx.Client) -> None:
    handler = Recorder()
    router = NotificationRouter(secrets=SECRET)
    for kind in NotificationType:
        router.add_handler(kind, handler)
    with SERVERS[server](router) as url:
        for notification, status in ALL_TYPES:
            assert post_signed(http, url, notification, SECRET).status_code == status
        replay = post_signed(http, url, ROUND, SECRET, msg_id="msg_real")
        again = post_signed(http, url, ROUND, SECRET, msg_id="msg_real")
        forged = post_signed(http, url, ROUND, generate_secret())
        got = http.get(url)
        big = http.post(url, content=b"x" * (1024 * 1024 + 1))
    assert (replay.status_code, again.status_code) == (202, 200)
    assert forged.status_code == 401
    assert forged.headers["content-type"] == "application/json"
    assert got.status_code == 405
    assert big.status_code == 413
    assert handler.calls == [n for n, _ in ALL_TYPES] + [ROUND]


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_real_server_async_handler_and_failure(server: str, http: httpx.Client) -> None:
    calls: list[Notification[Any]] = []

    async def handler(notification: Notification[Any]) -> None:
        calls.append(notification)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")

    router = NotificationRouter(
        secrets=SECRET, handlers={NotificationType.UPDATE_ROUND_START: handler}
    )
    with SERVERS[server](router) as url:
        first = post_signed(http, url, ROUND, SECRET, msg_id="msg_flaky")
        second = post_signed(http, url, ROUND, SECRET, msg_id="msg_flaky")
    assert (first.status_code, second.status_code) == (500, 202)
    assert "first attempt fails" not in first.text


# ---------------------------------------------------------------- the docs run


def _python_blocks(name: str) -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / name).read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("name", ["writing-a-client.md", "security.md"])
def test_docs_examples_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The ```python blocks of one page run in order in one namespace, as a reader would.
    monkeypatch.setenv("FL_WEBHOOK_SECRET", generate_secret())
    blocks = _python_blocks(name)
    assert blocks
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    try:
        for block in blocks:
            exec(compile(block, name, "exec"), namespace)  # noqa: S102 - our own docs
    finally:
        work = namespace.get("work")
        if work is not None:
            work.shutdown(wait=True)


def test_json_error_bodies_are_json() -> None:
    response = make_router(Recorder()).handle("GET", {}, b"")
    assert json.loads(response.body) == response.json()
