"""The Django app: ``INSTALLED_APPS = [..., "flnotify.contrib.django"]``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig

__all__ = ["FlnotifyConfig"]


class FlnotifyConfig(AppConfig):
    """flnotify in a Django project: one ``FLNOTIFY`` settings block, objects per process.

    The delivery objects (the [`Notifier`][flnotify.Notifier], the repository) are built
    from the settings on first use in each process, so a process forked after start-up
    (a Gunicorn or Celery worker) builds its own, and they are closed at interpreter exit.
    Changing ``FLNOTIFY`` (``override_settings`` in tests) drops them.
    """

    name = "flnotify.contrib.django"
    label = "flnotify"
    verbose_name = "flnotify"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Drop the built objects whenever the ``FLNOTIFY`` setting changes."""
        from django.test.signals import setting_changed

        setting_changed.connect(_settings_changed, dispatch_uid="flnotify-settings")


def _settings_changed(*, setting: str, **_: Any) -> None:
    if setting == "FLNOTIFY":
        from ._process import reset

        reset()
