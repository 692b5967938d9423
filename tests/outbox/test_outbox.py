"""The durable outbox: nothing lost in a crash, leases, outcomes recorded exactly once."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest

import flnotify
import flnotify.errors
from flnotify import EndpointPolicy, Outcome, Receiver, RetryPolicy, TrainingState
from flnotify.errors import NoOutboxError, OutboxError
from flnotify.outbox import Claim, Outbox, OutboxDispatcher, OutboxState, open_outbox
from flnotify.testing import MemoryRequest, MemoryTransport, RecordingCallbacks
from flnotify.transports import HttpResponse
from helpers.servers import FaultServer

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "outbox_process.py"
MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")


class Clock:
    """An outbox clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def receivers(n: int, url: str = "http://client-{i}.test/msg") -> list[Receiver]:
    return [Receiver(uuid.UUID(int=i + 1), url.format(i=i)) for i in range(n)]


def start(rs: list[Receiver]) -> flnotify.TrainingStartNotification:
    return flnotify.TrainingStartNotification(
        receivers=rs, body=flnotify.GlobalModelBody(global_model_uuid=MODEL), training_uuid=MODEL
    )


def deliveries_for(claim: Claim, outcome: Outcome = Outcome.DELIVERED) -> list[flnotify.Delivery]:
    notification = start([e.receiver for e in claim.entries])
    return [
        flnotify.Delivery(
            receiver=e.receiver,
            notification=notification,
            outcome=outcome,
            message_id=e.message_id,
            attempts=1,
            elapsed=0.01,
            status_code=202,
        )
        for e in claim.entries
    ]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "outbox.db")


# -- storing ------------------------------------------------------------------------------


def test_put_commits_every_delivery_before_anything_is_sent(db: str) -> None:
    transport = MemoryTransport()
    with Outbox(db) as outbox:
        batch = outbox.put(start(receivers(3)), message_ids=["m0", "m1", "m2"])
    assert transport.requests == []
    with Outbox(db) as other:  # another connection sees it: it is committed
        entries = other.entries(batch)
    assert [e.message_id for e in entries] == ["m0", "m1", "m2"]
    assert [e.receiver for e in entries] == receivers(3)
    assert {e.state for e in entries} == {OutboxState.PENDING}
    assert {e.outcome for e in entries} == {None}


