"""Deduplication across worker processes and restarts: uvicorn --workers 2 on loopback.

The same signed notification is sent many times, concurrently and one after another, to
a client served by two uvicorn worker processes sharing one id store (an SQLite file, or
a real redis-server started here); its handler must run exactly once, also when the
server is restarted between two sends (a deploy, within the timestamp tolerance).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest

import flnotify
import flnotify.codec
from flnotify import RoundBody, TrainingRoundStartNotification, generate_secret
from flnotify.signing import sign_payload
from helpers.receivers import UvicornWorkers, listening_socket, redis_server

SECRET = generate_secret()
ROUND = TrainingRoundStartNotification(
    receivers=(),
    body=RoundBody(round=2, global_model_uuid=UUID("8c0e2f4a-1b3c-4d5e-9f60-a1b2c3d4e5f6")),
    training_uuid=UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01"),
)
BODY = flnotify.codec.encode(ROUND)
CONCURRENT = 24
SEQUENTIAL = 6


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'handled.sqlite3'}"
    url: str = request.getfixturevalue("redis_url")
    return f"redis:{url}"


@contextlib.contextmanager
def client_workers(store: str, runs: Path) -> Iterator[UvicornWorkers]:
    env = {"FLN_SECRET": SECRET, "FLN_STORE": store, "FLN_RUNS": str(runs)}
    with listening_socket() as sock, UvicornWorkers("helpers.dedupe_app:app", sock, env) as server:
        yield server


def runs_of(runs: Path, msg_id: str) -> list[str]:
    if not runs.exists():
        return []
    return [line for line in runs.read_text().splitlines() if line.endswith(f" {msg_id}")]


def fresh_connections() -> httpx.AsyncClient:
    # a new connection per request, so the kernel spreads them over both workers
    limits = httpx.Limits(max_keepalive_connections=0, max_connections=CONCURRENT)
    return httpx.AsyncClient(limits=limits, timeout=20, trust_env=False)


async def send_all(url: str, msg_id: str, count: int) -> list[httpx.Response]:
    headers = sign_payload(BODY, SECRET, msg_id=msg_id)
    headers["content-type"] = "application/json"
    async with fresh_connections() as client:
        return await asyncio.gather(
            *(client.post(url, content=BODY, headers=headers) for _ in range(count))
        )


async def send_one_by_one(url: str, msg_id: str, count: int) -> list[httpx.Response]:
    async with fresh_connections() as client:
        answers = []
        for _ in range(count):
            headers = sign_payload(BODY, SECRET, msg_id=msg_id)  # a retry: a new timestamp
            answers.append(await client.post(url, content=BODY, headers=headers))
        return answers


async def both_workers_answer(url: str, limit: int = 200) -> set[str]:
    """Distinct ids until both workers have answered (bounded): dedup across processes."""
    pids: set[str] = set()
    async with fresh_connections() as client:
        for number in range(limit):
            headers = sign_payload(BODY, SECRET, msg_id=f"msg_warmup_{number}")
            answer = await client.post(url, content=BODY, headers=headers)
            assert answer.status_code == 202
            pids.add(answer.headers["x-worker-pid"])
            if len(pids) == 2:
                break
    return pids


def test_duplicates_run_the_handler_once_across_two_workers(
    store_spec: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    storms = []
    with client_workers(store_spec, runs) as server:
        assert len(asyncio.run(both_workers_answer(server.url))) == 2
        # which worker accepts a connection is the kernel's choice: storm again (bounded)
        # until one storm was answered by both, so duplicates met in two processes
        for number in range(8):
            msg_id = f"msg_storm_{number}"
            concurrent = asyncio.run(send_all(server.url, msg_id, CONCURRENT))
            sequential = asyncio.run(send_one_by_one(server.url, msg_id, SEQUENTIAL))
            storms.append((msg_id, concurrent, sequential))
            if len({answer.headers["x-worker-pid"] for answer in concurrent}) == 2:
                break
    assert len({answer.headers["x-worker-pid"] for answer in storms[-1][1]}) == 2
    for msg_id, concurrent, sequential in storms:
        statuses = [answer.status_code for answer in concurrent]
        assert statuses.count(202) == 1, statuses
        # the others: handled already (200) or being handled at that moment (503, retryable)
        assert set(statuses) <= {200, 202, 503}, statuses
        assert [answer.status_code for answer in sequential] == [200] * SEQUENTIAL
        assert len(runs_of(runs, msg_id)) == 1


def test_a_restart_between_two_sends_does_not_run_the_handler_again(
    store_spec: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    with client_workers(store_spec, runs) as server:
        (first,) = asyncio.run(send_one_by_one(server.url, "msg_deploy", 1))
        server.restart()  # a deploy: every worker process replaced
        after = asyncio.run(send_all(server.url, "msg_deploy", 8))
        fresh = asyncio.run(send_one_by_one(server.url, "msg_after_deploy", 1))
    assert first.status_code == 202
    assert [answer.status_code for answer in after] == [200] * 8
    assert [answer.status_code for answer in fresh] == [202]
    assert len(runs_of(runs, "msg_deploy")) == 1
    assert len(runs_of(runs, "msg_after_deploy")) == 1


def test_a_failed_handler_releases_its_claim_in_the_shared_store(
    store_spec: str, tmp_path: Path
) -> None:
    # the runs file is a directory: the handler fails (500), the claim must be released
    runs = tmp_path / "not-a-file"
    runs.mkdir()
    with client_workers(store_spec, runs) as server:
        failed = asyncio.run(send_one_by_one(server.url, "msg_flaky", 2))
    assert [answer.status_code for answer in failed] == [500, 500]  # both attempts ran
