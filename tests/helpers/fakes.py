"""Fakes shared by the test modules (which never import each other)."""

from __future__ import annotations


class FakeTime:
    """A clock and a sleep that never waits: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
