"""The example integrations under ``examples/``, against the real frameworks on loopback.

* ``examples/django_server``: flnotify's repository contract suite against the repository
  of the example's ``FLNOTIFY`` block (SQLite), and a round start through
  ``start_next_round`` / the management command, where a rejecting client is removed from
  the Django training.
* ``examples/fastapi_client``: flnotify's ASGI app mounted in FastAPI, served by uvicorn,
  receiving notifications sent and signed by the Notifier.
* ``examples/fastapi_server``: an FL server whose routes start sends with
  ``Notifier.submit`` and answer before the clients do.

The example modules are imported by path (they are not packages of this project), so
they are typed ``Any`` here and left out of mypy.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import flnotify
from flnotify import Signer, generate_secret
from flnotify._repository_contract import TrainingRepositoryContract
from flnotify.receiving import NotificationRouter, Reply, make_wsgi_server
from helpers.servers import wsgi_apps

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def import_example(folder: str, module: str) -> Any:
    path = str(EXAMPLES / folder)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(module)


@contextlib.contextmanager
def loopback_clients(statuses: dict[str, int | None]) -> Iterator[dict[str, str]]:
    """FL clients built with flnotify's router: path -> answer (None: the default)."""

    def answering(status: int | None) -> Any:
        def handle(_: flnotify.Notification[Any]) -> Reply | None:
            return None if status is None else Reply(status)

        return handle

    apps = {}
    for path, status in statuses.items():
        router = NotificationRouter()
        for kind in flnotify.NotificationType:
            router.add_handler(kind, answering(status))
        apps[f"/{path}/"] = router.wsgi_app()
    with wsgi_apps(apps) as base:
        yield {path: f"{base}/{path}/" for path in statuses}


# --------------------------------------------------------------------------- Django


@pytest.fixture
def django_project(django_site: None) -> Iterator[Any]:
    """The example's models, with its FLNOTIFY block (Django's settings are per process)."""
    override_settings = importlib.import_module("django.test").override_settings
    setup = import_example("django_server", "flplatform.setup")
    with override_settings(FLNOTIFY=setup.FLNOTIFY):
        yield import_example("django_server", "flplatform.models")


def empty_tables(models: Any) -> None:
    models.Training.objects.all().delete()
    models.User.objects.all().delete()


class TestDjangoTrainingRepository(TrainingRepositoryContract):
    """flnotify's contract suite, run against the repository of the example's settings."""

    @pytest.fixture(autouse=True)
    def _django(self, django_project: Any) -> None:
        self.models = django_project

    def make_repository(self) -> Any:
        empty_tables(self.models)
        return importlib.import_module("flnotify.contrib.django").get_repository()

    def seed(
        self,
        repo: Any,
        *,
        actor: flnotify.ReceiverLike,
        participants: Sequence[flnotify.ReceiverLike],
        model_id: uuid.UUID,
        round: int,
        state: flnotify.TrainingState,
    ) -> uuid.UUID:
        User = self.models.User  # noqa: N806 - a model class
        users = {
            r.id: User(id=r.id, username=f"user-{r.id}", message_endpoint=r.message_endpoint)
            for r in (actor, *participants)
        }
        User.objects.bulk_create(users.values())
        training = self.models.Training.objects.create(
            actor=users[actor.id], model_id=model_id, round=round, state=state.value
        )
        training.participants.add(*(users[p.id] for p in participants))
        return uuid.UUID(str(training.id))


def test_django_round_start_removes_a_rejecting_client(django_project: Any) -> None:
    models = django_project
    empty_tables(models)
    notifications = import_example("django_server", "flplatform.notifications")
    with loopback_clients({"accepting": None, "rejecting": 409}) as urls:
        scientist = models.User.objects.create(
            username="scientist", message_endpoint=urls["accepting"]
        )
        accepting = models.User.objects.create(username="a", message_endpoint=urls["accepting"])
        rejecting = models.User.objects.create(username="r", message_endpoint=urls["rejecting"])
        training = models.Training.objects.create(actor=scientist, round=2)
        training.participants.add(accepting, rejecting)
        new_model = uuid.uuid4()

        report = notifications.start_next_round(training.id, new_model)

    assert {d.receiver.id: d.outcome for d in report} == {  # one add(): no order among them
        accepting.id: flnotify.Outcome.DELIVERED,
        rejecting.id: flnotify.Outcome.REJECTED,
    }
    assert report.notification.body == flnotify.RoundBody(round=3, global_model_uuid=new_model)
    training.refresh_from_db()
    assert list(training.participants.all()) == [accepting]  # removed by the default callbacks
    assert training.state == "ONGOING"
    assert training.round == 3


