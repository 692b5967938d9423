"""A server process killed (SIGKILL) while its send waits: the restarted one finishes the job.

The first server is a real process: it posts a round start to two polling clients and is
killed while it waits for their acknowledgements. The second opens the same files, serves
the mailbox app, and its dispatcher adopts the messages; the clients (real pollers, no
socket of their own) fetch, verify and acknowledge; the default training callbacks run on
the second server: the client that said no is removed and told through its mailbox.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import flnotify
import flnotify.receiving
from flnotify import Receiver, Signer, TrainingState, generate_secret
from flnotify.mailbox import MAILBOX_ENDPOINT, Mailbox, MailboxApp, MailboxDispatcher
from flnotify.receiving import Reply
from flnotify.testing import polling
from helpers.mailbox_env import asgi_server

FIRST_SERVER = """
import json, sys, uuid
import flnotify
from flnotify.mailbox import Mailbox

mail, trainings, secrets, training = sys.argv[1:5]
secrets = {uuid.UUID(k): v for k, v in json.loads(secrets).items()}
signer = flnotify.Signer(lookup=lambda r: secrets.get(r.id))
store = Mailbox(mail, ack_deadline=1e6)
store.signals.on_mail(lambda ids: print("posted", flush=True))
repo = flnotify.SQLiteTrainingRepository(trainings)
notifier = flnotify.Notifier(
    signer=signer,
    mailbox=store,
    repository=repo,
    mailbox_lease=3600,
    failure_policy=flnotify.FailurePolicy(tell_removed=True),
)
snapshot = repo.update_training(uuid.UUID(training), round=1)
notifier.send(flnotify.TrainingRoundStartNotification.from_training(snapshot))
print("returned", flush=True)
"""


def _line(process: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the first server said nothing"
    return process.stdout.readline().strip()


def test_a_killed_server_loses_nothing_and_the_next_one_settles_it(tmp_path: Path) -> None:
    alice = Receiver(uuid.uuid4(), MAILBOX_ENDPOINT)
    bob = Receiver(uuid.uuid4(), MAILBOX_ENDPOINT)
    secrets = {r.id: generate_secret() for r in (alice, bob)}
    mail, trainings = tmp_path / "mail.db", tmp_path / "fl.db"
    with flnotify.SQLiteTrainingRepository(trainings) as repo:
        training = repo.create_training(
            actor=alice, participants=[alice, bob], model_id=uuid.uuid4()
        )
        repo.update_training(training.id, state=TrainingState.ONGOING)

    first = subprocess.Popen(  # noqa: S603 - the test's own script
        [
            sys.executable,
            "-c",
            FIRST_SERVER,
            str(mail),
            str(trainings),
            json.dumps({str(k): v for k, v in secrets.items()}),
            str(training.id),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert _line(first) == "posted"  # the letters are committed; now it waits
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
        assert first.stdout is not None
        first.stdout.close()

    # The second server: the same files; its clock is past the dead server's lease.
    signer = Signer(lookup=lambda r: secrets.get(r.id))
    seen: dict[str, list[Any]] = {"alice": [], "bob": []}

    def router(name: str, answer: int) -> flnotify.receiving.NotificationRouter:
        r = flnotify.receiving.NotificationRouter(
            secrets=secrets[alice.id if name == "alice" else bob.id]
        )

        @r.on(flnotify.TrainingRoundStartNotification)
        def round_start(notification: flnotify.TrainingRoundStartNotification) -> Reply:
            seen[name].append(notification)
            return Reply(answer)

        @r.on(flnotify.ClientRemovedNotification)
        def removed(notification: flnotify.ClientRemovedNotification) -> None:
            seen[name].append(notification)

        return r

    store = Mailbox(mail, ack_deadline=1e6, clock=lambda: time.time() + 7200)
    try:
        assert store.counts()["queued"] == 2  # nothing was lost with the process
        with (
            flnotify.SQLiteTrainingRepository(trainings) as repo,
            asgi_server(MailboxApp(store, signer).asgi_app()) as base,
        ):
            pollers = [
                flnotify.receiving.MailboxPoller(
                    base, alice.id, secrets[alice.id], router("alice", 202)
                ),
                flnotify.receiving.MailboxPoller(base, bob.id, secrets[bob.id], router("bob", 409)),
            ]
            with (
                polling(pollers),
                flnotify.Notifier(
                    signer=signer,
                    mailbox=store,
                    repository=repo,
                    failure_policy=flnotify.FailurePolicy(tell_removed=True),
                ) as notifier,
            ):
                assert MailboxDispatcher(store, notifier).run_once() == 2
            after = repo.get_training(training.id)
        counts = store.counts()
    finally:
        store.close()
    assert [p.id for p in after.participants] == [alice.id]  # bob said no: removed
    assert after.state is TrainingState.ONGOING
    assert [type(n).__name__ for n in seen["alice"]] == [
        "TrainingRoundStartNotification",
        "ClientRemovedNotification",  # the actor is told too
    ]
    assert [type(n).__name__ for n in seen["bob"]] == [
        "TrainingRoundStartNotification",
        "ClientRemovedNotification",
    ]
    assert counts["done"] == 4  # the round start twice, the notice twice
