"""Static checks of the receiving side's types; mypy checks this file, nothing runs it.

A handler registered for a notification class must take that class (or a base of it):
each ``# type: ignore[...]`` below fails type checking (strict mode reports unused
ignores) if a wrongly typed handler stops being an error.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from typing_extensions import assert_type

from flnotify import (
    Notification,
    NotificationType,
    TrainingFinishedNotification,
    TrainingNotification,
    TrainingRoundStartNotification,
    TrainingStartNotification,
)
from flnotify.receiving import (
    AsyncIdStore,
    IdClaim,
    IdStore,
    InMemoryIdStore,
    MessageContext,
    NotificationRouter,
    ReceivedNotification,
    RedisIdStore,
    SQLiteIdStore,
    parse_notification,
)

router = NotificationRouter()


@router.on(TrainingRoundStartNotification)
def start_round(notification: TrainingRoundStartNotification) -> None: ...


@router.on(TrainingRoundStartNotification)
async def start_round_with_context(
    notification: TrainingRoundStartNotification, context: MessageContext
) -> int:
    return 202


@router.on(TrainingStartNotification, TrainingFinishedNotification)
def start_or_finish(notification: TrainingNotification[Any]) -> None: ...


@router.on(TrainingStartNotification)
def any_notification(notification: Notification[Any]) -> None: ...  # a base class is fine


@router.on(TrainingStartNotification)  # type: ignore[arg-type]
def wrong_class(notification: TrainingRoundStartNotification) -> None: ...


@router.on(TrainingStartNotification)  # type: ignore[arg-type]
def wrong_context(notification: TrainingStartNotification, context: int) -> None: ...


@router.on(NotificationType.UPDATE_ROUND_START)  # enum and wire strings: not checked
def untyped(notification: TrainingStartNotification) -> None: ...


def registration(handler: Callable[[TrainingStartNotification], None]) -> None:
    router.add_handler(TrainingStartNotification, handler)
    router.add_handler(TrainingRoundStartNotification, handler)  # type: ignore[arg-type]
    router.add_handler("TRAINING_START", handler)


def decorated_functions_keep_their_types() -> None:
    assert_type(start_round, Callable[[TrainingRoundStartNotification], None])
    assert_type(
        start_round_with_context,
        Callable[[TrainingRoundStartNotification, MessageContext], Coroutine[Any, Any, int]],
    )


def stores(memory: InMemoryIdStore, sqlite: SQLiteIdStore, redis: RedisIdStore) -> None:
    for store in (memory, sqlite, redis):
        as_sync: IdStore = store
        as_async: AsyncIdStore = store
        assert_type(as_sync.claim("msg"), IdClaim)
        del as_async
    NotificationRouter(dedup=sqlite)
    NotificationRouter(dedup=redis)


def one_call(body: bytes, headers: dict[str, str]) -> None:
    received = parse_notification(body, headers, secrets="whsec_...")
    assert_type(received, ReceivedNotification)
    assert_type(received.id, str | None)
    assert_type(received.notification, Notification[Any])
