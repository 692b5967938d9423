"""Django settings in code: one call configures the project (no DJANGO_SETTINGS_MODULE)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import django
from django.conf import settings

import flnotify

FLNOTIFY: dict[str, Any] = {
    # flnotify's whole set-up: where trainings live, how requests are signed, how sends go
    "REPOSITORY": {
        "model": "flplatform.Training",
        "participants": "participants",
        "actor": "actor",
        "round": "round",
        "model_id": "model_id",
        "state": "state",  # stored as the TrainingState names
        "receiver_endpoint": "message_endpoint",
        "track_outcomes": True,  # tallies and failure runs in flnotify's tables
    },
    # each client's own secret from flnotify's ClientSecret table; unsigned without one
    "SIGNER": {"CLIENT_SECRETS": True},
    # the original platform's rule: an unreachable client puts the training into ERROR;
    # FailurePolicy.tolerant(min_delivered_fraction=0.8, remove_after=3) lets rounds go on
    "FAILURE_POLICY": flnotify.FailurePolicy.strict(),
    "NOTIFIER": {
        "retry": flnotify.RetryPolicy(max_attempts=3, initial_backoff=0.2),
        "deadline": 30.0,
    },
}


def setup(database: str | os.PathLike[str] = "db.sqlite3", *, debug: bool = False) -> None:
    """Configure Django for the FL platform with an SQLite database, then ``django.setup()``.

    Args:
        database: The SQLite file.
        debug: Django's DEBUG.
    """
    if settings.configured:
        return
    settings.configure(
        DEBUG=debug,
        SECRET_KEY="flplatform-example-not-secret",
        INSTALLED_APPS=["flnotify.contrib.django", "flplatform"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(Path(database)),
                "OPTIONS": {
                    # flnotify's callbacks write from worker threads: wait for the lock, and
                    # take it at the start of a transaction (no lock upgrades, no deadlocks)
                    "timeout": 20,
                    "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL;",
                },
            }
        },
        FLNOTIFY=FLNOTIFY,
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
