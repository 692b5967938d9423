"""An FL client on FastAPI: flnotify's ASGI app, mounted at ``/flnotify``, receives the
server's notifications, verifies their signatures and hands them to typed handlers.

    FLNOTIFY_SECRET=whsec_... uvicorn app:create_app --factory --port 8000

Several worker processes share one SQLite id store, so a notification retried to another
worker (or after a restart) is not handled twice:

    FLNOTIFY_SECRET=whsec_... FLNOTIFY_ID_STORE=/var/lib/fl-client/ids.sqlite3 \\
        uvicorn app:create_app --factory --port 8000 --workers 4

The FL server may send to ``http://<this host>:8000/flnotify`` or ``.../flnotify/``: both
are served. (A mount alone answers ``/flnotify`` with a redirect to ``/flnotify/``, and
the FL server never follows redirects: the round would fail, naming the redirect.)
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI
from starlette.routing import Route

import flnotify
from flnotify.receiving import ASGIApp, IdStore, InMemoryIdStore, NotificationRouter, SQLiteIdStore

_DONE = {
    "UPDATE_ROUND_START": "trained",
    "SWAG_ROUND_START": "swag trained",
    "MODEL_TEST_ROUND": "tested",
}


class Trainer:
    """Stands in for the client's ML code: records what it was asked to do.

    Handlers answer at once (202 for a round) and the work runs in a background task, so
    the server's request does not wait for a training round.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.removed = False
        self._tasks: set[asyncio.Task[None]] = set()  # keeps running tasks referenced

    def record(self, notification: flnotify.TrainingNotification[Any]) -> None:
        self.events.append(
            {
                "type": notification.notification_type.value,
                "training": str(notification.training_uuid),
            }
        )

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start_round(self, notification: flnotify.TrainingNotification[flnotify.RoundBody]) -> None:
        self.record(notification)
        done = _DONE[notification.notification_type.value]
        self._background(self._train(done, notification.body))

    async def _train(self, done: str, body: flnotify.RoundBody) -> None:
        await asyncio.sleep(0)  # download the global model, train or test, upload: elided
        self.events.append({"type": done, "round": body.round})

    def idle(self) -> bool:
        """Whether every background task has finished."""
        return not self._tasks


class _Endpoint:
    """An ASGI app as a Starlette route endpoint (a plain function would be a view)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _id_store() -> IdStore:
    path = os.environ.get("FLNOTIFY_ID_STORE")
    return SQLiteIdStore(path) if path else InMemoryIdStore()


def create_app(
    secret: str | None = None, trainer: Trainer | None = None, dedup: IdStore | None = None
) -> FastAPI:
    """The client's web app; ``secret`` defaults to ``$FLNOTIFY_SECRET``, ``dedup`` to
    an [`SQLiteIdStore`][flnotify.receiving.SQLiteIdStore] at ``$FLNOTIFY_ID_STORE``
    (one process: in memory)."""
    secret = secret or os.environ.get("FLNOTIFY_SECRET")
    if not secret:
        msg = "set FLNOTIFY_SECRET to the whsec_... secret the FL server signs with"
        raise RuntimeError(msg)
    trainer = trainer or Trainer()
    router = NotificationRouter(secrets=secret, dedup=dedup or _id_store())

    @router.on(flnotify.TrainingStartNotification)
    async def training_start(notification: flnotify.TrainingStartNotification) -> None:
        trainer.record(notification)  # the router answers 200

    @router.on(
        flnotify.TrainingRoundStartNotification,
        flnotify.TrainingSWAGRoundStartNotification,
        flnotify.TrainingModelTestNotification,
    )
    async def round_start(notification: flnotify.TrainingNotification[flnotify.RoundBody]) -> None:
        trainer.start_round(notification)  # the router answers 202

    @router.on(flnotify.TrainingFinishedNotification)
    async def training_finished(notification: flnotify.TrainingFinishedNotification) -> None:
        trainer.record(notification)  # the router answers 200

    @router.on(flnotify.ClientRemovedNotification)
    async def removed(notification: flnotify.ClientRemovedNotification) -> None:
        trainer.removed = True
        trainer.record(notification)  # 200

    app = FastAPI(title="FL client")
    notify = router.asgi_app()
    app.mount("/flnotify", notify)  # /flnotify/ and anything below it
    # no redirect for /flnotify: the same app as a route of its own
    app.router.routes.append(Route("/flnotify", _Endpoint(notify), methods=["POST"]))

    @app.get("/events")
    async def events() -> list[dict[str, Any]]:
        return trainer.events

    return app
