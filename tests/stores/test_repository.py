from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from uuid import UUID, uuid4

import attrs
import pytest

from flnotify import (
    AsyncTrainingRepository,
    InMemoryTrainingRepository,
    SQLiteTrainingRepository,
    TrainingRepository,
)
from flnotify._exceptions import ConfigurationError, RepositoryError, TrainingNotFoundError
from flnotify._repository_contract import OutcomeTrackingContract, TrainingRepositoryContract
from flnotify._types import Receiver, ReceiverLike, TrainingSnapshot, TrainingState
from flnotify.repository import AsyncRepositoryAdapter, is_async_repository

Repo = InMemoryTrainingRepository | SQLiteTrainingRepository


# --------------------------------------------------------------------------- contract


class TestInMemoryContract(OutcomeTrackingContract):
    def make_repository(self) -> TrainingRepository:
        return InMemoryTrainingRepository()


class TestSQLiteMemoryContract(OutcomeTrackingContract):
    def make_repository(self) -> TrainingRepository:
        return SQLiteTrainingRepository(":memory:")


class TestSQLiteFileContract(OutcomeTrackingContract):
    tmp_path: Path

    @pytest.fixture(autouse=True)
    def _use_tmp_path(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def make_repository(self) -> TrainingRepository:
        return SQLiteTrainingRepository(self.tmp_path / "trainings.db")


@attrs.define
class _ProtocolOnly:
    """A host repository with only the protocol's calls, seeded by hand."""

    inner: InMemoryTrainingRepository = attrs.field(factory=InMemoryTrainingRepository)

    def get_training(self, training_id: UUID) -> TrainingSnapshot:
        return self.inner.get_training(training_id)

    def remove_participant(self, training_id: UUID, receiver_id: UUID) -> None:
        self.inner.remove_participant(training_id, receiver_id)

    def set_state(self, training_id: UUID, state: TrainingState) -> None:
        self.inner.set_state(training_id, state)


class TestCustomSeedContract(TrainingRepositoryContract):
    def make_repository(self) -> TrainingRepository:
        return _ProtocolOnly()

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
        assert isinstance(repo, _ProtocolOnly)
        assert not hasattr(repo, "create_training")
        snapshot = repo.inner.create_training(
            actor=actor, participants=participants, model_id=model_id, round=round, state=state
        )
        return snapshot.id


# --------------------------------------------------------------------------- helpers


@attrs.frozen
class HostUser:
    """A host app's user model: ReceiverLike without being a Receiver."""

    id: UUID
    message_endpoint: str
    name: str = "someone"


def receivers(n: int, tag: str = "c") -> list[Receiver]:
    return [Receiver(uuid4(), f"https://{tag}{i}.example.org/n") for i in range(n)]


ACTOR = Receiver(uuid4(), "https://actor.example.org/n")


@pytest.fixture(params=["memory", "sqlite-memory", "sqlite-file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repo]:
    repo: Repo
    if request.param == "memory":
        repo = InMemoryTrainingRepository()
    elif request.param == "sqlite-memory":
        repo = SQLiteTrainingRepository(":memory:")
    else:
        repo = SQLiteTrainingRepository(tmp_path / "t.db")
    yield repo
    if isinstance(repo, SQLiteTrainingRepository):
        repo.close()


def test_static_protocol_conformance() -> None:
    # checked by mypy: the bundled classes satisfy the protocols
    sync_repos: list[TrainingRepository] = [
        InMemoryTrainingRepository(),
        SQLiteTrainingRepository(":memory:"),
    ]
    async_repo: AsyncTrainingRepository = AsyncRepositoryAdapter(sync_repos[0])
    assert is_async_repository(async_repo)
    for repo in sync_repos:
        assert not is_async_repository(repo)
    assert isinstance(sync_repos[1], SQLiteTrainingRepository)
    sync_repos[1].close()


# --------------------------------------------------------------------------- create


def test_create_training_returns_snapshot_with_fresh_id(store: Repo) -> None:
    model_id = uuid4()
    members = receivers(3)
    snapshot = store.create_training(actor=ACTOR, participants=members, model_id=model_id)
    assert isinstance(snapshot.id, UUID)
    assert snapshot.model_id == model_id
    assert snapshot.round == 0
    assert snapshot.state is TrainingState.INITIAL
    assert snapshot.actor == ACTOR
    assert snapshot.participants == tuple(members)
    assert store.get_training(snapshot.id) == snapshot
    other = store.create_training(actor=ACTOR, participants=members, model_id=model_id)
    assert other.id != snapshot.id


def test_create_training_with_values(store: Repo) -> None:
    training_id = uuid4()
    snapshot = store.create_training(
        actor=ACTOR,
        participants=receivers(1),
        model_id=uuid4(),
        round=5,
        state=TrainingState.SWAG_ROUND,
        training_id=training_id,
    )
    assert snapshot.id == training_id
    assert store.get_training(training_id) == snapshot
    assert snapshot.round == 5
    assert snapshot.state is TrainingState.SWAG_ROUND


def test_create_training_converts_host_objects_to_receivers(store: Repo) -> None:
    user = HostUser(uuid4(), "https://user.example.org/n")
    snapshot = store.create_training(actor=user, participants=[user], model_id=uuid4())
    expected = Receiver(user.id, user.message_endpoint)
    assert snapshot.actor == expected
    assert snapshot.participants == (expected,)
    assert store.get_training(snapshot.id).participants == (expected,)


def test_create_training_keeps_order_and_drops_repeats(store: Repo) -> None:
    members = receivers(50)
    shuffled = members[25:] + members[:25]
    snapshot = store.create_training(
        actor=ACTOR, participants=[*shuffled, shuffled[3], shuffled[0]], model_id=uuid4()
    )
    assert snapshot.participants == tuple(shuffled)
    assert store.get_training(snapshot.id).participants == tuple(shuffled)


def test_create_training_accepts_generator(store: Repo) -> None:
    members = receivers(3)
    snapshot = store.create_training(
        actor=ACTOR, participants=(m for m in members), model_id=uuid4()
    )
    assert store.get_training(snapshot.id).participants == tuple(members)


def test_create_training_duplicate_id_raises(store: Repo) -> None:
    first = store.create_training(actor=ACTOR, participants=receivers(2), model_id=uuid4())
    with pytest.raises(ConfigurationError, match="exists already"):
        store.create_training(
            actor=ACTOR, participants=receivers(1), model_id=uuid4(), training_id=first.id
        )
    assert store.get_training(first.id) == first
    assert store.list_trainings() == [first]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("round", -1, "round must be >= 0"),
        ("round", True, "round must be an int"),
        ("round", "1", "round must be an int"),
        ("state", "ONGOING", "state must be a TrainingState"),
        ("model_id", str(uuid4()), "model_id must be a UUID"),
        ("training_id", str(uuid4()), "training_id must be a UUID"),
        ("actor", object(), "actor .* has no 'id'"),
        ("actor", Receiver("not-a-uuid", "https://x"), r"actor.id must be a UUID"),  # type: ignore[arg-type]
        ("actor", Receiver(uuid4(), None), "message_endpoint must be a str"),  # type: ignore[arg-type]
        ("participants", ACTOR, "not a single one"),
        ("participants", "https://x", "not a single one"),
        ("participants", [object()], r"participants: receivers\[0\]"),
        ("participants", [ACTOR, Receiver(ACTOR.id, "https://other")], "given twice"),
    ],
)
def test_create_training_rejects_bad_input(
    store: Repo, field: str, value: object, match: str
) -> None:
    values: dict[str, object] = {
        "actor": ACTOR,
        "participants": receivers(2),
        "model_id": uuid4(),
        field: value,
    }
    with pytest.raises(ConfigurationError, match=match):
        store.create_training(**values)  # type: ignore[arg-type]
    assert store.list_trainings() == []


def test_create_training_actor_conflicting_with_participant_raises(store: Repo) -> None:
    clash = Receiver(ACTOR.id, "https://elsewhere.example.org/n")
    with pytest.raises(ConfigurationError, match="given twice"):
        store.create_training(actor=ACTOR, participants=[clash], model_id=uuid4())


# --------------------------------------------------------------------------- update


def test_update_training_changes_only_given_fields(store: Repo) -> None:
    created = store.create_training(actor=ACTOR, participants=receivers(2), model_id=uuid4())
    model_id = uuid4()
    updated = store.update_training(created.id, round=4)
    assert updated == attrs.evolve(created, round=4)
    updated = store.update_training(created.id, model_id=model_id, state=TrainingState.ONGOING)
    assert updated == attrs.evolve(created, round=4, model_id=model_id, state=TrainingState.ONGOING)
    assert store.get_training(created.id) == updated
    assert store.update_training(created.id) == updated
    assert store.update_training(created.id, round=0).round == 0


def test_update_training_missing_raises(store: Repo) -> None:
    missing = uuid4()
    with pytest.raises(TrainingNotFoundError) as caught:
        store.update_training(missing, round=1)
    assert caught.value.training_id == missing
    with pytest.raises(TrainingNotFoundError):
        store.update_training(missing)


def test_update_training_negative_round_raises(store: Repo) -> None:
    created = store.create_training(
        actor=ACTOR, participants=receivers(1), model_id=uuid4(), round=2
    )
    with pytest.raises(ConfigurationError, match="round must be >= 0"):
        store.update_training(created.id, round=-1)
    with pytest.raises(ConfigurationError, match="state must be a TrainingState"):
        store.update_training(created.id, state="ERROR")  # type: ignore[arg-type]
    assert store.get_training(created.id) == created


def test_set_state_rejects_non_state(store: Repo) -> None:
    created = store.create_training(actor=ACTOR, participants=receivers(1), model_id=uuid4())
    with pytest.raises(ConfigurationError):
        store.set_state(created.id, "COMPLETED")  # type: ignore[arg-type]
    assert store.get_training(created.id) == created


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.get_training(str(uuid4())),
        lambda r: r.remove_participant(str(uuid4()), uuid4()),
        lambda r: r.set_state(str(uuid4()), TrainingState.ERROR),
        lambda r: r.add_participant(str(uuid4()), ACTOR),
    ],
)
def test_non_uuid_ids_raise_configuration_error(store: Repo, call: object) -> None:
    assert callable(call)
    with pytest.raises(ConfigurationError, match="must be a UUID"):
        call(store)


