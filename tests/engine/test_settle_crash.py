"""A process killed between any two settle steps: the callbacks' effects land exactly once.

Routes that keep a record settle each outcome in one order: record it, run its callbacks,
mark it done. A crash (``Crash`` is a ``BaseException``, like the SIGKILL it stands for:
after it the dead process does nothing more, its store calls included) is injected before
the k-th settle step for every k; a second process then finishes the work from the record.
Whatever k, the training ends as it ends without a crash, each outcome is counted once per
(send, receiver), and each removed client is removed and told once per (training, client).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.errors
from flnotify import Receiver, RetryPolicy, TrainingState
from flnotify.outbox import Outbox, OutboxDispatcher, OutboxState
from flnotify.repository import SendTally
from flnotify.testing import MemoryRequest, MemoryTransport

MODEL = uuid.UUID(int=7)
ANSWERS = st.sampled_from(["delivered", "rejected", "down"])
POLICIES = {
    "strict": flnotify.FailurePolicy.strict(),
    "tolerant": flnotify.FailurePolicy.tolerant(min_delivered_fraction=0.5, remove_after=1),
}


class Crash(BaseException):
    """The process died here (nothing of it runs any more)."""


class Fuse:
    """Counts settle steps; the ``at``-th one, and everything after it, crashes."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.steps = 0
        self.blown = False

    def step(self) -> None:
        if self.blown or self.steps == self.at:
            self.blown = True
            raise Crash
        self.steps += 1

    def alive(self) -> None:
        if self.blown:
            raise Crash


class DyingOutbox:
    """An outbox whose process may die: ``record`` and ``finish`` are settle steps."""

    def __init__(self, store: Outbox, fuse: Fuse) -> None:
        self._store = store
        self._fuse = fuse

    def record(self, *args: Any, **kwargs: Any) -> Any:
        self._fuse.step()
        return self._store.record(*args, **kwargs)

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        self._fuse.step()
        return self._store.finish(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._fuse.alive()
            return attribute(*args, **kwargs)

        return call


class DyingCallbacks:
    """Callbacks of a process that may die: each call is a settle step."""

    def __init__(self, inner: Any, fuse: Fuse) -> None:
        self._inner = inner
        self._fuse = fuse

    def on_success(self, delivery: flnotify.Delivery, /) -> Any:
        self._fuse.step()
        return self._inner.on_success(delivery)

    def on_error(self, delivery: flnotify.Delivery, /) -> Any:
        self._fuse.step()
        return self._inner.on_error(delivery)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _answer(plan: dict[str, str]) -> Any:
    def answer(request: MemoryRequest) -> int:
        what = plan.get(request.url, "delivered")
        if what == "down":
            raise flnotify.errors.ConnectError("refused", url=request.url)
        return 409 if what == "rejected" else 202

    return answer


def _told(transport: MemoryTransport) -> Counter[str]:
    """CLIENT_REMOVED notices per (removed client, endpoint told)."""
    told: Counter[str] = Counter()
    for request in transport.requests:
        document = json.loads(request.body)
        if document["notification_type"] == "CLIENT_REMOVED":
            told[f"{document['body']['client_uuid']}->{request.url}"] += 1
    return told


def _run(
    answers: list[str], policy: str, batch_size: int, crash_at: int | None, path: Path
) -> tuple[flnotify.TrainingSnapshot, Counter[str], SendTally, Fuse]:
    """One training round through the outbox; crash at settle step ``crash_at``, restart.

    Returns the training after it all, the notices told, the send's counts and the fuse.
    """
    actor = Receiver(uuid.UUID(int=1000), "http://actor.test/hook")
    clients = [
        Receiver(uuid.UUID(int=i + 1), f"http://client-{i}.test/hook") for i in range(len(answers))
    ]
    plan = {c.message_endpoint: a for c, a in zip(clients, answers, strict=True)}
    repo = flnotify.InMemoryTrainingRepository()
    training = repo.create_training(actor=actor, participants=clients, model_id=MODEL)
    repo.update_training(training.id, state=TrainingState.ONGOING, round=1)
    notification = flnotify.TrainingRoundStartNotification.from_training(
        repo.get_training(training.id)
    )
    transport = MemoryTransport(_answer(plan))
    clock = Clock()
    fuse = Fuse(crash_at)
    options: dict[str, Any] = {
        "transport": transport,
        "repository": repo,
        "retry": RetryPolicy.no_retries(),
        "failure_policy": POLICIES[policy],
    }
    with Outbox(path, clock=clock) as outbox:
        batch = outbox.put(notification)
        with flnotify.Notifier(**options) as first:
            callbacks = DyingCallbacks(first.engine.default_callbacks(notification), fuse)
            dispatcher = OutboxDispatcher(
                DyingOutbox(outbox, fuse),
                first,
                callbacks=callbacks,
                batch_size=batch_size,
            )
            with contextlib.suppress(Crash):
                dispatcher.run()
        clock.now += 3600  # the dead process's leases end
        with flnotify.Notifier(**options) as second:
            OutboxDispatcher(outbox, second, batch_size=batch_size).run()
        entries = outbox.entries(batch)
    assert {e.state for e in entries} == {OutboxState.DONE}
    # recording an outcome again changes nothing: read the send's counts that way
    first_entry = entries[0]
    assert first_entry.outcome is not None
    tally = repo.record_outcome(
        training.id, batch, len(entries), first_entry.receiver.id, first_entry.outcome
    ).tally
    return repo.get_training(training.id), _told(transport), tally, fuse


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    answers=st.lists(ANSWERS, min_size=1, max_size=5),
    policy=st.sampled_from(sorted(POLICIES)),
    batch_size=st.integers(1, 3),
    crash_at=st.integers(0, 16),
)
def test_outbox_a_crash_between_settle_steps_applies_each_effect_once(
    answers: list[str], policy: str, batch_size: int, crash_at: int, tmp_path: Path
) -> None:
    name = uuid.uuid4().hex
    logging.getLogger("flnotify").setLevel(logging.CRITICAL)  # removals log, as they should
    try:
        _check(answers, policy, batch_size, crash_at, tmp_path, name)
    finally:
        logging.getLogger("flnotify").setLevel(logging.NOTSET)


def _check(
    answers: list[str], policy: str, batch_size: int, crash_at: int, tmp_path: Path, name: str
) -> None:
    expected, told_once, counts, reference = _run(
        answers, policy, batch_size, None, tmp_path / f"{name}-a.db"
    )
    after, told, tally, fuse = _run(
        answers, policy, batch_size, crash_at, tmp_path / f"{name}-b.db"
    )
    assert fuse.blown == (crash_at < reference.steps)  # it crashed wherever there was a step
    assert after.state is expected.state
    assert after.participant_ids() == expected.participant_ids()
    assert told == told_once  # each removed client (and the actor) told once
    assert all(count == 1 for count in told.values()), told
    assert tally == counts  # each (send, receiver) counted once
    if POLICIES[policy].counts_deliveries:  # every receiver counted (strict counts failures)
        assert tally.pending == 0