def test_django_management_command_and_signed_clients(django_project: Any) -> None:
    models = django_project
    empty_tables(models)
    secret = generate_secret()
    received: list[flnotify.TrainingRoundStartNotification] = []
    router = NotificationRouter(secrets=secret)
    router.add_handler(flnotify.TrainingRoundStartNotification, received.append)
    server = make_wsgi_server("127.0.0.1", 0, router.wsgi_app())
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        client = models.User.objects.create(username="c", message_endpoint=url)
        secrets = importlib.import_module("flnotify.contrib.django.models").ClientSecret
        secrets.objects.create(client_id=client.id, secret=secret)
        # nothing listens on the discard port: the training goes to ERROR
        down = models.User.objects.create(username="d", message_endpoint="http://127.0.0.1:9/")
        training = models.Training.objects.create(actor=client)
        training.participants.add(client, down)
        out = io.StringIO()
        management = importlib.import_module("django.core.management")
        management.call_command("start_round", str(training.id), stdout=out)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    (notification,) = received  # verified with the client's own secret
    assert notification.training_uuid == training.id
    text = out.getvalue()
    assert "round 1: 1 delivered, 0 rejected, 1 failed; training ERROR, 2 participant(s)" in text
    training.refresh_from_db()
    assert training.state == "ERROR"


# --------------------------------------------------------------------------- FastAPI


@contextlib.contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # requests wait in the backlog until uvicorn serves: no polling for start
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_fastapi_client_receives_signed_notifications() -> None:
    pytest.importorskip("fastapi")
    example = import_example("fastapi_client", "app")
    secret = generate_secret()
    trainer = example.Trainer()
    app = example.create_app(secret, trainer)
    training = uuid.uuid4()
    model = uuid.uuid4()
    with uvicorn_server(app) as base:
        client = flnotify.Receiver(uuid.uuid4(), f"{base}/flnotify/")
        round_start = flnotify.TrainingRoundStartNotification(
            receivers=[client],
            body=flnotify.RoundBody(round=4, global_model_uuid=model),
            training_uuid=training,
        )
        start = flnotify.TrainingStartNotification(
            receivers=[client],
            body=flnotify.GlobalModelBody(global_model_uuid=model),
            training_uuid=training,
        )
        retry = flnotify.RetryPolicy.no_retries()
        with flnotify.Notifier(signer=Signer(secret), retry=retry) as notifier:
            started = notifier.send(start)
            report = notifier.send(round_start)
            with flnotify.Notifier(signer=Signer(generate_secret()), retry=retry) as forger:
                forged = forger.send(round_start)
        deadline = time.monotonic() + 5
        while {"type": "trained", "round": 4} not in trainer.events:
            assert time.monotonic() < deadline, trainer.events
            time.sleep(0.01)
    assert [d.status_code for d in started] == [200]
    (delivery,) = report
    assert (delivery.outcome, delivery.status_code) == (flnotify.Outcome.DELIVERED, 202)
    (refused,) = forged
    assert (refused.outcome, refused.status_code) == (flnotify.Outcome.FAILED, 401)
    assert trainer.events == [
        {"type": "TRAINING_START", "training": str(training)},
        {"type": "UPDATE_ROUND_START", "training": str(training)},
        {"type": "trained", "round": 4},
    ]


def test_fastapi_client_needs_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    example = import_example("fastapi_client", "app")
    monkeypatch.delenv("FLNOTIFY_SECRET", raising=False)
    with pytest.raises(RuntimeError, match="FLNOTIFY_SECRET"):
        example.create_app()


def test_fastapi_server_answers_before_its_clients_and_reports_later() -> None:
    pytest.importorskip("fastapi")
    import httpx

    example = import_example("fastapi_server", "server")
    secret = generate_secret()
    entered, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def held(notification: flnotify.Notification[Any]) -> None:  # run in a worker thread
        seen.append(notification.notification_type.value)
        entered.set()
        release.wait()

    router = NotificationRouter(secrets=secret)
    router.add_handler(flnotify.NotificationType.UPDATE_ROUND_START, held)
    retry = flnotify.RetryPolicy.no_retries()
    app = example.create_app(secret=secret, retry=retry)
    try:
        with uvicorn_server(router.asgi_app()) as client_base, uvicorn_server(app) as base:
            client = {"id": str(uuid.uuid4()), "endpoint": f"{client_base}/"}
            with httpx.Client(base_url=base, timeout=30) as http:
                created = http.post("/trainings", json={"participants": [client]})
                assert created.status_code == 201, created.text
                training = created.json()["training_id"]
                started = http.post(f"/trainings/{training}/rounds")
                # the route answered while the client still holds the notification
                assert started.status_code == 202, started.text
                assert not release.is_set()
                send = started.json()
                assert len(send["message_ids"]) == 1
                assert send["message_ids"][0].startswith("msg_")
                assert http.get(f"/sends/{send['send_id']}").json() == {"done": False}
                assert entered.wait(30)  # the send reached the client, and waits there
                release.set()
                report = http.get(f"/sends/{send['send_id']}", params={"wait": True}).json()
                state = http.get(f"/trainings/{training}").json()
    finally:
        release.set()
    assert seen == ["UPDATE_ROUND_START"]
    assert (report["done"], report["delivered"], report["failed"]) == (True, 1, 0)
    assert state == {"state": "INITIAL", "round": 1, "participants": [client["id"]]}