# --------------------------------------------------------------------------- receivers


def test_add_receiver_upserts_endpoint(store: Repo) -> None:
    user = HostUser(uuid4(), "https://old.example.org/n")
    stored = store.add_receiver(user)
    assert stored == Receiver(user.id, user.message_endpoint)
    assert type(stored) is Receiver
    created = store.create_training(actor=ACTOR, participants=[user], model_id=uuid4())
    moved = store.add_receiver(Receiver(user.id, "https://new.example.org/n"))
    assert store.get_training(created.id).participants == (moved,)
    with pytest.raises(ConfigurationError):
        store.add_receiver("https://x")  # type: ignore[arg-type]


def test_add_participant_appends_and_is_idempotent(store: Repo) -> None:
    members = receivers(3)
    created = store.create_training(actor=ACTOR, participants=members[:2], model_id=uuid4())
    store.add_participant(created.id, members[2])
    store.add_participant(created.id, members[0])
    assert store.get_training(created.id).participants == tuple(members)
    # the actor may become a participant; the endpoint is updated on the way
    moved_actor = Receiver(ACTOR.id, "https://moved.example.org/n")
    store.add_participant(created.id, moved_actor)
    after = store.get_training(created.id)
    assert after.participants == (*members, moved_actor)
    assert after.actor == moved_actor