def test_only_what_a_power_cut_may_undo_is_committed_without_waiting_for_the_disk(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """put and outcomes followed by callbacks commit at FULL; claims, leases and
    outcomes with no callbacks at NORMAL (each level set before the transaction's BEGIN)."""
    import sqlite3

    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    level = "FULL"  # as the connection is opened

    def commits() -> list[str]:
        """The synchronous level of each write transaction since the last look."""
        nonlocal level
        levels = []
        for statement in statements:
            if statement.startswith("PRAGMA synchronous"):
                level = statement.split("=")[1].strip()
            elif statement == "BEGIN IMMEDIATE":
                levels.append(level)
        statements.clear()
        return levels

    with Outbox(db) as outbox:
        statements.clear()
        outbox.put(start(receivers(4)))
        assert commits() == ["FULL"]
        claim = outbox.claim(2, lease_seconds=60)
        assert commits() == ["NORMAL"]
        outbox.renew(claim, 60)
        assert commits() == ["NORMAL"]
        first, second = deliveries_for(claim)
        outbox.record(claim, [first], done=True)
        assert commits() == ["NORMAL"]
        outbox.record(claim, [second])  # callbacks follow: durable before they run
        outbox.finish(claim, [second.message_id])
        assert commits() == ["FULL", "FULL"]
        outbox.release(outbox.claim(2, lease_seconds=60))
        assert commits() == ["NORMAL", "NORMAL"]
        outbox.put(start(receivers(1)))  # durable again, right after the NORMAL ones
        assert commits() == ["FULL"]
        assert outbox.counts()[OutboxState.DONE] == 2


def test_put_refuses_what_could_not_be_sent(db: str) -> None:
    with Outbox(db) as outbox:
        with pytest.raises(flnotify.errors.ConfigurationError, match="2 message ids for 3"):
            outbox.put(start(receivers(3)), message_ids=["a", "b"])
        outbox.put(start(receivers(1)), message_ids=["taken"])
        with pytest.raises(OutboxError, match="UNIQUE"):
            outbox.put(start(receivers(1)), message_ids=["taken"])
        assert sum(outbox.counts().values()) == 1


def test_not_a_database_is_an_outbox_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(OutboxError, match="cannot use outbox"):
        Outbox(path)


# -- claims and leases --------------------------------------------------------------------


def test_two_dispatchers_on_one_file_never_claim_the_same_rows(db: str) -> None:
    with Outbox(db) as outbox:
        outbox.put(start(receivers(400)))
    barrier = threading.Barrier(4)
    claimed: list[list[str]] = [[] for _ in range(4)]

    def work(index: int) -> None:
        with Outbox(db) as mine:
            barrier.wait()
            while claim := mine.claim(7, lease_seconds=60).entries:
                claimed[index].extend(e.message_id for e in claim)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    every = [m for ids in claimed for m in ids]
    assert len(every) == 400
    assert len(set(every)) == 400  # no row went to two claims


def test_an_expired_lease_makes_rows_claimable_again_and_only_the_new_claim_records(
    db: str,
) -> None:
    clock = Clock()
    with Outbox(db, clock=clock) as a, Outbox(db, clock=clock) as b:
        a.put(start(receivers(5)))
        first = a.claim(10, lease_seconds=30)
        assert len(first) == 5
        assert first.lease_until == clock.now + 30
        clock.now += 29.9
        assert len(b.claim(10, lease_seconds=30)) == 0  # still leased
        clock.now += 0.1  # the lease has ended: "a" is presumed dead
        second = b.claim(10, lease_seconds=30)
        assert [e.message_id for e in second.entries] == [e.message_id for e in first.entries]
        assert {e.claims for e in second.entries} == {2}
        assert second.token != first.token

        assert a.record(first, deliveries_for(first), done=True) == []  # stale claim
        assert len(b.record(second, deliveries_for(second), done=True)) == 5
        assert b.record(second, deliveries_for(second, Outcome.FAILED), done=True) == []
        assert {(e.state, e.outcome) for e in a.entries()} == {
            (OutboxState.DONE, Outcome.DELIVERED)
        }


def test_renewing_a_lease_keeps_the_rows(db: str) -> None:
    clock = Clock()
    with Outbox(db, clock=clock) as outbox:
        outbox.put(start(receivers(2)))
        claim = outbox.claim(10, lease_seconds=30)
        clock.now += 20
        assert outbox.renew(claim, 30) == 2
        clock.now += 20  # 40 s after the claim, 20 s after the renewal
        assert len(outbox.claim(10, lease_seconds=30)) == 0
        assert outbox.next_claimable() == clock.now + 10
        assert outbox.release(claim) == 2
        assert len(outbox.claim(10, lease_seconds=30)) == 2


# -- the dispatcher -----------------------------------------------------------------------


def test_sync_dispatcher_records_each_outcome_once_and_runs_the_training_callbacks(
    db: str,
) -> None:
    repo = flnotify.InMemoryTrainingRepository()
    good, rejecting, dead = receivers(3, "http://client-{i}.test/msg")
    training = repo.create_training(
        actor=good, participants=[good, rejecting, dead], model_id=MODEL
    )

    def answer(request: MemoryRequest) -> int:
        if request.url == dead.message_endpoint:
            raise flnotify.errors.ConnectError("refused", url=request.url)
        return 409 if request.url == rejecting.message_endpoint else 202

    transport = MemoryTransport(answer)
    with (
        Outbox(db) as outbox,
        flnotify.Notifier(
            transport=transport,
            retry=RetryPolicy.no_retries(),
            repository=repo,
            failure_policy=flnotify.FailurePolicy(tell_removed=True),
        ) as notifier,
    ):
        batch = outbox.put(flnotify.TrainingRoundStartNotification.from_training(training))
        assert OutboxDispatcher(outbox, notifier, batch_size=2).run() == 3
        entries = {e.receiver.id: e for e in outbox.entries(batch)}
        assert OutboxDispatcher(outbox, notifier).run_once() == 0  # nothing left

    assert [entries[r.id].outcome for r in (good, rejecting, dead)] == [
        Outcome.DELIVERED,
        Outcome.REJECTED,
        Outcome.FAILED,
    ]
    assert entries[rejecting.id].status_code == 409
    assert entries[dead.id].error_kind is flnotify.errors.TransportErrorKind.CONNECT
    assert {e.state for e in entries.values()} == {OutboxState.DONE}
    rounds = [
        r for r in transport.requests if b'"notification_type":"UPDATE_ROUND_START"' in r.body
    ]
    assert len(rounds) == 3
    assert {r.headers["webhook-id"] for r in rounds} == {e.message_id for e in entries.values()}
    told = [r for r in transport.requests if b'"notification_type":"CLIENT_REMOVED"' in r.body]
    assert {r.url for r in told} == {rejecting.message_endpoint, training.actor.message_endpoint}
    after = repo.get_training(training.id)
    assert after.participant_ids() == {good.id, dead.id}  # the rejecting client was removed
    assert after.state is TrainingState.ERROR  # the dead one failed the training


def test_async_api(db: str) -> None:
    async def answer(request: MemoryRequest) -> int:
        await asyncio.sleep(0)
        return 202

    recorder = RecordingCallbacks()

    async def main() -> None:
        transport = MemoryTransport(answer)
        with Outbox(db) as outbox:
            async with flnotify.Notifier(transport=transport) as notifier:
                await outbox.aput(start(receivers(5)))
                dispatcher = OutboxDispatcher(outbox, notifier, callbacks=recorder, batch_size=2)
                assert await dispatcher.arun_once() == 2
                assert outbox.counts()[OutboxState.PENDING] == 3
                assert await dispatcher.arun() == 3
            assert outbox.counts()[OutboxState.DONE] == 5
        assert len(transport.requests) == 5

    asyncio.run(main())
    assert sorted(d.receiver.id.int for d in recorder.calls) == [1, 2, 3, 4, 5]
    assert {d.outcome for d in recorder.calls} == {Outcome.DELIVERED}


class _SizeBlind:
    """An outbox whose claims carry no sizes, as a store of its own may make them."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.asked: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.outbox, name)

    def claim(self, limit: int, lease_seconds: float) -> Claim:
        return attrs.evolve(self.outbox.claim(limit, lease_seconds), sizes={})

    def batch_size(self, batch_id: str) -> int:
        self.asked.append(batch_id)
        return self.outbox.batch_size(batch_id)


@pytest.mark.parametrize("sizes", ["with the claim", "asked"])
def test_each_delivery_knows_the_size_of_its_send(
    db: str, sizes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the claim (no call per claim, which waited behind the claim taken ahead), or
    asked of a store whose claims carry none."""
    recorder = RecordingCallbacks()
    with Outbox(db) as outbox:
        store: Any = outbox
        if sizes == "with the claim":

            def not_asked(self: Outbox, batch_id: str) -> int:
                raise AssertionError("batch_size asked although the claim has the sizes")

            monkeypatch.setattr(Outbox, "batch_size", not_asked)
        else:
            store = _SizeBlind(outbox)
        batch = outbox.put(start(receivers(5)))
        outbox.put(start(receivers(2)))
        with flnotify.Notifier(transport=MemoryTransport(lambda _: 202)) as notifier:
            dispatcher = OutboxDispatcher(store, notifier, callbacks=recorder, batch_size=3)
            assert dispatcher.run() == 7
    by_send = collections.Counter((d.send_id, d.send_size) for d in recorder.calls)
    assert sorted(by_send.values()) == [2, 5]
    assert by_send[(batch, 5)] == 5
    if isinstance(store, _SizeBlind):  # once per claim and batch: [5, 5, 5] [5, 5, 2] [2]
        assert len(store.asked) == 4
        assert store.asked.count(batch) == 2


def test_a_send_outlasting_its_lease_keeps_the_claim_by_renewing_it(db: str) -> None:
    clock = Clock()

    async def main() -> None:
        entered, release = asyncio.Event(), asyncio.Event()

        async def answer(request: MemoryRequest) -> int:
            entered.set()
            await release.wait()  # a slow client
            return 202

        with Outbox(db, clock=clock) as outbox, Outbox(db, clock=clock) as other:
            outbox.put(start(receivers(1)))
            async with flnotify.Notifier(transport=MemoryTransport(answer)) as notifier:
                dispatcher = OutboxDispatcher(outbox, notifier, lease_seconds=0.3)
                running = asyncio.create_task(dispatcher.arun_once())
                await asyncio.wait_for(entered.wait(), 10)
                clock.now += 100  # far past the first lease: only renewals keep the claim
                for _ in range(1000):  # the heartbeat runs every 0.1 s of real time
                    if other.entries()[0].lease_until == clock.now + 0.3:
                        break
                    await asyncio.sleep(0.01)
                assert other.entries()[0].lease_until == clock.now + 0.3
                assert len(other.claim(10, lease_seconds=60)) == 0
                release.set()
                assert await running == 1
            (entry,) = other.entries()
            assert (entry.state, entry.claims) == (OutboxState.DONE, 1)
            assert entry.lease_until is None

    asyncio.run(main())


def test_callbacks_of_an_outcome_recorded_before_a_crash_run_without_resending(db: str) -> None:
    clock = Clock()
    recorder = RecordingCallbacks()
    transport = MemoryTransport()
    with Outbox(db, clock=clock) as outbox:
        outbox.put(start(receivers(3)))
        crashed = outbox.claim(10, lease_seconds=30)
        # the dead dispatcher got as far as recording two outcomes, not their callbacks
        assert len(outbox.record(crashed, deliveries_for(crashed)[:2])) == 2
        clock.now += 31
        with flnotify.Notifier(transport=transport) as notifier:
            OutboxDispatcher(outbox, notifier, callbacks=recorder).run()
        entries = outbox.entries()
    assert [r.headers["webhook-id"] for r in transport.requests] == [entries[2].message_id]
    assert sorted(d.message_id for d in recorder.calls) == sorted(e.message_id for e in entries)
    rebuilt = next(d for d in recorder.calls if d.message_id == entries[0].message_id)
    assert (rebuilt.outcome, rebuilt.status_code, rebuilt.attempts) == (Outcome.DELIVERED, 202, 1)
    assert {e.state for e in entries} == {OutboxState.DONE}


def test_run_waits_for_a_dead_dispatchers_lease(db: str) -> None:
    clock = Clock()
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        if seconds == 60 / 3:  # the heartbeat of this dispatcher's claims: asleep until done
            await asyncio.Event().wait()
        sleeps.append(seconds)
        clock.now += seconds

    transport = MemoryTransport()
    with Outbox(db, clock=clock) as outbox:
        outbox.put(start(receivers(4)))
        outbox.claim(3, lease_seconds=10)  # and then that dispatcher died
        with flnotify.Notifier(transport=transport) as notifier:
            dispatcher = OutboxDispatcher(outbox, notifier, poll_interval=4, sleep=sleep)
            assert dispatcher.run() == 4
        assert outbox.counts()[OutboxState.DONE] == 4
    assert sleeps == [4, 4, 2]  # polled, never longer than poll_interval, until the lease ended
    assert len(transport.requests) == 4


def test_a_notification_the_notifier_refuses_is_recorded_failed(db: str) -> None:
    recorder = RecordingCallbacks()
    transport = MemoryTransport()
    with (
        Outbox(db) as outbox,
        flnotify.Notifier(
            transport=transport, policy=EndpointPolicy(max_body_bytes=10)
        ) as notifier,
    ):
        outbox.put(start(receivers(2)))
        OutboxDispatcher(outbox, notifier, callbacks=recorder).run()
        entries = outbox.entries()
    assert transport.requests == []
    assert {e.outcome for e in entries} == {Outcome.FAILED}
    assert len(recorder.calls) == 2


def test_prune_forgets_old_done_deliveries(db: str) -> None:
    clock = Clock()
    with Outbox(db, clock=clock) as outbox, flnotify.Notifier(transport=MemoryTransport()) as n:
        outbox.put(start(receivers(2)))
        OutboxDispatcher(outbox, n).run()
        outbox.put(start(receivers(1)))
        assert outbox.prune(before=clock.now) == 0
        clock.now += 1
        assert outbox.prune(before=clock.now) == 2
        assert outbox.counts() == {
            OutboxState.PENDING: 1,
            OutboxState.CLAIMED: 0,
            OutboxState.DONE: 0,
        }


# -- a real crash -------------------------------------------------------------------------


def _run_helper(
    *args: str, stdin: int | None = None, stdout: int | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(HELPER), *args], stdin=stdin, stdout=stdout)  # noqa: S603


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the dispatcher processes keep their outbox: a file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "outbox.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


