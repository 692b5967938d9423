"""Where trainings live: the repository protocols and two ready-made implementations.

flnotify only ever *reads* a training, removes a participant and sets a state, so that
is all [`TrainingRepository`][] asks of a host's storage. Hosts without a database of
their own can use [`InMemoryTrainingRepository`][] or [`SQLiteTrainingRepository`][],
which add the calls needed to create and update trainings.

Async hosts implement [`AsyncTrainingRepository`][] instead, or wrap a sync repository
in [`AsyncRepositoryAdapter`][]; [`is_async_repository`][] tells the two apart.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Protocol, TypeGuard, runtime_checkable
from uuid import UUID

import attrs

from ._closing import Closing
from ._exceptions import (
    ConfigurationError,
    RepositoryBusyError,
    RepositoryError,
    TrainingNotFoundError,
)
from ._sqlite import SQLiteConnection, fspath
from ._types import (
    Outcome,
    Receiver,
    ReceiverLike,
    TrainingSnapshot,
    TrainingState,
    as_receivers,
)
from ._validators import is_callable, positive

__all__ = [
    "AsyncRepositoryAdapter",
    "OutcomePruning",
    "OutcomeRecord",
    "OutcomeTracking",
    "SendTally",
    "is_async_repository",
    "tracks_outcomes",
]


class TrainingRepository(Protocol):
    """What flnotify needs from a host's storage of trainings (synchronous).

    Implementations must be safe to call from several threads at once. Run
    [`flnotify.testing.TrainingRepositoryContract`][] against yours.

    Transient errors: a call that fails because the store is busy for now (a lock held
    by another process, a serialization failure) and changed nothing raises
    [`RepositoryBusyError`][flnotify.errors.RepositoryBusyError]; callbacks that fail with it are
    tried again for a few seconds before they are reported. By default every other error
    is lasting: raise ``RepositoryBusyError`` (translated from your backend's error) to
    declare which of yours are transient. The bundled SQLite repository and
    `flnotify.contrib.django`'s do.
    """

    def get_training(self, training_id: UUID) -> TrainingSnapshot:
        """The training as it is now.

        Raises:
            TrainingNotFoundError: No training has this id.
        """
        ...

    def remove_participant(self, training_id: UUID, receiver_id: UUID) -> bool | None:
        """Remove one participant; a no-op if it takes no part (idempotent).

        Returns:
            ``True`` if this call removed it, ``False`` if it took no part (then the
            default callbacks do not tell it again), ``None`` if the repository cannot
            tell (then they tell it: at least once).

        Raises:
            TrainingNotFoundError: No training has this id.
        """
        ...

    def set_state(self, training_id: UUID, state: TrainingState) -> None:
        """Set the training's state.

        Raises:
            TrainingNotFoundError: No training has this id.
        """
        ...


class AsyncTrainingRepository(Protocol):
    """The async twin of [`TrainingRepository`][]: the same calls, as coroutines.

    Transient errors are raised as [`RepositoryBusyError`][flnotify.errors.RepositoryBusyError],
    as by [`TrainingRepository`][].
    """

    async def get_training(self, training_id: UUID) -> TrainingSnapshot:
        """The training as it is now.

        Raises:
            TrainingNotFoundError: No training has this id.
        """
        ...

    async def remove_participant(self, training_id: UUID, receiver_id: UUID) -> bool | None:
        """Remove one participant; a no-op if it takes no part (idempotent).

        Returns:
            ``True`` if this call removed it, ``False`` if it took no part, ``None`` if
            the repository cannot tell (see
            [`TrainingRepository.remove_participant`][flnotify.TrainingRepository.remove_participant]).

        Raises:
            TrainingNotFoundError: No training has this id.
        """
        ...

    async def set_state(self, training_id: UUID, state: TrainingState) -> None:
        """Set the training's state.

        Raises:
            TrainingNotFoundError: No training has this id.
        """
        ...


@attrs.frozen
class SendTally:
    """How the receivers of one send ended so far.

    Args:
        total: The send's receivers.
        delivered: Those that answered 2xx.
        rejected: Those that said no.
        failed: Those that could not be reached (or were skipped by an open breaker).
    """

    total: int
    delivered: int = 0
    rejected: int = 0
    failed: int = 0

    @property
    def pending(self) -> int:
        """Receivers without an outcome yet."""
        return max(0, self.total - self.delivered - self.rejected - self.failed)


@attrs.frozen
class OutcomeRecord:
    """What recording one outcome left behind: the send's tally, the client's failure run.

    Args:
        tally: The send's counts after this outcome.
        consecutive_failures: Failed notifications of this training in a row for this client
            (0 after a delivered or rejected one).
    """

    tally: SendTally
    consecutive_failures: int


class OutcomeTracking(Protocol):
    """An optional extension of a training repository: outcomes counted across processes.

    With it, a send's failure policy is decided once over all its receivers even when
    their outcomes arrive on different Celery workers or outbox dispatchers, and a client's
    consecutive failures survive restarts (``FailurePolicy.remove_after``). Without it the
    default callbacks count in memory, per process. Both bundled repositories implement
    it; run ``OutcomeTrackingContract`` (in ``flnotify.testing``) against yours. Methods may
    also be coroutine functions.
    """

    def record_outcome(
        self,
        training_id: UUID,
        send_id: str,
        send_size: int,
        receiver_id: UUID,
        outcome: Outcome,
    ) -> OutcomeRecord:
        """Count one receiver's outcome of one send, atomically and at most once.

        Recording the same (send, receiver) again changes nothing and returns the
        current counts (a redelivered callback must not count twice).
        """
        ...

    def claim_verdict(self, send_id: str) -> bool:
        """``True`` exactly once per send, for the caller that applies its verdict."""
        ...


@runtime_checkable
class OutcomePruning(Protocol):
    """An extension of [`OutcomeTracking`][flnotify.repository.OutcomeTracking]: old sends go.

    Outcome tracking keeps one row per (send, receiver) and one per send verdict; at one
    round a minute for 1,000 clients that is about 1.4 million rows a day. Both bundled
    repositories implement it; ``flnotify outbox prune-tracking`` calls it.
    """

    def prune_outcomes(self, before: float) -> int:
        """Forget sends whose last outcome is older than ``before``; how many sends.

        ``before`` is epoch seconds of the repository's clock; a send's outcomes and its
        verdict go. A consecutive-failure run is kept (it is one row per client, not per send).
        """
        ...


def tracks_outcomes(obj: object) -> bool:
    """Whether a repository implements [`OutcomeTracking`][flnotify.repository.OutcomeTracking]."""
    return callable(getattr(obj, "record_outcome", None)) and callable(
        getattr(obj, "claim_verdict", None)
    )


def is_async_repository(obj: object) -> TypeGuard[AsyncTrainingRepository]:
    """Whether ``obj.get_training`` is a coroutine function (an async repository)."""
    return inspect.iscoroutinefunction(getattr(obj, "get_training", None))


@attrs.define(eq=False)
class AsyncRepositoryAdapter:
    """Serve a sync [`TrainingRepository`][] as an async one via `asyncio.to_thread`.

    Args:
        repo: The repository to wrap; it must be thread-safe.
    """

    repo: TrainingRepository

    async def get_training(self, training_id: UUID) -> TrainingSnapshot:
        """See [`TrainingRepository.get_training`][]."""
        return await asyncio.to_thread(self.repo.get_training, training_id)

    async def remove_participant(self, training_id: UUID, receiver_id: UUID) -> bool | None:
        """See [`TrainingRepository.remove_participant`][]."""
        return await asyncio.to_thread(self.repo.remove_participant, training_id, receiver_id)

    async def set_state(self, training_id: UUID, state: TrainingState) -> None:
        """See [`TrainingRepository.set_state`][]."""
        await asyncio.to_thread(self.repo.set_state, training_id, state)


# --------------------------------------------------------------------------- validation


def _require_uuid(value: object, name: str) -> UUID:
    if not isinstance(value, UUID):
        msg = f"{name} must be a UUID, not {type(value).__name__}"
        raise ConfigurationError(msg)
    return value


def _require_round(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        msg = f"round must be an int, not {type(value).__name__}"
        raise ConfigurationError(msg)
    if value < 0:
        msg = f"round must be >= 0, not {value}"
        raise ConfigurationError(msg)
    return value


def _require_state(value: object) -> TrainingState:
    if not isinstance(value, TrainingState):
        msg = f"state must be a TrainingState, not {value!r}"
        raise ConfigurationError(msg)
    return value


def _to_receiver(value: object, name: str) -> Receiver:
    if not isinstance(value, ReceiverLike):
        msg = f"{name} ({type(value).__name__}) has no 'id' and 'message_endpoint' attributes"
        raise ConfigurationError(msg)
    endpoint = value.message_endpoint
    if not isinstance(endpoint, str):
        msg = f"{name}.message_endpoint must be a str, not {type(endpoint).__name__}"
        raise ConfigurationError(msg)
    return Receiver(_require_uuid(value.id, f"{name}.id"), endpoint)


def _to_participants(values: Iterable[ReceiverLike]) -> tuple[Receiver, ...]:
    """Validate participants, dropping repeated ids (the first position is kept)."""
    try:
        frozen = as_receivers(values)
    except TypeError as exc:
        raise ConfigurationError(f"participants: {exc}") from exc
    by_id: dict[UUID, Receiver] = {}
    for index, value in enumerate(frozen):
        receiver = _to_receiver(value, f"participants[{index}]")
        _check_consistent(by_id, receiver)
        by_id[receiver.id] = receiver
    return tuple(by_id.values())


def _check_consistent(seen: dict[UUID, Receiver], receiver: Receiver) -> None:
    known = seen.get(receiver.id)
    if known is not None and known.message_endpoint != receiver.message_endpoint:
        msg = (
            f"receiver {receiver.id} given twice with different endpoints "
            f"({known.message_endpoint!r} and {receiver.message_endpoint!r})"
        )
        raise ConfigurationError(msg)


# --------------------------------------------------------------------------- shared base


class _RepositoryBase(abc.ABC):
    """The public calls of the bundled repositories, written once over a few primitives.

    Public methods validate their arguments and delegate to the ``_``-prefixed
    primitives, which each backend implements atomically.
    """

    __slots__ = ()

    # -- the TrainingRepository protocol

    def get_training(self, training_id: UUID) -> TrainingSnapshot:
        """The training as it is now.

        Raises:
            TrainingNotFoundError: No training has this id.
            ConfigurationError: ``training_id`` is not a UUID.
        """
        return self._fetch(_require_uuid(training_id, "training_id"))

    def remove_participant(self, training_id: UUID, receiver_id: UUID) -> bool:
        """Remove one participant; a no-op if it takes no part (idempotent).

        Returns:
            ``True`` if this call removed it, ``False`` if it took no part.

        Raises:
            TrainingNotFoundError: No training has this id.
            ConfigurationError: An id is not a UUID.
        """
        return self._remove_participant(
            _require_uuid(training_id, "training_id"), _require_uuid(receiver_id, "receiver_id")
        )

    def set_state(self, training_id: UUID, state: TrainingState) -> None:
        """Set the training's state.

        Raises:
            TrainingNotFoundError: No training has this id.
            ConfigurationError: ``state`` is not a [`TrainingState`][].
        """
        self.update_training(training_id, state=state)

    # -- extra calls for hosts without storage of their own

    def add_receiver(self, receiver: ReceiverLike) -> Receiver:
        """Store a receiver's id and endpoint, replacing the endpoint if the id is known.

        Returns:
            The stored receiver as a plain [`Receiver`][].

        Raises:
            ConfigurationError: ``receiver`` lacks a UUID ``id`` or a str endpoint.
        """
        stored = _to_receiver(receiver, "receiver")
        self._upsert_receivers((stored,))
        return stored

    def create_training(
        self,
        *,
        actor: ReceiverLike,
        participants: Iterable[ReceiverLike],
        model_id: UUID,
        round: int = 0,
        state: TrainingState = TrainingState.INITIAL,
        training_id: UUID | None = None,
    ) -> TrainingSnapshot:
        """Create a training; the actor and participants are stored as receivers too.

        Participants given twice are kept once, at their first position.

        Args:
            actor: The user who starts the training.
            participants: The clients taking part, in the order snapshots list them.
            model_id: The global model's id.
            round: The round number to start at.
            state: The initial state.
            training_id: The id to use; a fresh `uuid.uuid4` if omitted.

        Returns:
            The snapshot of the new training.

        Raises:
            ConfigurationError: The id exists already, or an argument is invalid.
        """
        members = _to_participants(participants)
        stored_actor = _to_receiver(actor, "actor")
        _check_consistent({r.id: r for r in members}, stored_actor)
        snapshot = TrainingSnapshot(
            id=uuid.uuid4() if training_id is None else _require_uuid(training_id, "training_id"),
            model_id=_require_uuid(model_id, "model_id"),
            round=_require_round(round),
            participants=members,
            actor=stored_actor,
            state=_require_state(state),
        )
        self._insert(snapshot)
        return snapshot

    def update_training(
        self,
        training_id: UUID,
        *,
        round: int | None = None,
        model_id: UUID | None = None,
        state: TrainingState | None = None,
    ) -> TrainingSnapshot:
        """Change the given fields of a training, leaving ``None`` ones as they are.

        Returns:
            The snapshot after the change.

        Raises:
            TrainingNotFoundError: No training has this id.
            ConfigurationError: ``round`` is negative, or an argument has the wrong type.
        """
        return self._update(
            _require_uuid(training_id, "training_id"),
            round=None if round is None else _require_round(round),
            model_id=None if model_id is None else _require_uuid(model_id, "model_id"),
            state=None if state is None else _require_state(state),
        )

    def add_participant(self, training_id: UUID, receiver: ReceiverLike) -> None:
        """Append a participant (stored as a receiver too); a no-op if it takes part already.

        Raises:
            TrainingNotFoundError: No training has this id.
            ConfigurationError: An argument is invalid.
        """
        self._add_participant(
            _require_uuid(training_id, "training_id"), _to_receiver(receiver, "receiver")
        )

    def list_trainings(self) -> list[TrainingSnapshot]:
        """Every training, in the order they were created."""
        return self._fetch_all()

    # -- the OutcomeTracking extension

    def record_outcome(
        self,
        training_id: UUID,
        send_id: str,
        send_size: int,
        receiver_id: UUID,
        outcome: Outcome,
    ) -> OutcomeRecord:
        """Count one receiver's outcome of one send, at most once; see `OutcomeTracking`.

        Raises:
            ConfigurationError: An argument is invalid.
        """
        check_outcome(send_id, send_size, outcome)
        return self._record_outcome(
            _require_uuid(training_id, "training_id"),
            send_id,
            send_size,
            _require_uuid(receiver_id, "receiver_id"),
            outcome,
        )

    def claim_verdict(self, send_id: str) -> bool:
        """``True`` exactly once per send; see `OutcomeTracking`."""
        return self._claim_verdict(check_send_id(send_id))

    def prune_outcomes(self, before: float) -> int:
        """Forget sends whose last outcome is older than ``before``; how many sends.

        See [`OutcomePruning`][flnotify.repository.OutcomePruning].

        Raises:
            ConfigurationError: ``before`` is not a number.
        """
        if isinstance(before, bool) or not isinstance(before, (int, float)):
            msg = f"before must be epoch seconds (a number), got {before!r}"
            raise ConfigurationError(msg)
        return self._prune_outcomes(float(before))

    # -- primitives; each must be atomic and thread-safe

    @abc.abstractmethod
    def _fetch(self, training_id: UUID) -> TrainingSnapshot: ...

    @abc.abstractmethod
    def _fetch_all(self) -> list[TrainingSnapshot]: ...

    @abc.abstractmethod
    def _upsert_receivers(self, receivers: tuple[Receiver, ...]) -> None: ...

    @abc.abstractmethod
    def _insert(self, snapshot: TrainingSnapshot) -> None:
        """Store a new training and its receivers; ConfigurationError if the id is taken."""

    @abc.abstractmethod
    def _update(
        self,
        training_id: UUID,
        *,
        round: int | None,
        model_id: UUID | None,
        state: TrainingState | None,
    ) -> TrainingSnapshot: ...

    @abc.abstractmethod
    def _remove_participant(self, training_id: UUID, receiver_id: UUID) -> bool: ...

    @abc.abstractmethod
    def _add_participant(self, training_id: UUID, receiver: Receiver) -> None: ...

    @abc.abstractmethod
    def _record_outcome(
        self,
        training_id: UUID,
        send_id: str,
        send_size: int,
        receiver_id: UUID,
        outcome: Outcome,
    ) -> OutcomeRecord: ...

    @abc.abstractmethod
    def _claim_verdict(self, send_id: str) -> bool: ...

    @abc.abstractmethod
    def _prune_outcomes(self, before: float) -> int: ...


def check_send_id(send_id: object) -> str:
    """``send_id`` if it is a non-empty string (an `OutcomeTracking` argument).

    Raises:
        ConfigurationError: It is not.
    """
    if not isinstance(send_id, str) or not send_id:
        msg = f"send_id must be a non-empty string, got {send_id!r}"
        raise ConfigurationError(msg)
    return send_id


def check_outcome(send_id: object, send_size: object, outcome: object) -> None:
    """Check the arguments of `OutcomeTracking.record_outcome` that every store checks alike.

    Raises:
        ConfigurationError: One is invalid (named in the message).
    """
    check_send_id(send_id)
    if isinstance(send_size, bool) or not isinstance(send_size, int) or send_size < 1:
        msg = f"send_size must be an int >= 1, got {send_size!r}"
        raise ConfigurationError(msg)
    if not isinstance(outcome, Outcome):
        msg = f"outcome must be an Outcome, got {outcome!r}"
        raise ConfigurationError(msg)


def _receivers_of(snapshot: TrainingSnapshot) -> tuple[Receiver, ...]:
    """The actor and participants of a snapshot built by ``create_training``."""
    return (
        Receiver(snapshot.actor.id, snapshot.actor.message_endpoint),
        *(Receiver(p.id, p.message_endpoint) for p in snapshot.participants),
    )


# --------------------------------------------------------------------------- in memory


@attrs.define
class _Record:
    """A stored training; participants are an insertion-ordered set of ids."""

    model_id: UUID
    round: int
    actor_id: UUID
    state: TrainingState
    participant_ids: dict[UUID, None]


@attrs.define(eq=False)
class InMemoryTrainingRepository(_RepositoryBase):
    """Trainings in a dict, guarded by a lock; for tests and single-process hosts.

    Args:
        clock: Epoch seconds, for when outcomes were recorded (pruning).
    """

    clock: Callable[[], float] = attrs.field(
        default=time.time, validator=is_callable, kw_only=True, repr=False
    )
    _receivers: dict[UUID, Receiver] = attrs.field(factory=dict, init=False, repr=False)
    _trainings: dict[UUID, _Record] = attrs.field(factory=dict, init=False, repr=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _sends: dict[str, tuple[int, dict[UUID, Outcome]]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _last: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)
    _failures: dict[tuple[UUID, UUID], tuple[int, str]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _verdicts: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)

    def _record_outcome(
        self,
        training_id: UUID,
        send_id: str,
        send_size: int,
        receiver_id: UUID,
        outcome: Outcome,
    ) -> OutcomeRecord:
        with self._lock:
            total, outcomes = self._sends.setdefault(send_id, (send_size, {}))
            key = (training_id, receiver_id)
            if receiver_id not in outcomes:
                outcomes[receiver_id] = outcome
                self._last[send_id] = self.clock()
                run, last = self._failures.get(key, (0, ""))
                if outcome is not Outcome.FAILED:
                    self._failures[key] = (0, send_id)
                elif last != send_id:
                    self._failures[key] = (run + 1, send_id)
            counts = dict.fromkeys(Outcome, 0)
            for seen in outcomes.values():
                counts[seen] += 1
            tally = SendTally(
                total, counts[Outcome.DELIVERED], counts[Outcome.REJECTED], counts[Outcome.FAILED]
            )
            return OutcomeRecord(tally, self._failures.get(key, (0, ""))[0])

    def _claim_verdict(self, send_id: str) -> bool:
        with self._lock:
            if send_id in self._verdicts:
                return False
            self._verdicts[send_id] = self.clock()
            return True

    def _prune_outcomes(self, before: float) -> int:
        with self._lock:
            old = [send for send, at in self._last.items() if at < before]
            for send in old:
                del self._sends[send], self._last[send]
                self._verdicts.pop(send, None)
            for send in [v for v, at in self._verdicts.items() if at < before]:
                if send not in self._sends:  # a verdict of a send without outcomes
                    del self._verdicts[send]
            return len(old)

    def _record(self, training_id: UUID) -> _Record:
        try:
            return self._trainings[training_id]
        except KeyError:
            raise TrainingNotFoundError(training_id) from None

    def _snapshot(self, training_id: UUID, record: _Record) -> TrainingSnapshot:
        return TrainingSnapshot(
            id=training_id,
            model_id=record.model_id,
            round=record.round,
            participants=tuple(self._receivers[i] for i in record.participant_ids),
            actor=self._receivers[record.actor_id],
            state=record.state,
        )

    def _fetch(self, training_id: UUID) -> TrainingSnapshot:
        with self._lock:
            return self._snapshot(training_id, self._record(training_id))

    def _fetch_all(self) -> list[TrainingSnapshot]:
        with self._lock:
            return [self._snapshot(i, r) for i, r in self._trainings.items()]

    def _upsert_receivers(self, receivers: tuple[Receiver, ...]) -> None:
        with self._lock:
            self._receivers.update((r.id, r) for r in receivers)

    def _insert(self, snapshot: TrainingSnapshot) -> None:
        with self._lock:
            if snapshot.id in self._trainings:
                msg = f"a training with id {snapshot.id} exists already"
                raise ConfigurationError(msg)
            self._receivers.update((r.id, r) for r in _receivers_of(snapshot))
            self._trainings[snapshot.id] = _Record(
                model_id=snapshot.model_id,
                round=snapshot.round,
                actor_id=snapshot.actor.id,
                state=snapshot.state,
                participant_ids=dict.fromkeys(p.id for p in snapshot.participants),
            )

    def _update(
        self,
        training_id: UUID,
        *,
        round: int | None,
        model_id: UUID | None,
        state: TrainingState | None,
    ) -> TrainingSnapshot:
        with self._lock:
            record = self._record(training_id)
            if round is not None:
                record.round = round
            if model_id is not None:
                record.model_id = model_id
            if state is not None:
                record.state = state
            return self._snapshot(training_id, record)

    def _remove_participant(self, training_id: UUID, receiver_id: UUID) -> bool:
        with self._lock:
            participants = self._record(training_id).participant_ids
            if receiver_id not in participants:
                return False
            del participants[receiver_id]
            return True

    def _add_participant(self, training_id: UUID, receiver: Receiver) -> None:
        with self._lock:
            record = self._record(training_id)
            self._receivers[receiver.id] = receiver
            record.participant_ids.setdefault(receiver.id)


# --------------------------------------------------------------------------- sqlite

_SCHEMA_VERSION = 3
# 2: outcome tracking (send_outcomes, send_verdicts, participant_failures)
# 3: when outcomes and verdicts were recorded (pruning)
_TO_3 = """
ALTER TABLE send_outcomes ADD COLUMN recorded_at REAL NOT NULL DEFAULT 0;
ALTER TABLE send_verdicts ADD COLUMN claimed_at REAL NOT NULL DEFAULT 0;
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receivers (
    id TEXT PRIMARY KEY,
    message_endpoint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trainings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    model_id TEXT NOT NULL,
    round INTEGER NOT NULL CHECK (round >= 0),
    state TEXT NOT NULL,
    actor_id TEXT NOT NULL REFERENCES receivers (id)
);
CREATE TABLE IF NOT EXISTS participants (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    training_id TEXT NOT NULL REFERENCES trainings (id) ON DELETE CASCADE,
    receiver_id TEXT NOT NULL REFERENCES receivers (id),
    UNIQUE (training_id, receiver_id)
);
CREATE TABLE IF NOT EXISTS send_outcomes (
    send_id TEXT NOT NULL,
    receiver_id TEXT NOT NULL,
    training_id TEXT NOT NULL,
    total INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'rejected', 'failed')),
    recorded_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (send_id, receiver_id)
);
CREATE INDEX IF NOT EXISTS send_outcomes_recorded ON send_outcomes (recorded_at);
CREATE TABLE IF NOT EXISTS send_verdicts (
    send_id TEXT PRIMARY KEY,
    claimed_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS participant_failures (
    training_id TEXT NOT NULL,
    receiver_id TEXT NOT NULL,
    consecutive INTEGER NOT NULL,
    last_send TEXT NOT NULL,
    PRIMARY KEY (training_id, receiver_id)
);
"""

_UPSERT_RECEIVER = (
    "INSERT INTO receivers (id, message_endpoint) VALUES (?, ?) "
    "ON CONFLICT (id) DO UPDATE SET message_endpoint = excluded.message_endpoint"
)
_ADD_PARTICIPANT = (
    "INSERT INTO participants (training_id, receiver_id) VALUES (?, ?) "
    "ON CONFLICT (training_id, receiver_id) DO NOTHING"
)
_SELECT_TRAININGS = (
    "SELECT t.id, t.model_id, t.round, t.state, a.id, a.message_endpoint "
    "FROM trainings t JOIN receivers a ON a.id = t.actor_id"
)
_SELECT_PARTICIPANTS = (
    "SELECT p.training_id, r.id, r.message_endpoint "
    "FROM participants p JOIN receivers r ON r.id = p.receiver_id"
)

# The sends whose last outcome is older than ``?``, as one JSON array.
_OLD_SENDS = """
SELECT json_group_array(send_id) FROM (
    SELECT send_id FROM send_outcomes GROUP BY send_id HAVING MAX(recorded_at) < ?
)
"""
# Their verdicts, and old verdicts of sends that recorded no outcome here.
_PRUNE_VERDICTS = """
DELETE FROM send_verdicts WHERE send_id IN (SELECT value FROM json_each(?))
    OR (claimed_at < ? AND NOT EXISTS
        (SELECT 1 FROM send_outcomes AS o WHERE o.send_id = send_verdicts.send_id))
"""

_Row = tuple[str, str, int, str, str, str]


def _build(row: _Row, participants: list[Receiver]) -> TrainingSnapshot:
    training_id, model_id, round_, state, actor_id, actor_endpoint = row
    return TrainingSnapshot(
        id=UUID(training_id),
        model_id=UUID(model_id),
        round=round_,
        participants=participants,
        actor=Receiver(UUID(actor_id), actor_endpoint),
        state=TrainingState(state),
    )


_SQLITE_MAX = 2**63 - 1


def _sqlite_integer(name: str, value: int) -> int:
    """``value`` if SQLite can store it (64-bit signed), else a clear ConfigurationError."""
    if not -_SQLITE_MAX - 1 <= value <= _SQLITE_MAX:
        msg = f"{name} {value} is outside SQLite's integer range (at most {_SQLITE_MAX})"
        raise ConfigurationError(msg)
    return value


@attrs.define(eq=False)
class SQLiteTrainingRepository(_RepositoryBase, Closing):
    """Trainings in an SQLite database (stdlib `sqlite3`); creates its schema.

    One connection is shared by all threads behind a lock, each call is one
    transaction; files use WAL mode so other processes may read meanwhile. Use it as a
    context manager or call [`close`][].

    Args:
        path: The database file, or ``":memory:"`` for a private in-memory database.
        busy_timeout: Seconds to wait for another connection's write lock.
        clock: Epoch seconds, for when outcomes were recorded (pruning).

    Every `sqlite3` error (locked, disk full, corrupt file) is raised as a
    [`RepositoryError`][flnotify.errors.RepositoryError], never as it is; a database still busy or
    locked by another connection after ``busy_timeout`` as a
    [`RepositoryBusyError`][flnotify.errors.RepositoryBusyError] (transient: callbacks try again).

    Raises:
        RepositoryError: The file cannot be opened or is not an SQLite database.
        ConfigurationError: The file holds a schema of a newer flnotify.
    """

    path: str = attrs.field(converter=fspath)
    busy_timeout: float = attrs.field(default=5.0, validator=positive, repr=False)
    clock: Callable[[], float] = attrs.field(
        default=time.time, validator=is_callable, kw_only=True, repr=False
    )
    _db: SQLiteConnection = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._db = SQLiteConnection.open(
            self.path,
            label="SQLite database",
            error=RepositoryError,
            prepare=self._prepare,
            timeout=self.busy_timeout,
            wrap_errors=True,
            busy=RepositoryBusyError,
            synchronous="NORMAL",
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            msg = f"schema version {version} is newer than this flnotify ({_SCHEMA_VERSION})"
            raise ConfigurationError(msg)
        if version < _SCHEMA_VERSION:
            upgrade = _TO_3 if version == 2 else ""  # a version 2 file has the tables
            conn.executescript(
                f"BEGIN IMMEDIATE;{upgrade}{_SCHEMA}PRAGMA user_version = {_SCHEMA_VERSION};COMMIT;"
            )

    def close(self) -> None:
        """Close the connection; idempotent. Later calls raise [`ConfigurationError`][]."""
        self._db.close()

    def _transaction(self, *, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.transaction(self, write=write)

    @staticmethod
    def _select(conn: sqlite3.Connection, training_id: UUID) -> TrainingSnapshot:
        key = str(training_id)
        row = conn.execute(f"{_SELECT_TRAININGS} WHERE t.id = ?", (key,)).fetchone()
        if row is None:
            raise TrainingNotFoundError(training_id)
        rows = conn.execute(
            f"{_SELECT_PARTICIPANTS} WHERE p.training_id = ? ORDER BY p.seq", (key,)
        )
        return _build(row, [Receiver(UUID(rid), endpoint) for _, rid, endpoint in rows])

    @staticmethod
    def _require_exists(conn: sqlite3.Connection, training_id: UUID) -> None:
        found = conn.execute("SELECT 1 FROM trainings WHERE id = ?", (str(training_id),))
        if found.fetchone() is None:
            raise TrainingNotFoundError(training_id)

    def _fetch(self, training_id: UUID) -> TrainingSnapshot:
        with self._transaction() as conn:
            return self._select(conn, training_id)

    def _fetch_all(self) -> list[TrainingSnapshot]:
        with self._transaction() as conn:
            rows: list[_Row] = conn.execute(f"{_SELECT_TRAININGS} ORDER BY t.seq").fetchall()
            members: dict[str, list[Receiver]] = {row[0]: [] for row in rows}
            for training_id, rid, endpoint in conn.execute(
                f"{_SELECT_PARTICIPANTS} ORDER BY p.seq"
            ):
                members[training_id].append(Receiver(UUID(rid), endpoint))
        return [_build(row, members[row[0]]) for row in rows]

    def _upsert_receivers(self, receivers: tuple[Receiver, ...]) -> None:
        with self._transaction(write=True) as conn:
            conn.executemany(_UPSERT_RECEIVER, ((str(r.id), r.message_endpoint) for r in receivers))

    def _insert(self, snapshot: TrainingSnapshot) -> None:
        key = str(snapshot.id)
        with self._transaction(write=True) as conn:
            if conn.execute("SELECT 1 FROM trainings WHERE id = ?", (key,)).fetchone():
                msg = f"a training with id {snapshot.id} exists already"
                raise ConfigurationError(msg)
            conn.executemany(
                _UPSERT_RECEIVER,
                ((str(r.id), r.message_endpoint) for r in _receivers_of(snapshot)),
            )
            conn.execute(
                "INSERT INTO trainings (id, model_id, round, state, actor_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    key,
                    str(snapshot.model_id),
                    _sqlite_integer("round", snapshot.round),
                    snapshot.state.value,
                    str(snapshot.actor.id),
                ),
            )
            conn.executemany(_ADD_PARTICIPANT, ((key, str(p.id)) for p in snapshot.participants))

    def _update(
        self,
        training_id: UUID,
        *,
        round: int | None,
        model_id: UUID | None,
        state: TrainingState | None,
    ) -> TrainingSnapshot:
        with self._transaction(write=True) as conn:
            conn.execute(
                "UPDATE trainings SET round = coalesce(?, round), "
                "model_id = coalesce(?, model_id), state = coalesce(?, state) WHERE id = ?",
                (
                    None if round is None else _sqlite_integer("round", round),
                    None if model_id is None else str(model_id),
                    None if state is None else state.value,
                    str(training_id),
                ),
            )
            return self._select(conn, training_id)

    def _remove_participant(self, training_id: UUID, receiver_id: UUID) -> bool:
        with self._transaction(write=True) as conn:
            self._require_exists(conn, training_id)
            cursor = conn.execute(
                "DELETE FROM participants WHERE training_id = ? AND receiver_id = ?",
                (str(training_id), str(receiver_id)),
            )
            return cursor.rowcount > 0

    def _add_participant(self, training_id: UUID, receiver: Receiver) -> None:
        with self._transaction(write=True) as conn:
            self._require_exists(conn, training_id)
            conn.execute(_UPSERT_RECEIVER, (str(receiver.id), receiver.message_endpoint))
            conn.execute(_ADD_PARTICIPANT, (str(training_id), str(receiver.id)))

    def _record_outcome(
        self,
        training_id: UUID,
        send_id: str,
        send_size: int,
        receiver_id: UUID,
        outcome: Outcome,
    ) -> OutcomeRecord:
        training, receiver = str(training_id), str(receiver_id)
        with self._transaction(write=True) as conn:
            first = conn.execute(
                "INSERT INTO send_outcomes"
                " (send_id, receiver_id, training_id, total, outcome, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (send_id, receiver_id) DO NOTHING",
                (
                    send_id,
                    receiver,
                    training,
                    _sqlite_integer("send_size", send_size),
                    outcome.value,
                    self.clock(),
                ),
            ).rowcount
            if first and outcome is Outcome.FAILED:
                conn.execute(
                    "INSERT INTO participant_failures VALUES (?, ?, 1, ?) "
                    "ON CONFLICT (training_id, receiver_id) DO UPDATE SET "
                    "consecutive = consecutive + (last_send != excluded.last_send), "
                    "last_send = excluded.last_send",
                    (training, receiver, send_id),
                )
            elif first:
                conn.execute(
                    "DELETE FROM participant_failures WHERE training_id = ? AND receiver_id = ?",
                    (training, receiver),
                )
            counts = dict.fromkeys(Outcome, 0)
            total = send_size
            for value, n, stored_total in conn.execute(
                "SELECT outcome, COUNT(*), MAX(total) FROM send_outcomes WHERE send_id = ? "
                "GROUP BY outcome",
                (send_id,),
            ):
                counts[Outcome(value)] = n
                total = stored_total
            row = conn.execute(
                "SELECT consecutive FROM participant_failures "
                "WHERE training_id = ? AND receiver_id = ?",
                (training, receiver),
            ).fetchone()
        tally = SendTally(
            total, counts[Outcome.DELIVERED], counts[Outcome.REJECTED], counts[Outcome.FAILED]
        )
        return OutcomeRecord(tally, 0 if row is None else int(row[0]))

    def _claim_verdict(self, send_id: str) -> bool:
        with self._transaction(write=True) as conn:
            return bool(
                conn.execute(
                    "INSERT INTO send_verdicts (send_id, claimed_at) VALUES (?, ?) "
                    "ON CONFLICT (send_id) DO NOTHING",
                    (send_id, self.clock()),
                ).rowcount
            )

    def _prune_outcomes(self, before: float) -> int:
        with self._transaction(write=True) as conn:
            (sends,) = conn.execute(_OLD_SENDS, (before,)).fetchone()
            conn.execute(
                "DELETE FROM send_outcomes WHERE send_id IN (SELECT value FROM json_each(?))",
                (sends,),
            )
            conn.execute(_PRUNE_VERDICTS, (sends, before))
        return len(json.loads(sends))
