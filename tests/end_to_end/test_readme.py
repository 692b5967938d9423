"""The README's test command and its docs build are what CI runs, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.DOTALL)
    assert len(commands) == 2, "the README has two set-up commands: run the demo, run the tests"
    demo, tests = commands
    assert "flnotify demo" in demo
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def test_ci_builds_the_docs_as_the_readme_says() -> None:
    """A fresh venv with the docs extra only: the docs need no test set-up."""
    readme = (ROOT / "README.md").read_text()
    found = re.findall(r"`(python3 -m venv \.docs-venv[^`]*)`", readme)
    assert len(found) == 1, "the README says in one line how to build the docs"
    (command,) = found
    assert "'.[docs]'" in command
    assert command.endswith("mkdocs build --strict")
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
