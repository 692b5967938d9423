"""Django settings in code: one call configures the project (no DJANGO_SETTINGS_MODULE)."""

from __future__ import annotations

import os
from pathlib import Path

import django
from django.conf import settings


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
        INSTALLED_APPS=["flplatform"],
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
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
