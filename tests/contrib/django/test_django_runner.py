"""The repository contract passes under Django's own test runner, on SQLite and PostgreSQL.

``DiscoverRunner`` runs the host app's ``tests.py`` (a ``TransactionTestCase`` with
``flnotify.testing.OutcomeTrackingTests``) in a fresh process, as ``manage.py test`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

RUN = """
import sys
import django
django.setup()
from django.test.runner import DiscoverRunner
failures = DiscoverRunner(verbosity=2, interactive=False).run_tests(["flhost"])
sys.exit(1 if failures else 0)
"""


def run_contract(database: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "flhost.settings",
        "FLHOST_DATABASE": database,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", RUN],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 20 tests" in result.stderr, result.stderr
    assert "test_concurrent_outcomes_and_claims" in result.stderr


def test_contract_under_django_runner_on_sqlite(tmp_path: Path) -> None:
    pytest.importorskip("django", minversion="5.1")
    check(run_contract(str(tmp_path / "flhost.sqlite3")))


def test_contract_under_django_runner_on_postgresql(postgres_url: str) -> None:
    pytest.importorskip("django", minversion="5.1")
    check(run_contract(postgres_url))