def test_add_participant_after_removal_goes_last(store: Repo) -> None:
    members = receivers(3)
    created = store.create_training(actor=ACTOR, participants=members, model_id=uuid4())
    store.remove_participant(created.id, members[0].id)
    store.add_participant(created.id, members[0])
    assert store.get_training(created.id).participants == (members[1], members[2], members[0])


def test_add_participant_unknown_training_raises(store: Repo) -> None:
    with pytest.raises(TrainingNotFoundError):
        store.add_participant(uuid4(), ACTOR)


def test_list_trainings_in_creation_order(store: Repo) -> None:
    assert store.list_trainings() == []
    created = [
        store.create_training(actor=ACTOR, participants=receivers(i, f"t{i}"), model_id=uuid4())
        for i in range(5)
    ]
    store.remove_participant(created[3].id, created[3].participants[0].id)
    created[3] = store.get_training(created[3].id)
    assert store.list_trainings() == created


# --------------------------------------------------------------------------- sqlite only


def test_sqlite_file_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "persist.db"
    members = receivers(4)
    with SQLiteTrainingRepository(path) as repo:
        created = repo.create_training(actor=ACTOR, participants=members, model_id=uuid4(), round=1)
        repo.remove_participant(created.id, members[1].id)
        repo.set_state(created.id, TrainingState.ONGOING)
        expected = repo.get_training(created.id)
    with SQLiteTrainingRepository(str(path)) as reopened:
        assert reopened.get_training(created.id) == expected
        assert expected.participants == (members[0], members[2], members[3])
        assert reopened.list_trainings() == [expected]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()


