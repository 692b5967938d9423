"""An FL client on FastAPI: flnotify's ASGI app, mounted at ``/flnotify/``, receives the
server's notifications, verifies their signatures and hands them to typed handlers.

    FLNOTIFY_SECRET=whsec_... uvicorn app:create_app --factory --port 8000

The FL server then sends to ``http://<this host>:8000/flnotify/`` (with the trailing slash:
Starlette redirects ``/flnotify`` and flnotify never follows redirects).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI

import flnotify
from flnotify.receiving import NotificationRouter


class Trainer:
    """Stands in for the client's ML code: records what it was asked to do.

    Handlers answer at once (202 for a round) and the work runs in a background task, so
    the server's request does not wait for a training round.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # keeps running tasks referenced

    def record(self, notification: flnotify.TrainingNotification[Any]) -> None:
        self.events.append(
            {
                "type": notification.notification_type.value,
                "training": str(notification.training_uuid),
            }
        )

    def start_round(self, notification: flnotify.TrainingRoundStartNotification) -> None:
        self.record(notification)
        task = asyncio.get_running_loop().create_task(self._train(notification.body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _train(self, body: flnotify.RoundBody) -> None:
        await asyncio.sleep(0)  # download the global model, train, upload: elided
        self.events.append({"type": "trained", "round": body.round})


def create_app(secret: str | None = None, trainer: Trainer | None = None) -> FastAPI:
    """The client's web app; ``secret`` defaults to ``$FLNOTIFY_SECRET``."""
    secret = secret or os.environ.get("FLNOTIFY_SECRET")
    if not secret:
        msg = "set FLNOTIFY_SECRET to the whsec_... secret the FL server signs with"
        raise RuntimeError(msg)
    trainer = trainer or Trainer()
    router = NotificationRouter(secrets=secret)

    @router.on(flnotify.TrainingRoundStartNotification)
    async def start_round(notification: flnotify.TrainingRoundStartNotification) -> None:
        trainer.start_round(notification)  # the router answers 202

    @router.on(flnotify.TrainingStartNotification, flnotify.TrainingFinishedNotification)
    async def training_event(notification: flnotify.TrainingNotification[Any]) -> None:
        trainer.record(notification)  # the router answers 200

    app = FastAPI(title="FL client")
    app.mount("/flnotify", router.asgi_app())

    @app.get("/events")
    async def events() -> list[dict[str, Any]]:
        return trainer.events

    return app
