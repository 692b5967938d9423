"""Suite-wide settings: in CI (``CI`` set), a skipped test is a failure, never silent."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pluggy
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every dependency is installed: {report.longrepr}"


# -- a real PostgreSQL server, started by the tests on 127.0.0.1 --------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Generator[str, None, None]:
    """One server for the session (fails, never skips, without PostgreSQL)."""
    from helpers.pgserver import PostgresMissingError, postgres_server

    try:
        server = postgres_server()
        url = server.__enter__()
    except PostgresMissingError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's server."""
    from helpers.pgserver import fresh_database

    return fresh_database(postgres_server)


# -- the Django configuration of this process (contrib app, example project) ---------------


@pytest.fixture(scope="session")
def django_site(
    postgres_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Generator[None, None, None]:
    """Django configured for every Django test of the session (see ``django_site.py``)."""
    pytest.importorskip("django", minversion="5.1")  # transaction_mode for SQLite
    from helpers.django_site import configure
    from helpers.pgserver import fresh_database

    configure(tmp_path_factory.mktemp("django"), fresh_database(postgres_server))
    yield
    from django.db import connections

    connections.close_all()


# -- a real Redis, started by the tests on 127.0.0.1 ---------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One redis-server for the session (the Celery broker; see ``receivers.py``)."""
    from helpers.receivers import redis_server

    with redis_server() as url:
        yield url
