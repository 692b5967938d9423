"""The FL client that ``tests/receiving/test_multiworker.py`` serves with ``uvicorn --workers 2``.

Configured by the environment, as a deployed client would be:

* ``FLN_SECRET``: the ``whsec_`` secret;
* ``FLN_STORE``: ``sqlite:<path>`` or ``redis:<url>``;
* ``FLN_RUNS``: a file each handler run appends one line to (``<pid> <message id>``),
  so the test counts runs over every worker process.

Each answer carries ``x-worker-pid``, so the test can see that both workers answered.
"""

from __future__ import annotations

import os
from typing import Any

from flnotify import TrainingRoundStartNotification
from flnotify.receiving import (
    IdStore,
    MessageContext,
    NotificationRouter,
    RedisIdStore,
    SQLiteIdStore,
)


def _store(spec: str) -> IdStore:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return SQLiteIdStore(where)
    if kind == "redis":
        return RedisIdStore.from_url(where)
    msg = f"FLN_STORE: unknown store {spec!r}"
    raise RuntimeError(msg)


router = NotificationRouter(secrets=os.environ["FLN_SECRET"], dedup=_store(os.environ["FLN_STORE"]))
runs = os.environ["FLN_RUNS"]


@router.on(TrainingRoundStartNotification)
def start_round(notification: TrainingRoundStartNotification, context: MessageContext) -> None:
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {context.id}\n".encode())
    finally:
        os.close(fd)


_inner = router.asgi_app()
_pid = str(os.getpid()).encode()


async def app(scope: Any, receive: Any, send: Any) -> None:
    async def tagged(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], (b"x-worker-pid", _pid)]}
        await send(message)

    await _inner(scope, receive, tagged)
