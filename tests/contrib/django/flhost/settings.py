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
FLNOTIFY: dict[str, Any] = {}
