"""A process killed between any two settle steps: the callbacks' effects land exactly once.

Routes that keep a record settle each outcome in one order: record it, run its callbacks,
mark it done. A crash (``Crash`` is a ``BaseException``, like the SIGKILL it stands for:
after it the dead process does nothing more, its store calls included) is injected before
the k-th settle step for every k; a second process then finishes the work from the record.
Whatever k, the training ends as it ends without a crash, each outcome is counted once per
(send, receiver), and each removed client is removed and told once per (training, client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.errors
from flnotify import Receiver, RetryPolicy, TrainingState
from flnotify.mailbox import MAILBOX_ENDPOINT, Mailbox, MailboxDispatcher
from flnotify.outbox import Outbox, OutboxDispatcher, OutboxState
from flnotify.repository import SendTally
from flnotify.testing import MemoryRequest, MemoryTransport

MODEL = uuid.UUID(int=7)
ANSWERS = st.sampled_from(["delivered", "rejected", "down"])
POLICIES = {
    "strict": flnotify.FailurePolicy.strict(),
    "tolerant": flnotify.FailurePolicy.tolerant(min_delivered_fraction=0.5, remove_after=1),
}


# A simulated crash drops what the dead process had started (coroutines of callbacks it
# called but never awaited): Python warns about them, as it would not after a real SIGKILL.
DEAD_PROCESS_LEFTOVERS = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore:coroutine .* was never awaited"
)


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


class DyingStore:
    """A store of a process that may die: the methods named in ``steps`` are settle steps.

    After the crash every call raises. A call already running in a worker thread when the
    process died still ends (its transaction commits or not); ``wait_idle`` waits for that
    before the restart, as a dead process's last write is over before anyone looks again.
    """

    def __init__(self, store: Any, fuse: Fuse, steps: tuple[str, ...]) -> None:
        self._store = store
        self._fuse = fuse
        self._steps = steps
        self._running = 0
        self._idle = threading.Condition()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute
        check = self._fuse.step if name in self._steps else self._fuse.alive

        def call(*args: Any, **kwargs: Any) -> Any:
            check()
            with self._idle:
                self._running += 1
            try:
                return attribute(*args, **kwargs)
            finally:
                with self._idle:
                    self._running -= 1
                    self._idle.notify_all()

        return call

    def wait_idle(self) -> None:
        with self._idle:
            assert self._idle.wait_for(lambda: self._running == 0, timeout=30)


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
    """CLIENT_REMOVED notices per (removed client, endpoint told), as receivers count them.

    A receiver acts on a message once per ``webhook-id``: a notice sent again after a
    crash under the same id is one notice; under another id it would be a second.
    """
    ids: dict[str, set[str]] = {}
    for request in transport.requests:
        document = json.loads(request.body)
        if document["notification_type"] == "CLIENT_REMOVED":
            key = f"{document['body']['client_uuid']}->{request.url}"
            ids.setdefault(key, set()).add(request.headers["webhook-id"])
    return Counter({key: len(seen) for key, seen in ids.items()})


def _round(
    answers: list[str], endpoint: Callable[[int], str]
) -> tuple[
    flnotify.InMemoryTrainingRepository,
    flnotify.TrainingSnapshot,
    list[Receiver],
    flnotify.TrainingRoundStartNotification,
]:
    """An ONGOING training at round 1 with one client per answer, and its round-start."""
    actor = Receiver(uuid.UUID(int=1000), "http://actor.test/hook")
    clients = [Receiver(uuid.UUID(int=i + 1), endpoint(i)) for i in range(len(answers))]
    repo = flnotify.InMemoryTrainingRepository()
    training = repo.create_training(actor=actor, participants=clients, model_id=MODEL)
    repo.update_training(training.id, state=TrainingState.ONGOING, round=1)
    notification = flnotify.TrainingRoundStartNotification.from_training(
        repo.get_training(training.id)
    )
    return repo, training, clients, notification


def _pushed(i: int) -> str:
    return f"http://client-{i}.test/hook"


def _run(
    answers: list[str], policy: str, batch_size: int, crash_at: int | None, path: Path
) -> tuple[flnotify.TrainingSnapshot, Counter[str], SendTally, Fuse]:
    """One training round through the outbox; crash at settle step ``crash_at``, restart.

    Returns the training after it all, the notices told, the send's counts and the fuse.
    """
    repo, training, clients, notification = _round(answers, _pushed)
    plan = {c.message_endpoint: a for c, a in zip(clients, answers, strict=True)}
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
            dying = DyingStore(outbox, fuse, ("record", "finish"))
            dispatcher = OutboxDispatcher(
                dying,
                first,
                callbacks=callbacks,
                batch_size=batch_size,
            )
            with contextlib.suppress(Crash):
                dispatcher.run()
        dying.wait_idle()
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


@DEAD_PROCESS_LEFTOVERS
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


# -- the mailbox: the in-process route, then a dispatcher adopting after the crash -----------


async def _answer_polls(store: Mailbox, plan: dict[uuid.UUID, int], done: asyncio.Event) -> None:
    """The polling clients: fetch what is offered and acknowledge it with the planned status.

    They look again when the store says mail was queued (no timed polling), until ``done``.
    """
    loop = asyncio.get_running_loop()
    mail = asyncio.Event()

    def queued(_: frozenset[uuid.UUID]) -> None:
        with contextlib.suppress(RuntimeError):  # this loop is closed: nobody waits
            loop.call_soon_threadsafe(mail.set)

    unsubscribe = store.signals.on_mail(queued)
    try:
        while not done.is_set():
            mail.clear()
            fetched = False
            for client, status in plan.items():
                letters = await asyncio.to_thread(store.fetch, client, 10)
                if letters:
                    fetched = True
                    acks = [(letter.message_id, status) for letter in letters]
                    await asyncio.to_thread(store.ack, client, acks)
            if not fetched:
                woken = [asyncio.ensure_future(mail.wait()), asyncio.ensure_future(done.wait())]
                _, waiting = await asyncio.wait(woken, return_when=asyncio.FIRST_COMPLETED)
                for future in waiting:
                    future.cancel()
    finally:
        unsubscribe()


def _run_polling(
    answers: list[str], policy: str, crash_at: int | None, path: Path
) -> tuple[flnotify.TrainingSnapshot, Counter[str], Fuse]:
    repo, training, clients, notification = _round(answers, lambda _: MAILBOX_ENDPOINT)
    plan = {c.id: (409 if a == "rejected" else 202) for c, a in zip(clients, answers, strict=True)}
    transport = MemoryTransport(lambda _: 202)  # the actor, told of removals
    clock = Clock()
    fuse = Fuse(crash_at)
    options: dict[str, Any] = {
        "transport": transport,
        "repository": repo,
        "retry": RetryPolicy.no_retries(),
        "failure_policy": POLICIES[policy],
    }

    dyings: list[DyingStore] = []

    async def first_process(store: Mailbox) -> None:
        dying = DyingStore(store, fuse, ("settle",))
        dyings.append(dying)
        with flnotify.Notifier(mailbox=dying, **options) as notifier:
            callbacks = DyingCallbacks(notifier.engine.default_callbacks(notification), fuse)
            done = asyncio.Event()
            clients_task = asyncio.create_task(_answer_polls(store, plan, done))
            try:
                await notifier.asend(notification, callbacks)
            except Crash:
                pass
            finally:
                done.set()
                await clients_task

    async def second_process(store: Mailbox) -> None:
        with flnotify.Notifier(mailbox=store, **options) as notifier:
            done = asyncio.Event()
            clients_task = asyncio.create_task(_answer_polls(store, plan, done))
            try:
                await MailboxDispatcher(store, notifier, poll_interval=0.01).arun_once()
            finally:
                done.set()
                await clients_task

    with Mailbox(path, clock=clock) as store:
        asyncio.run(first_process(store))
        dyings[0].wait_idle()
        clock.now += 120  # the dead process's lease ends (acknowledgements are still due)
        asyncio.run(second_process(store))
    return repo.get_training(training.id), _told(transport), fuse


@DEAD_PROCESS_LEFTOVERS
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    answers=st.lists(st.sampled_from(["delivered", "rejected"]), min_size=1, max_size=4),
    policy=st.sampled_from(sorted(POLICIES)),
    crash_at=st.integers(0, 10),
)
def test_mailbox_a_crash_between_settle_steps_applies_each_effect_once(
    answers: list[str], policy: str, crash_at: int, tmp_path: Path
) -> None:
    name = uuid.uuid4().hex
    logging.getLogger("flnotify").setLevel(logging.CRITICAL)
    try:
        expected, told_once, _ = _run_polling(answers, policy, None, tmp_path / f"{name}-a.db")
        after, told, fuse = _run_polling(answers, policy, crash_at, tmp_path / f"{name}-b.db")
    finally:
        logging.getLogger("flnotify").setLevel(logging.NOTSET)
    # one callback per receiver and at least one settle: a step to crash at, whatever the
    # acknowledgements' batching (which varies with timing) made of the rest
    if crash_at <= len(answers):
        assert fuse.blown
    assert after.state is expected.state
    assert after.participant_ids() == expected.participant_ids()
    assert told == told_once
    assert all(count == 1 for count in told.values()), told


# -- Celery with late acks: a worker killed mid-task, the broker redelivers the task ----------


def _run_celery(
    answers: list[str], policy: str, chunk_size: int, crash_at: int | None
) -> tuple[flnotify.TrainingSnapshot, Counter[str], Fuse]:
    """A round through CeleryDelivery's task; a crash, then the same task messages again."""
    from celery import Celery  # type: ignore[import-untyped]

    from flnotify.contrib.celery import CeleryDelivery

    repo, training, clients, notification = _round(answers, _pushed)
    plan = {c.message_endpoint: a for c, a in zip(clients, answers, strict=True)}
    transport = MemoryTransport(_answer(plan))
    fuse = Fuse(crash_at)
    fuses = [fuse]  # the process that runs the callbacks now

    def training_callbacks(repository: Any) -> Any:
        registry = flnotify.Settings().default_callbacks
        inner = registry.training_callbacks(repository, POLICIES[policy], sender=None)
        return DyingCallbacks(inner, fuses[0])

    def worker() -> CeleryDelivery:
        app = Celery(f"crash-{uuid.uuid4().hex}", broker="memory://", set_as_current=False)
        return CeleryDelivery(
            app,
            repository_factory=lambda: repo,
            transport_factory=lambda: transport,
            callbacks={"training": training_callbacks},
            chunk_size=chunk_size,
            retry=RetryPolicy.no_retries(),
            failure_policy=POLICIES[policy],
        )

    sent: list[tuple[Any, Any]] = []  # what the broker holds: each chunk's task message
    first = worker()
    first.task.apply_async = lambda args, kwargs, **_: sent.append((args, kwargs))
    first.enqueue(notification, callbacks="training")
    try:
        for args, kwargs in sent:  # the worker runs the chunks, and dies at the fuse
            with contextlib.suppress(Crash):
                first.task.apply(args=args, kwargs=kwargs, throw=True)
            if fuse.blown:
                break
    finally:
        first.close()
    fuses[0] = Fuse(None)  # a new worker process: the broker redelivers every unacked message
    second = worker()
    try:
        for args, kwargs in sent:
            second.task.apply(args=args, kwargs=kwargs, throw=True)
    finally:
        second.close()
    return repo.get_training(training.id), _told(transport), fuse


@DEAD_PROCESS_LEFTOVERS
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    answers=st.lists(ANSWERS, min_size=1, max_size=4),
    policy=st.sampled_from(sorted(POLICIES)),
    chunk_size=st.integers(1, 3),
    crash_at=st.integers(0, 6),
)
def test_celery_a_crash_mid_task_then_redelivery_applies_each_effect_once(
    answers: list[str], policy: str, chunk_size: int, crash_at: int
) -> None:
    logging.getLogger("flnotify").setLevel(logging.CRITICAL)
    try:
        expected, _, reference = _run_celery(answers, policy, chunk_size, None)
        after, _, fuse = _run_celery(answers, policy, chunk_size, crash_at)
    finally:
        logging.getLogger("flnotify").setLevel(logging.NOTSET)
    assert fuse.blown == (crash_at < reference.steps)
    assert after.state is expected.state
    assert after.participant_ids() == expected.participant_ids()