def _callback_log(path: str) -> list[list[str]]:
    with open(path, encoding="ascii") as lines:
        return [line.split() for line in lines]


def test_a_dispatcher_killed_mid_fan_out_resumes_and_loses_nothing(
    store: str, tmp_path: Path
) -> None:
    n = 1000
    log = str(tmp_path / "callbacks.log")
    with FaultServer() as server:
        args = ("--db", store, "--base", server.base_url(), "--log", log)
        first = _run_helper(*args, "--put", str(n))
        try:
            server.wait_until(lambda: server.request_count >= 200, timeout=30)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        assert first.returncode == -signal.SIGKILL

        with open_outbox(store) as outbox:
            at_kill = outbox.entries()
        assert len(at_kill) == n  # the put was committed before anything was sent
        cut_short = {e.message_id for e in at_kill if e.state is OutboxState.CLAIMED}
        assert cut_short  # killed inside a claim
        assert sum(e.state is OutboxState.DONE for e in at_kill) < server.request_count < n

        second = _run_helper(*args)
        assert second.wait(timeout=60) == 0
        requests = server.requests

    with open_outbox(store) as outbox:
        entries = outbox.entries()
    message_id = {e.receiver.id.int - 1: e.message_id for e in entries}

    by_receiver: dict[int, list[str]] = collections.defaultdict(list)
    for request in requests:
        index = int(parse_qs(urlsplit(request.target).query)["r"][0])
        by_receiver[index].append(request.headers["webhook-id"])
    assert sorted(by_receiver) == list(range(n))  # every receiver got it, none lost
    for index, ids in by_receiver.items():
        assert set(ids) == {message_id[index]}  # redeliveries carry the same webhook-id

    assert len(entries) == n
    assert {(e.state, e.outcome) for e in entries} == {(OutboxState.DONE, Outcome.DELIVERED)}
    resumed = {e.message_id for e in entries if e.claims == 2}
    assert resumed == cut_short  # exactly the deliveries the dead claim held went again
    sent_twice = {message_id[i] for i, ids in by_receiver.items() if len(ids) > 1}
    assert sent_twice <= resumed

    calls = collections.Counter(line[0] for line in _callback_log(log))
    assert set(calls) == set(message_id.values())  # a callback for every outcome
    once = {e.message_id for e in entries if e.claims == 1}
    assert all(calls[m] == 1 for m in once)  # and exactly one unless a crash cut in


