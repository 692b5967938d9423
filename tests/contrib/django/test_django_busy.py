"""The Django repository says when the database is busy for now: ``RepositoryBusyError``.

Real locks: an SQLite file held by another connection (``BEGIN EXCLUSIVE``) and a
PostgreSQL table locked by another session, with the repository's wait cut short.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import flnotify
from flnotify import TrainingState
from flnotify.contrib.django import DjangoTrainingRepository
from flnotify.errors import RepositoryBusyError, RepositoryError


def _seeded(alias: str) -> tuple[DjangoTrainingRepository, uuid.UUID]:
    from flhost import config, seeding

    seeding.empty(alias)
    actor = flnotify.Receiver(uuid.uuid4(), "http://a.test/")
    training = seeding.seed(
        alias,
        actor=actor,
        participants=[actor],
        model_id=uuid.uuid4(),
        round=1,
        state=TrainingState.ONGOING,
    )
    return DjangoTrainingRepository(**config.REPOSITORY, using=alias), training


@pytest.fixture
def sqlite_repo(django_site: None) -> Iterator[tuple[Any, uuid.UUID, str]]:
    """The repository on the SQLite ``default``, waiting 50 ms (not 20 s) for a lock."""
    from django.db import connections

    repo, training = _seeded("default")
    connection = connections["default"]
    connection.close()
    options = connection.settings_dict["OPTIONS"]
    before = options["timeout"]
    options["timeout"] = 0.05
    try:
        yield repo, training, str(connection.settings_dict["NAME"])
    finally:
        connection.close()
        options["timeout"] = before


def test_a_locked_sqlite_database_is_busy(sqlite_repo: tuple[Any, uuid.UUID, str]) -> None:
    repo, training, path = sqlite_repo
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(RepositoryBusyError, match="database is locked"):
            repo.set_state(training, TrainingState.ERROR)
        other.execute("ROLLBACK")
    finally:
        other.close()
    repo.set_state(training, TrainingState.ERROR)  # the lock is gone: it goes through
    assert repo.get_training(training).state is TrainingState.ERROR


def test_a_postgresql_lock_timeout_is_busy_outside_the_hosts_transaction(
    django_site: None,
) -> None:
    import psycopg
    from django.db import connections, transaction
    from flhost.models import Training

    alias = "postgres"
    repo, training = _seeded(alias)
    connection = connections[alias]
    settings = connection.settings_dict
    other = psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        user=settings["USER"],
        password=settings["PASSWORD"],
        dbname=settings["NAME"],
    )
    try:
        with connection.cursor() as cursor:  # open before the call: kept, with its setting
            cursor.execute("SET lock_timeout = '50ms'")
        other.execute(f'LOCK TABLE "{Training._meta.db_table}" IN ACCESS EXCLUSIVE MODE')
        with pytest.raises(RepositoryBusyError, match="lock timeout"):
            repo.set_state(training, TrainingState.ERROR)
        with pytest.raises(RepositoryError) as inside, transaction.atomic(using=alias):
            repo.set_state(training, TrainingState.ERROR)  # only the host can try again
        assert not isinstance(inside.value, RepositoryBusyError)
        other.rollback()
        repo.set_state(training, TrainingState.ERROR)
        assert repo.get_training(training).state is TrainingState.ERROR
    finally:
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        connection.close()
