"""FL clients on 127.0.0.1 for the Django tests: flnotify routers verifying their own secrets."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

import flnotify
from flnotify.receiving import NotificationRouter, Reply
from helpers.servers import wsgi_apps


@attrs.frozen
class Client:
    """How one client answers: ``reject`` round starts with this status, or accept."""

    secret: str
    reject_rounds: int | None = None


class Received(dict[str, list[str]]):
    """What each client received, in order; another process's sends can be waited for."""

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__({name: [] for name in names})
        self.changed = threading.Condition()

    def add(self, name: str, kind: str) -> None:
        with self.changed:
            self[name].append(kind)
            self.changed.notify_all()

    def wait_for(self, name: str, kind: str, timeout: float = 60.0) -> None:
        """Until client ``name`` has received a ``kind`` notification."""
        with self.changed:
            done = self.changed.wait_for(lambda: kind in self[name], timeout)
        assert done, f"{name} got no {kind} within {timeout} s: {dict(self)}"


@contextlib.contextmanager
def clients(configured: Mapping[str, Client]) -> Iterator[tuple[dict[str, str], Received]]:
    """Serve each client under ``/<name>/``; yields its URLs and what each one received."""
    received = Received(configured)
    apps = {}

    def handler(name: str, client: Client) -> Any:
        def handle(notification: flnotify.Notification[Any]) -> Reply | None:
            received.add(name, notification.notification_type.value)
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
