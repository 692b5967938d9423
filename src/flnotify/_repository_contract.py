# ruff: noqa: S101 - a test suite: plain asserts are the point
"""The tests any [`TrainingRepository`][] must pass, for pytest and for unittest.

The checks are written once; two shells run them:

* ``TrainingRepositoryContract`` / ``OutcomeTrackingContract``: pytest test classes (a
  ``repo`` fixture, parametrized states). They are built on first access, and only then is
  pytest imported: importing this module needs nothing but flnotify.
* ``TrainingRepositoryTests`` / ``OutcomeTrackingTests``: mixins for ``unittest.TestCase``
  (and so for Django's ``TransactionTestCase`` under ``manage.py test``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import attrs

from ._exceptions import TrainingNotFoundError
from ._types import Outcome, Receiver, ReceiverLike, TrainingSnapshot, TrainingState
from .repository import SendTally, TrainingRepository

__all__ = [
    "OutcomeTrackingContract",
    "OutcomeTrackingTests",
    "TrainingRepositoryContract",
    "TrainingRepositoryTests",
]
_THREADS = 8
_JOIN_TIMEOUT = 30.0


@attrs.frozen
class _Seeded:
    """What was put into the repository, to compare snapshots against."""

    id: UUID
    actor: Receiver
    participants: tuple[Receiver, ...]
    model_id: UUID
    round: int
    state: TrainingState


def _receivers(n: int, tag: str = "client") -> tuple[Receiver, ...]:
    return tuple(Receiver(uuid4(), f"https://{tag}-{i}.example.org/notify") for i in range(n))


def _endpoints(snapshot: TrainingSnapshot) -> dict[UUID, str]:
    return {p.id: p.message_endpoint for p in snapshot.participants}


def _run_together(workers: Sequence[Callable[[], None]]) -> None:
    """Start every worker in its own thread at the same moment; re-raise the first error."""
    barrier = threading.Barrier(len(workers), timeout=_JOIN_TIMEOUT)
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        try:
            barrier.wait()
            work()
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(_JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a worker thread did not finish"
    if errors:
        raise errors[0]


@contextlib.contextmanager
def _raises_not_found(training_id: UUID) -> Iterator[None]:
    """Expect TrainingNotFoundError carrying ``training_id`` from the block."""
    try:
        yield
    except TrainingNotFoundError as exc:
        named = exc.training_id
    else:
        named = None
        raise AssertionError("no TrainingNotFoundError was raised")
    assert named == training_id, f"the error names {named}, not {training_id}"


class _RepositoryChecks:
    """The hooks, helpers and checks both shells share (see the module's docstring)."""

    # -- hooks for subclasses

    def make_repository(self) -> TrainingRepository:
        """Return a new, empty repository (called once per test)."""
        msg = f"{type(self).__name__} must implement make_repository()"
        raise NotImplementedError(msg)

    def seed(
        self,
        repo: TrainingRepository,
        *,
        actor: ReceiverLike,
        participants: Sequence[ReceiverLike],
        model_id: UUID,
        round: int,
        state: TrainingState,
    ) -> UUID:
        """Store a training with these values in ``repo`` and return its id.

        The default calls ``repo.create_training(...)``; override it for storage without
        such a call.
        """
        create: Callable[..., TrainingSnapshot] | None = getattr(repo, "create_training", None)
        if create is None:
            msg = f"{type(repo).__name__} has no create_training(); override seed()"
            raise NotImplementedError(msg)
        snapshot = create(
            actor=actor, participants=participants, model_id=model_id, round=round, state=state
        )
        return snapshot.id

    def dispose_repository(self, repo: TrainingRepository) -> None:
        """Release a repository after a test; calls ``repo.close()`` if it has one."""
        close: Callable[[], Any] | None = getattr(repo, "close", None)
        if close is not None:
            close()

    # -- helpers

    def _seed(
        self,
        repo: TrainingRepository,
        n_participants: int = 3,
        *,
        round: int = 3,
        state: TrainingState = TrainingState.ONGOING,
    ) -> _Seeded:
        actor = _receivers(1, "actor")[0]
        participants = _receivers(n_participants)
        model_id = uuid4()
        training_id = self.seed(
            repo,
            actor=actor,
            participants=participants,
            model_id=model_id,
            round=round,
            state=state,
        )
        return _Seeded(training_id, actor, participants, model_id, round, state)

    def _assert_matches(
        self,
        snapshot: TrainingSnapshot,
        seeded: _Seeded,
        *,
        participants: Sequence[Receiver] | None = None,
        state: TrainingState | None = None,
    ) -> None:
        expected = seeded.participants if participants is None else participants
        want_state = seeded.state if state is None else state
        assert isinstance(snapshot, TrainingSnapshot), f"not a TrainingSnapshot: {snapshot!r}"
        assert snapshot.id == seeded.id, f"id {snapshot.id} != {seeded.id}"
        assert snapshot.model_id == seeded.model_id, f"model_id {snapshot.model_id}"
        assert snapshot.round == seeded.round, f"round {snapshot.round} != {seeded.round}"
        assert snapshot.state == want_state, f"state {snapshot.state} != {want_state}"
        assert snapshot.actor.id == seeded.actor.id, f"actor {snapshot.actor.id}"
        assert snapshot.actor.message_endpoint == seeded.actor.message_endpoint, (
            f"actor endpoint {snapshot.actor.message_endpoint!r}"
        )
        got = _endpoints(snapshot)
        assert len(snapshot.participants) == len(got), "participants listed twice"
        want = {p.id: p.message_endpoint for p in expected}
        assert got == want, (
            f"participants differ: {len(got.keys() - want.keys())} unexpected, "
            f"{len(want.keys() - got.keys())} missing, "
            f"{sum(got[k] != want[k] for k in got.keys() & want.keys())} with wrong endpoint"
        )

    # -- get_training

    def _check_get_training_returns_seeded_values(self, repo: TrainingRepository) -> None:
        """A seeded training reads back with every value it was stored with."""
        seeded = self._seed(repo)
        self._assert_matches(repo.get_training(seeded.id), seeded)

    def _check_get_training_keeps_trainings_apart(self, repo: TrainingRepository) -> None:
        """Two trainings do not share participants or values."""
        first = self._seed(repo, 2, round=0, state=TrainingState.INITIAL)
        second = self._seed(repo, 4, round=7, state=TrainingState.SWAG_ROUND)
        self._assert_matches(repo.get_training(first.id), first)
        self._assert_matches(repo.get_training(second.id), second)

    def _check_get_training_without_participants(self, repo: TrainingRepository) -> None:
        """A training may have no participants at all."""
        seeded = self._seed(repo, 0)
        assert repo.get_training(seeded.id).participants == ()

    def _check_get_training_unknown_id_raises(self, repo: TrainingRepository) -> None:
        """An unknown id raises TrainingNotFoundError carrying that id."""
        self._seed(repo)
        missing = uuid4()
        with _raises_not_found(missing):
            repo.get_training(missing)

    # -- remove_participant

    def _check_remove_participant_removes_exactly_one(self, repo: TrainingRepository) -> None:
        """Only the named participant goes; every other value stays."""
        seeded = self._seed(repo, 5)
        gone = seeded.participants[2]
        repo.remove_participant(seeded.id, gone.id)
        rest = [p for p in seeded.participants if p != gone]
        self._assert_matches(repo.get_training(seeded.id), seeded, participants=rest)

    def _check_remove_participant_is_idempotent(self, repo: TrainingRepository) -> None:
        """Removing the same participant twice equals removing it once.

        A repository that says what a call did (not ``None``) says ``True`` the first time
        and ``False`` the second: the default callbacks tell a removed client only once.
        """
        seeded = self._seed(repo, 3)
        gone = seeded.participants[0]
        first = repo.remove_participant(seeded.id, gone.id)
        second = repo.remove_participant(seeded.id, gone.id)
        assert (first, second) in ((None, None), (True, False)), (first, second)
        rest = seeded.participants[1:]
        self._assert_matches(repo.get_training(seeded.id), seeded, participants=rest)

    def _check_remove_non_participant_is_noop(self, repo: TrainingRepository) -> None:
        """Removing a stranger, or an actor who takes no part, changes nothing."""
        seeded = self._seed(repo, 3)
        other = self._seed(repo, 2)
        repo.remove_participant(seeded.id, uuid4())
        repo.remove_participant(seeded.id, seeded.actor.id)
        repo.remove_participant(seeded.id, other.participants[0].id)
        self._assert_matches(repo.get_training(seeded.id), seeded)
        self._assert_matches(repo.get_training(other.id), other)

    def _check_remove_last_participant(self, repo: TrainingRepository) -> None:
        """Removing everyone leaves an empty, still readable training."""
        seeded = self._seed(repo, 2)
        for participant in seeded.participants:
            repo.remove_participant(seeded.id, participant.id)
        self._assert_matches(repo.get_training(seeded.id), seeded, participants=())

    def _check_remove_participant_unknown_training_raises(self, repo: TrainingRepository) -> None:
        """Removing from an unknown training raises TrainingNotFoundError."""
        seeded = self._seed(repo)
        missing = uuid4()
        with _raises_not_found(missing):
            repo.remove_participant(missing, seeded.participants[0].id)
        self._assert_matches(repo.get_training(seeded.id), seeded)

    def _check_snapshot_does_not_change_afterwards(self, repo: TrainingRepository) -> None:
        """A snapshot is a copy: later changes do not show through it."""
        seeded = self._seed(repo, 3)
        before = repo.get_training(seeded.id)
        repo.remove_participant(seeded.id, seeded.participants[0].id)
        repo.set_state(seeded.id, TrainingState.ERROR)
        self._assert_matches(before, seeded)

    # -- set_state

    def _check_set_state_persists(self, repo: TrainingRepository, state: TrainingState) -> None:
        """Every state can be set and reads back; nothing else changes."""
        seeded = self._seed(repo, 3, state=TrainingState.INITIAL)
        repo.set_state(seeded.id, state)
        self._assert_matches(repo.get_training(seeded.id), seeded, state=state)

    def _check_set_state_every_transition(self, repo: TrainingRepository) -> None:
        """States can be set one after another, including to the current one."""
        seeded = self._seed(repo, 1)
        for state in [*TrainingState, *reversed(TrainingState)]:
            repo.set_state(seeded.id, state)
            assert repo.get_training(seeded.id).state == state

    def _check_set_state_unknown_training_raises(self, repo: TrainingRepository) -> None:
        """Setting the state of an unknown training raises TrainingNotFoundError."""
        seeded = self._seed(repo)
        missing = uuid4()
        with _raises_not_found(missing):
            repo.set_state(missing, TrainingState.COMPLETED)
        self._assert_matches(repo.get_training(seeded.id), seeded)

    # -- concurrency

    def _check_concurrent_remove_participant_loses_nothing(self, repo: TrainingRepository) -> None:
        """8 threads removing distinct participants at once lose no removal."""
        seeded = self._seed(repo, 200)
        doomed = seeded.participants[:150]
        slices = [doomed[k::_THREADS] for k in range(_THREADS)]

        def remover(chunk: Sequence[Receiver]) -> Callable[[], None]:
            def work() -> None:
                for participant in chunk:
                    repo.remove_participant(seeded.id, participant.id)

            return work

        _run_together([remover(chunk) for chunk in slices])
        remaining = seeded.participants[150:]
        self._assert_matches(repo.get_training(seeded.id), seeded, participants=remaining)

    def _check_concurrent_set_state_and_remove_do_not_corrupt(
        self, repo: TrainingRepository
    ) -> None:
        """Removals, state changes and reads racing each other leave consistent data."""
        seeded = self._seed(repo, 200)
        other = self._seed(repo, 5)
        original = {p.id: p.message_endpoint for p in seeded.participants}
        doomed = seeded.participants[:160]
        states = list(TrainingState)

        def remover(chunk: Sequence[Receiver]) -> Callable[[], None]:
            def work() -> None:
                for participant in chunk:
                    repo.remove_participant(seeded.id, participant.id)

            return work

        def state_setter(offset: int) -> Callable[[], None]:
            def work() -> None:
                for i in range(25):
                    repo.set_state(seeded.id, states[(i + offset) % len(states)])

            return work

        def reader() -> None:
            last = len(original)
            for _ in range(20):
                snapshot = repo.get_training(seeded.id)
                endpoints = _endpoints(snapshot)
                assert endpoints.items() <= original.items()
                assert len(snapshot.participants) == len(endpoints), "duplicates"
                assert len(endpoints) <= last, "a removed participant came back"
                last = len(endpoints)
                assert snapshot.model_id == seeded.model_id
                assert snapshot.round == seeded.round
                assert snapshot.actor.id == seeded.actor.id
                assert snapshot.state in states

        removers = [remover(doomed[k::4]) for k in range(4)]
        _run_together([*removers, state_setter(0), state_setter(2), state_setter(3), reader])

        after = repo.get_training(seeded.id)
        assert after.state in states
        remaining = seeded.participants[160:]
        self._assert_matches(after, seeded, participants=remaining, state=after.state)
        repo.set_state(seeded.id, TrainingState.COMPLETED)
        final = repo.get_training(seeded.id)
        self._assert_matches(final, seeded, participants=remaining, state=TrainingState.COMPLETED)
        self._assert_matches(repo.get_training(other.id), other)


class _OutcomeChecks(_RepositoryChecks):
    """The checks of `OutcomeTracking`.

    Outcomes are counted once per (send, receiver), a verdict is claimed once per send, and
    a client's run of failures grows once per send.
    """

    def _check_outcomes_are_counted_once_per_send_and_receiver(self, repo: Any) -> None:
        seeded = self._seed(repo, 3)
        a, b, c = (p.id for p in seeded.participants)
        first = repo.record_outcome(seeded.id, "send-1", 3, a, Outcome.DELIVERED)
        assert first.tally == SendTally(3, delivered=1)
        again = repo.record_outcome(seeded.id, "send-1", 3, a, Outcome.FAILED)  # redelivered
        assert again.tally == SendTally(3, delivered=1)
        repo.record_outcome(seeded.id, "send-1", 3, b, Outcome.REJECTED)
        last = repo.record_outcome(seeded.id, "send-1", 3, c, Outcome.FAILED)
        assert last.tally == SendTally(3, delivered=1, rejected=1, failed=1)
        assert last.tally.pending == 0
        other = repo.record_outcome(seeded.id, "send-2", 3, a, Outcome.FAILED)
        assert other.tally == SendTally(3, failed=1)  # sends are counted apart

    def _check_consecutive_failures_grow_once_per_send_and_reset(self, repo: Any) -> None:
        seeded = self._seed(repo, 1)
        client = seeded.participants[0].id
        runs = [
            repo.record_outcome(seeded.id, f"send-{i}", 1, client, Outcome.FAILED) for i in range(3)
        ]
        assert [r.consecutive_failures for r in runs] == [1, 2, 3]
        same = repo.record_outcome(seeded.id, "send-2", 1, client, Outcome.FAILED)
        assert same.consecutive_failures == 3  # the same send again counts nothing
        ok = repo.record_outcome(seeded.id, "send-3", 1, client, Outcome.DELIVERED)
        assert ok.consecutive_failures == 0
        after = repo.record_outcome(seeded.id, "send-4", 1, client, Outcome.FAILED)
        assert after.consecutive_failures == 1

    def _check_failure_runs_are_per_training(self, repo: Any) -> None:
        one, two = self._seed(repo, 1), self._seed(repo, 1)
        client = one.participants[0].id
        repo.record_outcome(one.id, "s1", 1, client, Outcome.FAILED)
        record = repo.record_outcome(two.id, "s2", 1, client, Outcome.FAILED)
        assert record.consecutive_failures == 1

    def _check_a_verdict_is_claimed_once_per_send(self, repo: Any) -> None:
        assert repo.claim_verdict("send-1") is True
        assert repo.claim_verdict("send-1") is False
        assert repo.claim_verdict("send-2") is True

    def _check_concurrent_outcomes_and_claims(self, repo: Any) -> None:
        seeded = self._seed(repo, _THREADS)
        wins: list[bool] = []
        lock = threading.Lock()

        def work(receiver: UUID) -> Callable[[], None]:
            def run() -> None:
                repo.record_outcome(seeded.id, "storm", _THREADS, receiver, Outcome.DELIVERED)
                won = repo.claim_verdict("storm")
                with lock:
                    wins.append(won)

            return run

        _run_together([work(p.id) for p in seeded.participants])
        final = repo.record_outcome(
            seeded.id, "storm", _THREADS, seeded.participants[0].id, Outcome.DELIVERED
        )
        assert final.tally == SendTally(_THREADS, delivered=_THREADS)
        assert sorted(wins) == [False] * (_THREADS - 1) + [True]


# --------------------------------------------------------------------------- the shells

_Check = Callable[..., None]
_PARAMETRIZED = "set_state_persists"  # the one check run once per TrainingState


def _checks_of(cls: type) -> dict[str, _Check]:
    """The checks a class defines itself, by test name (without ``test_``)."""
    return {
        name.removeprefix("_check_"): check
        for name, check in vars(cls).items()
        if name.startswith("_check_")
    }


def _named(test: _Check, name: str, check: _Check) -> _Check:
    test.__name__ = f"test_{name}"
    test.__qualname__ = f"test_{name}"
    test.__doc__ = check.__doc__
    return test


def _unittest_test(name: str, check: _Check) -> _Check:
    if name == _PARAMETRIZED:

        def each_state(self: Any) -> None:
            for state in TrainingState:
                with self.subTest(state=state):
                    check(self, self.repo, state)

        return _named(each_state, name, check)

    def test(self: Any) -> None:
        check(self, self.repo)

    return _named(test, name, check)


_TestCaseBase: type = object
if TYPE_CHECKING:
    import unittest

    _TestCaseBase = unittest.TestCase


class TrainingRepositoryTests(_RepositoryChecks, _TestCaseBase):  # type: ignore[misc]
    """The contract of [`TrainingRepository`][] as a mixin for ``unittest.TestCase``.

    The same checks as ``TrainingRepositoryContract`` (pytest), for ``unittest`` and
    ``manage.py test``: mix it into a test case and implement ``make_repository`` (and
    ``seed`` unless the repository has a ``create_training`` call)::

        from django.test import TransactionTestCase
        from flnotify.testing import TrainingRepositoryTests

        class RepositoryContract(TrainingRepositoryTests, TransactionTestCase):
            def make_repository(self):
                return DjangoTrainingRepository(model="trainings.Training", ...)

            def seed(self, repo, *, actor, participants, model_id, round, state):
                ...  # create the rows with the ORM, return the training's id

    ``setUp`` makes ``self.repo`` and registers ``dispose_repository`` as a cleanup. The
    state test runs each state as a ``subTest``. Use Django's ``TransactionTestCase``, not
    ``TestCase``: the concurrency checks call the repository from other threads, which
    have their own connections and cannot see a ``TestCase``'s uncommitted rows.
    """

    repo: TrainingRepository

    def setUp(self) -> None:
        """Make a fresh repository for the test; dispose of it at cleanup."""
        super().setUp()
        self.repo = self.make_repository()
        self.addCleanup(self.dispose_repository, self.repo)


class OutcomeTrackingTests(_OutcomeChecks, TrainingRepositoryTests):
    """``TrainingRepositoryTests`` plus the checks of `OutcomeTracking`, for ``unittest``."""


for _cls, _own in (
    (TrainingRepositoryTests, _RepositoryChecks),
    (OutcomeTrackingTests, _OutcomeChecks),
):
    for _name, _body in _checks_of(_own).items():
        setattr(_cls, f"test_{_name}", _unittest_test(_name, _body))


_PYTEST_DOC = """Tests every [`TrainingRepository`][] must pass (a pytest test class).

    Subclass it in a ``test_*.py`` file under a ``Test``-prefixed name and implement
    ``make_repository``; implement ``seed`` too unless the repository has a
    ``create_training`` call like the bundled ones::

        from flnotify.testing import TrainingRepositoryContract

        class TestMyRepository(TrainingRepositoryContract):
            def make_repository(self):
                return MyRepository(test_database_url)

            def seed(self, repo, *, actor, participants, model_id, round, state):
                return repo.insert_training_for_tests(actor, participants, model_id, round, state)

    Each test gets a fresh repository from ``make_repository`` (the ``repo`` fixture) and
    hands it to ``dispose_repository`` afterwards (by default: ``repo.close()`` if it
    exists). To use a pytest fixture such as ``tmp_path`` there, store it on ``self`` from
    an ``autouse`` fixture method of the subclass. The concurrency tests call the
    repository from 8 threads at once. Participant order is not checked. The class is
    built, and pytest imported, when it is first looked up; for ``unittest`` use
    ``TrainingRepositoryTests``. To get pytest's detailed assertion messages, call
    ``pytest.register_assert_rewrite("flnotify._repository_contract")`` in a
    ``conftest.py`` before anything imports this module.
    """


@functools.cache
def pytest_suites() -> dict[str, type]:
    """The pytest suites by name, built on first use (importing pytest, which only they need).

    [`flnotify.testing`][flnotify.testing] hands them out; importing this module needs no
    pytest.
    """
    import pytest

    def test_for(name: str, check: _Check) -> _Check:
        if name == _PARAMETRIZED:

            @pytest.mark.parametrize("state", list(TrainingState))
            def with_state(self: Any, repo: TrainingRepository, state: TrainingState) -> None:
                check(self, repo, state)

            return _named(with_state, name, check)

        def test(self: Any, repo: TrainingRepository) -> None:
            check(self, repo)

        return _named(test, name, check)

    @pytest.fixture
    def repo(self: Any) -> Iterator[TrainingRepository]:
        """A fresh repository from ``make_repository``, disposed of afterwards."""
        repository = self.make_repository()
        try:
            yield repository
        finally:
            self.dispose_repository(repository)

    def shell(name: str, bases: tuple[type, ...], own: type, doc: str) -> type:
        namespace: dict[str, Any] = {"__doc__": doc, "__module__": __name__, "repo": repo}
        namespace.update({f"test_{n}": test_for(n, c) for n, c in _checks_of(own).items()})
        return type(name, bases, namespace)

    contract = shell(
        "TrainingRepositoryContract", (_RepositoryChecks,), _RepositoryChecks, _PYTEST_DOC
    )
    tracking = shell(
        "OutcomeTrackingContract",
        (_OutcomeChecks, contract),
        _OutcomeChecks,
        "``TrainingRepositoryContract`` plus the checks of `OutcomeTracking` (pytest).",
    )
    return {"TrainingRepositoryContract": contract, "OutcomeTrackingContract": tracking}


if TYPE_CHECKING:

    class TrainingRepositoryContract(_RepositoryChecks):
        """Tests every `TrainingRepository` must pass (a pytest test class)."""

        def repo(self) -> Iterator[TrainingRepository]:
            """A fresh repository from ``make_repository``, disposed of afterwards."""
            ...

    class OutcomeTrackingContract(_OutcomeChecks, TrainingRepositoryContract):
        """``TrainingRepositoryContract`` plus the checks of `OutcomeTracking` (pytest)."""


PYTEST_SUITES = frozenset({"TrainingRepositoryContract", "OutcomeTrackingContract"})
"""The names of the suites that need pytest (see [`pytest_suites`][])."""


def __getattr__(name: str) -> Any:
    if name in PYTEST_SUITES:
        return pytest_suites()[name]
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
