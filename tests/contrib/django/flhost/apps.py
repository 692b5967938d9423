from __future__ import annotations

from django.apps import AppConfig


class FlHostConfig(AppConfig):
    name = "flhost"
    default_auto_field = "django.db.models.BigAutoField"
