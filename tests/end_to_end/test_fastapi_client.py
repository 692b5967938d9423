"""The FastAPI example client through a whole training, as ``flnotify demo`` sends one.

The example (``examples/fastapi_client/app.py``) is served by uvicorn on 127.0.0.1 and
receives, signed by the Notifier, the demo's sequence (start, the update rounds, a test
round, finish) with the round-type notifications' default callbacks, plus a SWAG round,
a duplicate and CLIENT_REMOVED; it must answer every one as the server expects, so the
client stays in the training and the training never goes to ERROR.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

import flnotify
import flnotify.callbacks
from flnotify import Signer, generate_secret
from flnotify.receiving import SQLiteIdStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_client"
# a training's life: start, three update rounds, a test round on the last model, finish
SCHEDULE: list[tuple[Any, int | None]] = [
    (flnotify.TrainingStartNotification, None),
    (flnotify.TrainingRoundStartNotification, 1),
    (flnotify.TrainingRoundStartNotification, 2),
    (flnotify.TrainingRoundStartNotification, 3),
    (flnotify.TrainingModelTestNotification, 3),
    (flnotify.TrainingFinishedNotification, None),
]


def import_example() -> Any:
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    return importlib.import_module("app")


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # requests wait in the backlog until uvicorn serves: no polling
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_until_idle(trainer: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not trainer.idle():
        assert time.monotonic() < deadline, trainer.events
        pause.wait(0.005)


def send(
    notifier: flnotify.Notifier, repo: Any, notification: Any, **kwargs: Any
) -> flnotify.Delivery:
    callbacks = flnotify.callbacks.default_callbacks_for(notification, repo)
    (delivery,) = notifier.send(notification, callbacks, **kwargs)
    return delivery


@pytest.mark.parametrize("path", ["/flnotify/", "/flnotify"])
def test_the_example_survives_a_whole_training(path: str, tmp_path: Path) -> None:
    example = import_example()
    secret = generate_secret()
    trainer = example.Trainer()
    store = SQLiteIdStore(tmp_path / "ids.sqlite3")
    app = example.create_app(secret, trainer, dedup=store)
    repo = flnotify.InMemoryTrainingRepository()
    with serve(app) as base:
        client = flnotify.Receiver(uuid.uuid4(), base + path)
        training = repo.create_training(actor=client, participants=[client], model_id=uuid.uuid4())
        repo.update_training(training.id, state=flnotify.TrainingState.ONGOING)
        retry = flnotify.RetryPolicy.no_retries()
        statuses = []
        with flnotify.Notifier(signer=Signer(secret), retry=retry, repository=repo) as notifier:
            for cls, round_ in SCHEDULE:
                if round_ is not None:
                    snapshot = repo.update_training(
                        training.id, round=round_, model_id=uuid.uuid4()
                    )
                else:
                    snapshot = repo.get_training(training.id)
                notification = cls.from_training(snapshot)
                if cls is flnotify.TrainingRoundStartNotification and round_ == 1:
                    first = send(notifier, repo, notification, message_ids=["msg_round_1"])
                    again = send(notifier, repo, notification, message_ids=["msg_round_1"])
                    statuses += [first.status_code, again.status_code]
                    continue
                statuses.append(send(notifier, repo, notification).status_code)
            snapshot = repo.get_training(training.id)
            swag = flnotify.TrainingSWAGRoundStartNotification.from_training(snapshot)
            statuses.append(send(notifier, repo, swag).status_code)
            removed = flnotify.ClientRemovedNotification.from_training(
                snapshot, client=client, reason="the training is over"
            )
            statuses.append(send(notifier, repo, removed).status_code)
        wait_until_idle(trainer)
    store.close()
    # start 200; round 1 202 and its duplicate 200; rounds 2, 3 and the test round 202;
    # finish 200; SWAG 202; removed 200
    assert statuses == [200, 202, 200, 202, 202, 202, 200, 202, 200]
    final = repo.get_training(training.id)
    assert final.state is flnotify.TrainingState.ONGOING  # never ERROR
    assert final.participant_ids() == {client.id}  # never removed for a wrong answer
    kinds = [event["type"] for event in trainer.events]
    assert kinds.count("UPDATE_ROUND_START") == 3  # the duplicate did not run again
    assert kinds.count("trained") == 3
    assert {"MODEL_TEST_ROUND", "tested", "SWAG_ROUND_START", "swag trained"} <= set(kinds)
    assert kinds[0] == "TRAINING_START"
    assert "TRAINING_FINISHED" in kinds
    assert kinds[-1] == "CLIENT_REMOVED"
    assert trainer.removed
