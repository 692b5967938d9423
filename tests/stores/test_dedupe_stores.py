"""The id stores' contract (memory, SQLite, Redis) and their backend-error translation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flnotify.errors import ConfigurationError, IdStoreError
from flnotify.receiving import (
    AsyncIdStore,
    IdClaim,
    IdStore,
    InMemoryIdStore,
    RedisIdStore,
    SQLiteIdStore,
)
from helpers.receivers import free_port, redis_server


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


StoreFactory = Callable[[Clock], Any]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    made: list[Any] = []

    def memory(clock: Clock) -> InMemoryIdStore:
        return InMemoryIdStore(window_seconds=100, lease_seconds=10, clock=clock)

    def sqlite(clock: Clock) -> SQLiteIdStore:
        store = SQLiteIdStore(
            tmp_path / "ids.sqlite3", window_seconds=100, lease_seconds=10, clock=clock
        )
        made.append(store)
        return store

    def redis_store(clock: Clock) -> RedisIdStore:
        url: str = request.getfixturevalue("redis_url")
        store = RedisIdStore.from_url(
            url, prefix=f"test:{request.node.name}:", window_seconds=100, lease_seconds=10
        )
        made.append(store)
        return store

    yield {"memory": memory, "sqlite": sqlite, "redis": redis_store}[request.param]
    for store in made:
        store.close()  # a RedisIdStore's async client is closed in the loop that used it


def test_claim_complete_release(make_store: StoreFactory) -> None:
    store = make_store(Clock())
    assert isinstance(store, IdStore)
    assert isinstance(store, AsyncIdStore)
    assert store.claim("a") is IdClaim.CLAIMED
    assert store.claim("a") is IdClaim.IN_FLIGHT
    store.complete("a")
    assert store.claim("a") is IdClaim.HANDLED
    store.release("a")  # never forgets a handled id
    assert store.claim("a") is IdClaim.HANDLED
    assert store.claim("b") is IdClaim.CLAIMED
    store.release("b")
    assert store.claim("b") is IdClaim.CLAIMED


def test_async_twins(make_store: StoreFactory) -> None:
    store = make_store(Clock())

    async def main() -> list[IdClaim]:
        seen = [await store.aclaim("x"), await store.aclaim("x")]
        await store.acomplete("x")
        seen.append(await store.aclaim("x"))
        seen.append(await store.aclaim("y"))
        await store.arelease("y")
        seen.append(await store.aclaim("y"))
        if isinstance(store, RedisIdStore):
            await store.aclose()
        return seen

    assert asyncio.run(main()) == [
        IdClaim.CLAIMED,
        IdClaim.IN_FLIGHT,
        IdClaim.HANDLED,
        IdClaim.CLAIMED,
        IdClaim.CLAIMED,
    ]


def test_concurrent_claims_have_one_winner(make_store: StoreFactory) -> None:
    store = make_store(Clock())
    start = threading.Barrier(16)

    def claim(_: int) -> IdClaim:
        start.wait(timeout=10)
        result: IdClaim = store.claim("contended")
        return result

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(claim, range(16)))
    assert results.count(IdClaim.CLAIMED) == 1
    assert results.count(IdClaim.IN_FLIGHT) == 15


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_lease_and_window_expire_on_the_store_clock(kind: str, tmp_path: Path) -> None:
    clock = Clock()
    store: Any = (
        InMemoryIdStore(window_seconds=100, lease_seconds=10, clock=clock)
        if kind == "memory"
        else SQLiteIdStore(
            tmp_path / "x.sqlite3", window_seconds=100, lease_seconds=10, clock=clock
        )
    )
    assert store.claim("crashed") is IdClaim.CLAIMED  # its worker died mid-handler
    clock.now += 10.5
    assert store.claim("crashed") is IdClaim.CLAIMED  # the lease lapsed: a retry may run it
    store.complete("crashed")
    clock.now += 99
    assert store.claim("crashed") is IdClaim.HANDLED
    clock.now += 2
    assert store.claim("crashed") is IdClaim.CLAIMED  # the window passed
    store.close() if kind == "sqlite" else None


def test_redis_expiry_is_redis_own(redis_url: str) -> None:
    store = RedisIdStore.from_url(redis_url, prefix="ttl:", window_seconds=100, lease_seconds=10)
    client = redis.Redis.from_url(redis_url)
    try:
        store.claim("m")
        assert 9_000 < client.pttl("ttl:m") <= 10_000
        store.complete("m")
        assert 99_000 < client.pttl("ttl:m") <= 100_000
        assert client.get("ttl:m") == b"handled"
    finally:
        client.close()
        asyncio.run(store.aclose())


def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ids.sqlite3"
    with SQLiteIdStore(path) as first:
        assert first.claim("kept") is IdClaim.CLAIMED
        first.complete("kept")
    with SQLiteIdStore(path) as second:  # a restart
        assert second.claim("kept") is IdClaim.HANDLED


def _claim_in_process(path: str, start: Any, results: Any) -> None:
    with SQLiteIdStore(path) as store:
        start.wait(30)  # every process claims at the same moment
        results.put(store.claim("across-processes").value)


def test_sqlite_claims_are_atomic_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "ids.sqlite3")
    with SQLiteIdStore(path) as store:
        store.claim("warm")  # creates the schema first
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(path, start, results)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    claims = sorted(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert claims == ["claimed"] + ["in_flight"] * 3


def test_sqlite_errors_become_id_store_errors(tmp_path: Path) -> None:
    store = SQLiteIdStore(tmp_path / "missing-folder" / "ids.sqlite3")
    with pytest.raises(IdStoreError, match="sqlite id store failed") as caught:
        store.claim("x")
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert caught.value.store == "sqlite"


def test_redis_errors_become_id_store_errors() -> None:
    store = RedisIdStore.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens

    async def main() -> None:
        with pytest.raises(IdStoreError, match="redis id store failed"):
            await store.aclaim("x")
        await store.aclose()

    with pytest.raises(IdStoreError) as caught:
        store.claim("x")
    assert isinstance(caught.value.__cause__, redis.RedisError)
    asyncio.run(main())


def test_store_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteIdStore(tmp_path / "x", lease_seconds=0)
    with pytest.raises(ConfigurationError):
        RedisIdStore()
    with pytest.raises(ConfigurationError, match="sync client"):
        RedisIdStore(async_client=redis.asyncio.Redis()).claim("x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"client": "redis://127.0.0.1:6379/0"},
            r"takes a redis\.Redis client, not a str; for a URL use RedisIdStore\.from_url",
        ),
        (
            {"async_client": b"redis://127.0.0.1"},
            r"async_client=\.\.\.\) takes a redis\.asyncio\.Redis client, not a bytes",
        ),
        ({"client": 6379}, r"takes a redis\.Redis client, not int"),
    ],
)
def test_redis_store_refuses_what_is_not_a_client(kwargs: dict[str, object], message: str) -> None:
    """A URL where a client belongs is refused at once, not answered 503 on every request."""
    with pytest.raises(ConfigurationError, match=message) as caught:
        RedisIdStore(**kwargs)  # type: ignore[arg-type]
    assert "127.0.0.1" not in str(caught.value)  # a URL may hold a password: never echoed