def test_two_dispatcher_processes_at_once_deliver_each_row_once(store: str, tmp_path: Path) -> None:
    n = 1000
    log = str(tmp_path / "callbacks.log")
    with FaultServer() as server:
        base = server.base_url()
        with open_outbox(store) as outbox:
            outbox.put(
                start(
                    [
                        Receiver(uuid.UUID(int=i + 1), f"{base}/slow-headers/0.002/200?r={i}")
                        for i in range(n)
                    ]
                )
            )
        args = ("--db", store, "--base", base, "--log", log, "--batch", "50", "--lease", "60")
        pipe = subprocess.PIPE
        helpers = [_run_helper(*args, "--wait-go", stdin=pipe, stdout=pipe) for _ in range(2)]
        try:
            for helper in helpers:  # both set up: let them go at the same moment
                assert helper.stdout is not None
                assert helper.stdout.readline() == b"ready\n"
            for helper in helpers:
                assert helper.stdin is not None
                helper.stdin.write(b"go\n")
                helper.stdin.close()
            for helper in helpers:
                assert helper.wait(timeout=60) == 0
        finally:
            for helper in helpers:
                if helper.poll() is None:
                    helper.kill()
                    helper.wait()
                assert helper.stdout is not None
                helper.stdout.close()
        sent = collections.Counter(r.headers["webhook-id"] for r in server.requests)

    with open_outbox(store) as outbox:
        entries = outbox.entries()
    ids = {e.message_id for e in entries}
    assert set(sent) == ids
    assert set(sent.values()) == {1}  # each row POSTed once
    assert {(e.state, e.outcome, e.claims) for e in entries} == {
        (OutboxState.DONE, Outcome.DELIVERED, 1)
    }
    lines = _callback_log(log)
    assert sorted(line[0] for line in lines) == sorted(ids)  # one callback per row
    assert len({line[2] for line in lines}) == 2  # and both dispatchers did part of it


