"""``examples/quickstart.py`` (linked from the README) runs and shows what the callbacks did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def test_quickstart_script_runs() -> None:
    result = subprocess.run(  # noqa: S603 - our own example with no arguments
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("): ", 1)[1].split(",")[0] for line in lines[:3]] == [
        "delivered",
        "rejected",
        "failed",
    ]
    assert lines[3:] == ["training state: ERROR", "participants left: 2 of 3"]
