"""The host's Celery app, as a Django FL server makes it (``celery -A flhost.worker worker``).

Its own tasks would be pickled (``CELERY_TASK_SERIALIZER``); flnotify's delivery task is
registered from the ``FLNOTIFY`` settings by ``celery_delivery``.
"""

from __future__ import annotations

import os

import django
from celery import Celery  # type: ignore[import-untyped]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flhost.settings")
django.setup()

from flnotify.contrib.django import celery_delivery  # noqa: E402 - after django.setup()

app = Celery("flhost")
app.config_from_object("django.conf:settings", namespace="CELERY")
notifications = celery_delivery(app)
