"""A whole training on a real Celery worker process: Django, PostgreSQL, Redis, ORM secrets.

The host project (``flhost``: its settings, its Celery app in ``flhost/worker.py`` with the
original platform's pickle configuration plus JSON) runs ``celery worker`` in a process of
its own, on the session's PostgreSQL and a redis-server on 127.0.0.1. The test process
enqueues through ``celery_delivery``; the worker delivers, signed with each client's own
secret read from the ORM, and the default callbacks remove a rejecting client and put the
training into ERROR for an unreachable one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flnotify
from flnotify.signing import generate_secret

ALIAS = "postgres"
HERE = Path(__file__).resolve().parent


class WorkerLog:
    """The worker's output, read as it comes (which also keeps the pipe drained)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.ended = False  # the output closed: the worker exited
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        with self.changed:
            found = self.changed.wait_for(lambda: any(text in line for line in self.lines), timeout)
        assert found, f"the worker never logged {text!r}:\n" + "\n".join(self.lines)

    def text(self) -> str:
        with self.changed:
            return "\n".join(self.lines)


@contextlib.contextmanager
def celery_worker(database: str, broker: str) -> Iterator[WorkerLog]:
    """``celery -A flhost.worker worker`` on ``database`` and ``broker``; stopped warm."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "flhost.settings",
        "FLHOST_DATABASE": database,
        "FLHOST_BROKER": broker,
        # the host's own tasks are pickled, and these tests may run as root (containers)
        "C_FORCE_ROOT": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "flhost.worker",
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        "--loglevel=INFO",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        "--hostname=flhost@127.0.0.1",
    ]
    process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        command,
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = WorkerLog(process)
    try:
        log.wait_for(" ready.")
        yield log
    finally:
        process.terminate()  # SIGTERM: a warm shutdown, its signals sent
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.reader.join(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture
def host(django_site: None) -> Iterator[Any]:
    """The host's models, empty, with a settings block on PostgreSQL."""
    from django.test import override_settings
    from flhost import config, models, seeding

    from flnotify.contrib.django.models import ClientSecret, SendOutcome

    seeding.empty(ALIAS)
    ClientSecret.objects.using(ALIAS).all().delete()
    block = {
        "REPOSITORY": {**config.REPOSITORY, "using": ALIAS, "track_outcomes": True},
        "SIGNER": {"CLIENT_SECRETS": True, "DATABASE": ALIAS},
        "FAILURE_POLICY": flnotify.FailurePolicy(tell_removed=True),  # removals are told
    }
    with override_settings(FLNOTIFY=block):
        yield models
    SendOutcome.objects.using(ALIAS).all().delete()


def test_a_whole_training_on_a_celery_worker_process(host: Any, redis_url: str) -> None:
    from celery import Celery  # type: ignore[import-untyped]
    from loopback import Client, clients

    from flnotify.contrib.django import (
        celery_delivery,
        database_target,
        get_repository,
        notification_for,
    )
    from flnotify.contrib.django.models import ClientSecret
    from helpers.servers import refused_url

    models = host
    broker = redis_url.rsplit("/", 1)[0] + "/5"  # a database of its own on the server
    app = Celery("flhost-web", broker=broker, set_as_current=False)
    app.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    sender = celery_delivery(app)  # the web process's side: it only enqueues
    secrets = {name: generate_secret() for name in ("scientist", "alice", "bob")}
    configured = {
        "scientist": Client(secrets["scientist"]),
        "alice": Client(secrets["alice"]),
        "bob": Client(secrets["bob"], reject_rounds=409),
    }
    with clients(configured) as (urls, received):
        users = {
            name: models.User.objects.using(ALIAS).create(username=name, message_endpoint=url)
            for name, url in {**urls, "carol": refused_url()}.items()
        }
        for name, secret in secrets.items():
            ClientSecret.objects.using(ALIAS).create(client_id=users[name].id, secret=secret)
        model = models.GlobalModel.objects.using(ALIAS).create(round=1)
        training = models.Training.objects.using(ALIAS).create(
            actor=users["scientist"], model=model, state="O"
        )
        training.participants.add(users["alice"], users["bob"])

        with celery_worker(database_target(ALIAS), broker) as log:
            # the start and the first round, in this order for every client
            sender.enqueue_ordered(
                [
                    notification_for(flnotify.TrainingStartNotification, training),
                    notification_for(flnotify.TrainingRoundStartNotification, training),
                ]
            )
            received.wait_for("alice", "UPDATE_ROUND_START")
            received.wait_for("scientist", "CLIENT_REMOVED")  # bob is told, then removed
            log.wait_for("Sent UPDATE_ROUND_START to 2 receiver(s): 1 delivered, 1 rejected")
            after_first = get_repository().snapshot(training)
            assert [p.id for p in after_first.participants] == [users["alice"].id]
            assert after_first.state is flnotify.TrainingState.ONGOING

            training.participants.add(users["carol"])  # joins, and cannot be reached
            model.round = 2
            model.save(update_fields=["round"])
            sender.enqueue_ordered(  # the end goes once round 2 settled, its callbacks run
                [
                    notification_for(flnotify.TrainingRoundStartNotification, training),
                    notification_for(flnotify.TrainingFinishedNotification, training),
                ]
            )
            received.wait_for("scientist", "TRAINING_FINISHED")
            training.refresh_from_db()
            assert training.state == "E"  # strict policy: the unreachable client: ERROR
            # carol's last attempt of the end: the worker has nothing left to do
            log.wait_for("Sent TRAINING_FINISHED to 1 receiver(s): 0 delivered, 0 rejected, 1")
    app.close()

    # every client verified its own signature (a wrong one is answered 401: failed)
    assert received == {
        "scientist": ["CLIENT_REMOVED", "TRAINING_FINISHED"],
        "alice": [
            "TRAINING_START",
            "UPDATE_ROUND_START",
            "UPDATE_ROUND_START",
            "TRAINING_FINISHED",
        ],
        "bob": ["TRAINING_START", "UPDATE_ROUND_START", "CLIENT_REMOVED"],
    }
    assert [u.username for u in training.participants.all()] == ["alice", "carol"]
    output = log.text()
    for trouble in ("Refusing to deserialize", "SynchronousOnlyOperation", "Traceback"):
        assert trouble not in output, output
    # one honest line per run: carol's retry is announced, never "Sent ... to 0 receiver(s)"
    assert "UPDATE_ROUND_START: 1 receiver(s) to try again" in output
    assert "to 0 receiver(s)" not in output
