"""The repository contract under Django's test runner (``manage.py test flhost``)."""

from __future__ import annotations

import uuid
from typing import Any

from django.test import TransactionTestCase

from flnotify.contrib.django import DjangoTrackingRepository
from flnotify.testing import OutcomeTrackingTests

from . import config, seeding


class RepositoryContract(OutcomeTrackingTests, TransactionTestCase):
    """TransactionTestCase: the suite's threads have connections of their own."""

    def make_repository(self) -> Any:
        return DjangoTrackingRepository(**config.REPOSITORY)

    def seed(self, repo: Any, **training: Any) -> uuid.UUID:
        return seeding.seed("default", **training)
