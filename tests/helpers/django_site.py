"""The one Django configuration of the test process: Django's settings are per process.

Every Django test of the suite (the contrib app's and the example project's) runs on it:
the contrib app, the host app under ``tests/contrib/django/flhost`` and the example's
``flplatform``; an SQLite file as ``default`` and a database on the session's PostgreSQL
as ``postgres``. ``FLNOTIFY`` is empty; a test sets its block with ``override_settings``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parents[1]  # the tests folder
ROOT = HERE.parent
HOST_APPS = HERE / "contrib" / "django"
EXAMPLE = ROOT / "examples" / "django_server"
APPS = ["flnotify.contrib.django", "flhost", "flplatform"]
ALIASES = ("default", "postgres")


def postgres_database(url: str) -> dict[str, object]:
    """A ``DATABASES`` entry for a ``postgresql://user@host:port/name`` URL."""
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


def sqlite_database(path: Path) -> dict[str, object]:
    """An SQLite file that several threads write: wait for the lock, take it up front."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }


def configure(directory: Path, postgres_url: str) -> None:
    """Configure Django for the suite and create every table; once per process."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    for path in (HOST_APPS, EXAMPLE):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    if settings.configured:
        assert list(settings.INSTALLED_APPS) == APPS, "Django was configured elsewhere"
        return
    settings.configure(
        SECRET_KEY="flnotify-tests-not-secret",
        INSTALLED_APPS=APPS,
        DATABASES={
            "default": sqlite_database(directory / "default.sqlite3"),
            "postgres": postgres_database(postgres_url),
        },
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        FLNOTIFY={},
    )
    django.setup()
    for alias in ALIASES:
        call_command("migrate", run_syncdb=True, verbosity=0, database=alias)
