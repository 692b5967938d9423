from __future__ import annotations

from django.apps import AppConfig


class FlPlatformConfig(AppConfig):
    name = "flplatform"
    default_auto_field = "django.db.models.BigAutoField"
