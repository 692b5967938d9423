"""An FL server on FastAPI: routes start sends with ``Notifier.submit`` and answer at once.

    FLNOTIFY_SECRET=whsec_... FLNOTIFY_MAILBOX=/var/lib/fl-server/mailbox.sqlite3 \\
        uvicorn server:create_app --factory --port 8080

The app's lifespan owns everything that lives as long as the process: the ``Notifier``,
the mailbox that clients behind NAT poll (served at ``/mailbox``) and the dispatcher that
adopts the mail of a server process that stopped. A route never waits for the clients:
``notifier.submit(...)`` returns the message ids at once, the send runs on the app's event
loop, and ``GET /sends/{send_id}`` reports it once it has ended (a send is bounded: see
docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import flnotify
import flnotify.errors
from flnotify.mailbox import Mailbox, MailboxApp, MailboxDispatcher


class Client(BaseModel):
    id: uuid.UUID
    endpoint: str  # an http(s) URL, or "mailbox:" for a client that polls


class NewTraining(BaseModel):
    participants: list[Client]


def create_app(
    *,
    secret: str | None = None,
    mailbox_path: str | None = None,
    repository: flnotify.InMemoryTrainingRepository | None = None,
    **settings: Any,
) -> FastAPI:
    """The FL server's API.

    Args:
        secret: The signing secret (``FLNOTIFY_SECRET`` if ``None``).
        mailbox_path: The mailbox's SQLite file (``FLNOTIFY_MAILBOX``, else in memory).
        repository: Where trainings live (in memory if ``None``; a real server has its
            own ``TrainingRepository`` over its database).
        **settings: Fields of ``flnotify.Settings`` (``retry=``, ``failure_policy=``, ...).
    """
    secret = secret or os.environ["FLNOTIFY_SECRET"]
    path = mailbox_path or os.environ.get("FLNOTIFY_MAILBOX", ":memory:")
    repo = repository or flnotify.InMemoryTrainingRepository()
    signer = flnotify.Signer(secret)
    sends: dict[str, flnotify.SendHandle] = {}  # a real server keeps the last N, or a table
    mailbox_app: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with Mailbox(path) as mailbox:
            async with flnotify.Notifier(
                repository=repo, mailbox=mailbox, signer=signer, **settings
            ) as notifier:
                dispatcher = MailboxDispatcher(mailbox, notifier)
                adopting = asyncio.get_running_loop().create_task(dispatcher.arun())
                app.state.notifier = notifier
                mailbox_app["asgi"] = MailboxApp(mailbox, signer).asgi_app()
                try:
                    yield
                finally:  # the Notifier then waits for the sends still running
                    adopting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await adopting

    app = FastAPI(lifespan=lifespan)

    async def mailbox(scope: Any, receive: Any, send: Any) -> None:
        await mailbox_app["asgi"](scope, receive, send)

    app.mount("/mailbox", mailbox)

    def started(handle: flnotify.SendHandle) -> dict[str, Any]:
        sends[handle.send_id] = handle
        return {"send_id": handle.send_id, "message_ids": list(handle.message_ids)}

    @app.post("/trainings", status_code=201)
    def create_training(body: NewTraining) -> dict[str, str]:
        clients = [flnotify.Receiver(c.id, c.endpoint) for c in body.participants]
        if not clients:
            raise HTTPException(422, "a training needs participants")
        training = repo.create_training(
            actor=clients[0], participants=clients, model_id=uuid.uuid4()
        )
        return {"training_id": str(training.id)}

    @app.exception_handler(flnotify.errors.TrainingNotFoundError)
    async def not_found(_: Request, exc: flnotify.errors.TrainingNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.post("/trainings/{training_id}/start", status_code=202)
    async def start_training(training_id: uuid.UUID, request: Request) -> dict[str, Any]:
        training = repo.update_training(training_id, state=flnotify.TrainingState.ONGOING)
        notification = flnotify.TrainingStartNotification.from_training(training)
        return started(request.app.state.notifier.submit(notification))

    @app.post("/trainings/{training_id}/rounds", status_code=202)
    async def next_round(training_id: uuid.UUID, request: Request) -> dict[str, Any]:
        training = repo.get_training(training_id)
        training = repo.update_training(training_id, round=training.round + 1)
        notification = flnotify.TrainingRoundStartNotification.from_training(training)
        return started(request.app.state.notifier.submit(notification))

    @app.get("/sends/{send_id}")
    async def send_status(send_id: str, wait: bool = False) -> dict[str, Any]:
        handle = sends.get(send_id)
        if handle is None:
            raise HTTPException(404, "no such send")
        if not handle.done() and not wait:
            return {"done": False}
        report = await handle  # bounded by the settings' deadline
        counts = report.counts()
        return {
            "done": True,
            "delivered": counts.delivered,
            "rejected": counts.rejected,
            "failed": counts.failed,
            "summary": report.summary(),
        }

    @app.get("/trainings/{training_id}")
    def training_state(training_id: uuid.UUID) -> dict[str, Any]:
        training = repo.get_training(training_id)
        return {
            "state": training.state.value,
            "round": training.round,
            "participants": [str(p.id) for p in training.participants],
        }

    return app
