"""A whole training through the contrib app: settings block, ORM repository and secrets.

One ``FLNOTIFY`` block on the host app (``flhost``) and a real PostgreSQL; the process's
Notifier from ``get_notifier()`` sends, signed with each client's own secret read from the
app's ``ClientSecret`` table, to FL clients on 127.0.0.1 that verify it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import flnotify
from flnotify import generate_secret

ALIAS = "postgres"


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
        "NOTIFIER": {
            "retry": flnotify.RetryPolicy(max_attempts=2, initial_backoff=0.01),
            "deadline": 30.0,
        },
        # removed clients are told (the strict policy's default is not to)
        "FAILURE_POLICY": flnotify.FailurePolicy(tell_removed=True),
    }
    with override_settings(FLNOTIFY=block):
        yield models
    SendOutcome.objects.using(ALIAS).all().delete()


def test_a_whole_training(host: Any) -> None:
    from loopback import Client, clients

    from flnotify.contrib.django import get_notifier, get_repository, notification_for
    from flnotify.contrib.django.models import ClientSecret
    from helpers.servers import refused_url

    models = host
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
        model = models.GlobalModel.objects.using(ALIAS).create(round=0)
        training = models.Training.objects.using(ALIAS).create(
            actor=users["scientist"], model=model, state="O"
        )
        training.participants.add(users["alice"], users["bob"])
        notifier = get_notifier()
        assert get_notifier() is notifier  # one per process

        started = notifier.send(notification_for(flnotify.TrainingStartNotification, training))
        assert [d.outcome for d in started] == [flnotify.Outcome.DELIVERED] * 2

        model.round = 1
        model.save(update_fields=["round"])
        first = notifier.send(notification_for(flnotify.TrainingRoundStartNotification, training))
        assert {d.receiver.id: d.outcome for d in first} == {
            users["alice"].id: flnotify.Outcome.DELIVERED,
            users["bob"].id: flnotify.Outcome.REJECTED,  # 409: removed from the training
        }
        after_first = get_repository().snapshot(training)
        assert [p.id for p in after_first.participants] == [users["alice"].id]
        assert after_first.state is flnotify.TrainingState.ONGOING

        training.participants.add(users["carol"])  # joins, and cannot be reached
        model.round = 2
        model.save(update_fields=["round"])
        second = notifier.send(notification_for(flnotify.TrainingRoundStartNotification, training))
        assert sorted(d.outcome.value for d in second) == ["delivered", "failed"]
        training.refresh_from_db()
        assert training.state == "E"  # strict policy: an unreachable client puts it in ERROR

        finished = notifier.send(notification_for(flnotify.TrainingFinishedNotification, training))
        assert {d.receiver.id: d.outcome for d in finished} == {
            users["alice"].id: flnotify.Outcome.DELIVERED,
            users["carol"].id: flnotify.Outcome.FAILED,
            users["scientist"].id: flnotify.Outcome.DELIVERED,
        }
    # every client verified its own signature (a wrong one is answered 401: failed); the
    # removed client and the actor were told CLIENT_REMOVED by the default callbacks
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
    training.refresh_from_db()
    assert [u.username for u in training.participants.all()] == ["alice", "carol"]
