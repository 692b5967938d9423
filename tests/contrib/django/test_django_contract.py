"""The repository contract on the contrib app's Django repository, under pytest.

On the host app shaped like the original platform (``flhost``), against SQLite and a real
PostgreSQL. ``test_django_runner.py`` runs the same suites under Django's own runner.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from flnotify.contrib.django import DjangoTrackingRepository
from flnotify.testing import OutcomeTrackingContract


class _OnDatabase(OutcomeTrackingContract):
    alias = "default"

    @pytest.fixture(autouse=True)
    def _django(self, django_site: None) -> None:
        pass

    def make_repository(self) -> Any:
        from flhost import config, seeding

        seeding.empty(self.alias)
        return DjangoTrackingRepository(**config.REPOSITORY, using=self.alias)

    def seed(self, repo: Any, **training: Any) -> uuid.UUID:
        from flhost import seeding

        return seeding.seed(self.alias, **training)


class TestOnSQLite(_OnDatabase):
    alias = "default"


class TestOnPostgreSQL(_OnDatabase):
    alias = "postgres"
