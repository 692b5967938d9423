"""FL clients on 127.0.0.1 for the Django tests: flnotify routers verifying their own secrets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

import flnotify
from flnotify.receiving import NotificationRouter, Reply
from servers import wsgi_apps


@attrs.frozen
class Client:
    """How one client answers: ``reject`` round starts with this status, or accept."""

    secret: str
    reject_rounds: int | None = None


@contextlib.contextmanager
def clients(
    configured: Mapping[str, Client],
) -> Iterator[tuple[dict[str, str], dict[str, list[str]]]]:
    """Serve each client under ``/<name>/``; yields its URLs and what each one received."""
    received: dict[str, list[str]] = {name: [] for name in configured}
    apps = {}

    def handler(name: str, client: Client) -> Any:
        def handle(notification: flnotify.Notification[Any]) -> Reply | None:
            received[name].append(notification.notification_type.value)
            rounds = isinstance(notification, flnotify.TrainingRoundStartNotification)
            if rounds and client.reject_rounds is not None:
                return Reply(client.reject_rounds)
            return None

        return handle

    for name, client in configured.items():
        router = NotificationRouter(secrets=client.secret)
        for kind in flnotify.NotificationType:
            router.add_handler(kind, handler(name, client))
        apps[f"/{name}/"] = router.wsgi_app()
    with wsgi_apps(apps) as base:
        yield {name: f"{base}/{name}/" for name in configured}, received
