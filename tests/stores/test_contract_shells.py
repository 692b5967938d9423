"""The repository contract's two shells: pytest classes, and unittest mixins without pytest."""

from __future__ import annotations

import subprocess
import sys
import unittest

from flnotify import InMemoryTrainingRepository, TrainingRepository
from flnotify.testing import OutcomeTrackingTests, TrainingRepositoryTests


class InMemoryUnittestContract(OutcomeTrackingTests, unittest.TestCase):
    """The unittest shell, collected by pytest as a plain ``unittest.TestCase``."""

    def make_repository(self) -> TrainingRepository:
        return InMemoryTrainingRepository()


def test_the_unittest_shell_runs_every_check_under_unittest() -> None:
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromTestCase(InMemoryUnittestContract)
    result = unittest.TestResult()
    suite.run(result)
    assert result.wasSuccessful(), result.failures + result.errors
    names = loader.getTestCaseNames(InMemoryUnittestContract)
    assert "test_set_state_persists" in names
    assert "test_concurrent_outcomes_and_claims" in names
    assert result.testsRun == len(names) == 20  # 15 repository + 5 outcome checks


def test_a_missing_hook_fails_with_a_clear_error() -> None:
    class Unfinished(TrainingRepositoryTests, unittest.TestCase):
        pass

    result = unittest.TestResult()
    Unfinished("test_remove_last_participant").run(result)
    ((_, text),) = result.errors
    assert "Unfinished must implement make_repository()" in text


def test_importing_the_contracts_needs_no_pytest() -> None:
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None  # importing pytest now fails\n"
        "from flnotify.testing import TrainingRepositoryTests, OutcomeTrackingTests\n"
        "import flnotify._repository_contract\n"
        "try:\n"
        "    flnotify._repository_contract.TrainingRepositoryContract\n"
        "except ImportError:\n"
        "    print('pytest shell needs pytest')\n"
    )
    out = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout == "pytest shell needs pytest\n", out.stderr