def test_sqlite_two_instances_on_one_file_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SQLiteTrainingRepository(path) as a, SQLiteTrainingRepository(path) as b:
        created = a.create_training(actor=ACTOR, participants=receivers(2), model_id=uuid4())
        b.remove_participant(created.id, created.participants[0].id)
        assert a.get_training(created.id).participants == created.participants[1:]


def test_sqlite_memory_databases_are_private() -> None:
    with SQLiteTrainingRepository(":memory:") as a, SQLiteTrainingRepository(":memory:") as b:
        a.create_training(actor=ACTOR, participants=[], model_id=uuid4())
        assert b.list_trainings() == []


def test_sqlite_close_is_idempotent_and_final() -> None:
    repo = SQLiteTrainingRepository(":memory:")
    created = repo.create_training(actor=ACTOR, participants=[], model_id=uuid4())
    repo.close()
    repo.close()
    with pytest.raises(ConfigurationError, match="closed"):
        repo.get_training(created.id)
    with pytest.raises(ConfigurationError, match="closed"):
        repo.list_trainings()


def test_sqlite_context_manager_closes() -> None:
    with SQLiteTrainingRepository(":memory:") as repo:
        repo.add_receiver(ACTOR)
    with pytest.raises(ConfigurationError, match="closed"):
        repo.add_receiver(ACTOR)


def test_sqlite_unopenable_path_raises(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="cannot open") as caught:
        SQLiteTrainingRepository(tmp_path / "no" / "such" / "dir.db")
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_sqlite_not_a_database_raises(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite database at all" * 100)
    with pytest.raises(RepositoryError, match="cannot use") as caught:
        SQLiteTrainingRepository(path)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_sqlite_newer_schema_raises(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(ConfigurationError, match="newer"):
        SQLiteTrainingRepository(path)


# --------------------------------------------------------------------------- async


def test_async_adapter_runs_calls() -> None:
    repo = InMemoryTrainingRepository()
    members = receivers(3)
    created = repo.create_training(actor=ACTOR, participants=members, model_id=uuid4())
    adapter = AsyncRepositoryAdapter(repo)
    assert adapter.repo is repo

    async def main() -> TrainingSnapshot:
        await asyncio.gather(
            *(adapter.remove_participant(created.id, m.id) for m in members[:2]),
            adapter.set_state(created.id, TrainingState.COMPLETED),
        )
        with pytest.raises(TrainingNotFoundError):
            await adapter.get_training(uuid4())
        return await adapter.get_training(created.id)

    after = asyncio.run(main())
    assert after.participants == (members[2],)
    assert after.state is TrainingState.COMPLETED
    assert repo.get_training(created.id) == after


def test_is_async_repository() -> None:
    class NativeAsync:
        async def get_training(self, training_id: UUID) -> TrainingSnapshot:
            raise TrainingNotFoundError(training_id)

    assert is_async_repository(NativeAsync())
    assert is_async_repository(AsyncRepositoryAdapter(InMemoryTrainingRepository()))
    assert not is_async_repository(InMemoryTrainingRepository())
    assert not is_async_repository(_ProtocolOnly())
    assert not is_async_repository(object())
    assert not is_async_repository(None)
