"""Settings of the host project for ``manage.py test``-style runs (and for mypy's plugin).

The database comes from ``FLHOST_DATABASE``: a ``postgresql://`` URL or an SQLite path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

SECRET_KEY = "flhost-tests-not-secret"
INSTALLED_APPS = ["flnotify.contrib.django", "flhost"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database(target: str) -> dict[str, Any]:
    if target.startswith("postgresql://"):
        parts = urlsplit(target)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": target,
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        # a file, not the shared in-memory database: the contract writes from 8 threads
        "TEST": {"NAME": str(Path(target).with_suffix(".test.sqlite3"))},
    }


DATABASES = {"default": _database(os.environ.get("FLHOST_DATABASE", "flhost.sqlite3"))}

# The original platform's Celery configuration (pickle for its own tasks), with JSON
# accepted too: flnotify's task travels as JSON, and is refused at start-up otherwise.
CELERY_BROKER_URL = os.environ.get("FLHOST_BROKER", "memory://")
CELERY_TASK_SERIALIZER = "pickle"
CELERY_ACCEPT_CONTENT = ["pickle", "json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False


def _flnotify() -> dict[str, Any]:
    import flnotify

    from .config import REPOSITORY

    return {
        "REPOSITORY": {**REPOSITORY, "track_outcomes": True},
        "SIGNER": {"CLIENT_SECRETS": True},
        "NOTIFIER": {"retry": flnotify.RetryPolicy(max_attempts=2, initial_backoff=0.05)},
        # removed clients are told (the strict policy's default is not to)
        "FAILURE_POLICY": flnotify.FailurePolicy(tell_removed=True),
    }


FLNOTIFY: dict[str, Any] = _flnotify()