def test_sync_api_from_inside_an_event_loop(db: str) -> None:
    # run() works where asyncio.run() would not: it uses the Notifier's own loop thread
    async def main() -> int:
        with Outbox(db) as outbox, flnotify.Notifier(transport=MemoryTransport()) as notifier:
            outbox.put(start(receivers(2)))
            return OutboxDispatcher(outbox, notifier).run()

    assert asyncio.run(main()) == 2


def test_open_outbox_without_create_refuses_what_holds_none_and_leaves_it(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(NoOutboxError, match="no such file"):
        open_outbox(str(missing), create=False)
    assert not missing.exists()
    other = tmp_path / "app.db"
    with flnotify.SQLiteTrainingRepository(other):
        pass  # an application's own database
    tables = other.read_bytes()
    with pytest.raises(NoOutboxError, match="no table flnotify_outbox_meta"):
        open_outbox(str(other), create=False)
    assert other.read_bytes() == tables
    with open_outbox(str(tmp_path / "fl.db")):
        pass
    with open_outbox(str(tmp_path / "fl.db"), create=False) as outbox:
        assert sum(outbox.counts().values()) == 0  # opened as it was: empty


def test_the_lease_heartbeat_sleeps_through_the_injected_sleep(db: str) -> None:
    """A claim's lease is renewed after each of the dispatcher's sleeps, by its clock."""
    clock = Clock()
    start_time = clock.now
    beats: list[float] = []
    renewed = asyncio.Event()

    async def sleep(seconds: float) -> None:
        beats.append(seconds)
        if len(beats) > 1:  # the first beat renews; then the delivery may go on
            renewed.set()
            await asyncio.Event().wait()
        clock.now += seconds

    class SlowTransport(MemoryTransport):
        async def apost(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
            await renewed.wait()  # the POST takes until the lease was renewed once
            return await super().apost(url, body, headers)

    renewals: list[tuple[float, int]] = []

    class Watched(Outbox):
        def renew(self, claim: Claim, lease_seconds: float) -> int:
            held = super().renew(claim, lease_seconds)
            renewals.append((self.clock(), held))
            return held

    with Watched(db, clock=clock) as outbox:
        outbox.put(start(receivers(1)))
        with flnotify.Notifier(transport=SlowTransport()) as notifier:
            dispatcher = OutboxDispatcher(outbox, notifier, lease_seconds=30, sleep=sleep)
            assert dispatcher.run_once() == 1
        (entry,) = outbox.entries()
    assert beats[:2] == [10, 10]
    assert renewals == [(start_time + 10, 1)]  # renewed once, at the fake time, holding it
    assert entry.state is OutboxState.DONE
    assert entry.recorded_at == clock.now == start_time + 10  # after the beat moved the clock
