"""Delivery on Celery workers: a real Redis broker, a real worker, real loopback clients."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import redis
from celery import Celery, signals  # type: ignore[import-untyped]
from celery.contrib.testing.worker import start_worker  # type: ignore[import-untyped]
from celery.signals import task_postrun  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flnotify
import flnotify.codec
import flnotify.errors
from flnotify import (
    Outcome,
    Receiver,
    RetryPolicy,
    Signer,
    TrainingCallbacks,
    TrainingState,
    generate_secret,
)
from flnotify.callbacks import default_callback_registry
from flnotify.contrib.celery import CeleryDelivery, use_transport
from flnotify.signing import Verifier
from flnotify.testing import MemoryTransport, RecordingCallbacks, seams
from flnotify.transports import HttpxTransport
from helpers.hostile import (
    CountingCallbacks,
    HostileTransport,
    World,
    check_invariants,
    notification,
    notifier_options,
    receivers,
    world_rng,
    worlds,
)
from helpers.servers import FaultServer, refused_url

MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
QUICK = RetryPolicy(max_attempts=3, initial_backoff=0.05, multiplier=1.0, jitter=0.0)


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    app = Celery(f"flnotify-test-{uuid.uuid4().hex[:8]}", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],  # the worker refuses anything else, pickle included
        task_default_queue=f"flnotify-{uuid.uuid4().hex[:8]}",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    yield app
    app.close()


class Finished:
    """Task executions of one app as the worker's ``task_postrun`` signal reports them."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.runs: list[tuple[str, str, float]] = []  # (task id, state, monotonic time)
        self._cond = threading.Condition()

    def __call__(self, sender: Any = None, task_id: str = "", state: str = "", **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        with self._cond:
            self.runs.append((task_id, state, time.monotonic()))
            self._cond.notify_all()

    def final(self) -> list[tuple[str, str, float]]:
        with self._cond:
            return [run for run in self.runs if run[1] != "RETRY"]

    def wait(self, task_ids: set[str], timeout: float = 20.0) -> None:
        """Until each task has run to its end (success or failure), retries aside."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: task_ids <= {t for t, s, _ in self.runs if s != "RETRY"}, timeout
            )
        assert done, f"tasks not finished within {timeout} s: {self.runs}"


@pytest.fixture
def finished(app: Celery) -> Iterator[Finished]:
    watcher = Finished(app)
    task_postrun.connect(watcher, weak=False)
    yield watcher
    task_postrun.disconnect(watcher)


@pytest.fixture
def clients() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "trainings.db"  # shared by the test and the worker's repository


@attrs.define
class Recorder(RecordingCallbacks):
    """Callbacks that remember each Delivery (called on the worker thread) and repository."""

    repositories: list[object] = attrs.field(init=False, factory=list)


class Tee:
    """The default training callbacks, and a recorder of what they were called with."""

    def __init__(self, training: TrainingCallbacks, recorder: Recorder) -> None:
        self.training = training
        self.recorder = recorder

    def on_success(self, delivery: flnotify.Delivery, /) -> None:
        self.training.on_success(delivery)
        self.recorder.on_success(delivery)

    async def on_error(self, delivery: flnotify.Delivery, /) -> None:
        await self.training.on_error(delivery)
        self.recorder.on_error(delivery)


def delivery_for(app: Celery, recorder: Recorder, repo_path: Path, **kwargs: Any) -> CeleryDelivery:
    def tee(repository: Any) -> Tee:
        recorder.repositories.append(repository)
        return Tee(TrainingCallbacks(repository), recorder)

    return CeleryDelivery(
        app,
        repository_factory=lambda: flnotify.SQLiteTrainingRepository(repo_path),
        callbacks={"tee": tee},
        **kwargs,
    )


def receiver(url: str) -> Receiver:
    return Receiver(uuid.uuid4(), url)


# -- what goes through the broker ---------------------------------------------------------


def test_the_broker_carries_flnotify_json_and_the_message_ids(
    app: Celery, redis_url: str, clients: FaultServer, repo_path: Path
) -> None:
    rs = [receiver(clients.url(f"/status/202?c={i}")) for i in range(3)]
    notification = flnotify.TrainingRoundStartNotification(
        receivers=rs, body=flnotify.RoundBody(round=2, global_model_uuid=MODEL), training_uuid=MODEL
    )
    sender = delivery_for(app, Recorder(), repo_path, chunk_size=2)
    enqueued = sender.enqueue(notification, callbacks="tee")
    assert len(enqueued.results) == 2
    assert len(set(enqueued.message_ids)) == 3

    with redis.Redis.from_url(redis_url) as client:
        raw = client.lrange(app.conf.task_default_queue, 0, -1)
    messages = sorted((json.loads(m) for m in raw), key=lambda m: len(m["body"]), reverse=True)
    assert [m["content-type"] for m in messages] == ["application/json"] * 2
    bodies = [json.loads(base64.b64decode(m["body"])) for m in messages]
    assert [kwargs["callbacks"] for _, kwargs, _ in bodies] == ["tee"] * 2
    (send,) = {tuple(kwargs["send"]) for _, kwargs, _ in bodies}  # both chunks: one send
    assert send[1] == 3
    args = [args for args, _, _ in bodies]
    wire = flnotify.codec.encode(notification).decode()
    assert args == [
        [
            wire,
            [{"id": str(r.id), "message_endpoint": r.message_endpoint} for r in rs[:2]],
            list(enqueued.message_ids[:2]),
        ],
        [
            wire,
            [{"id": str(rs[2].id), "message_endpoint": rs[2].message_endpoint}],
            [enqueued.message_ids[2]],
        ],
    ]
    with pytest.raises(
        flnotify.errors.ConfigurationError, match="no callbacks registered as 'nope'"
    ):
        sender.enqueue(notification, callbacks="nope")


def test_an_app_whose_workers_would_refuse_json_is_refused(redis_url: str) -> None:
    """A pickle-only app (CELERY_ACCEPT_CONTENT = ["pickle"]) drops every JSON message."""
    app = Celery("flnotify-pickle-only", broker=redis_url, set_as_current=False)
    app.conf.update(accept_content=["pickle"], task_serializer="pickle")
    with pytest.raises(
        flnotify.errors.ConfigurationError, match=r"accept_content.*Add 'json'"
    ) as info:
        CeleryDelivery(app)
    assert "CELERY_ACCEPT_CONTENT" in str(info.value)
    assert "task_serializer" in str(info.value)
    app.conf.update(accept_content=["pickle", "application/json"])  # a content type counts
    sender = CeleryDelivery(app)
    assert sender.task.ignore_result is True  # nothing reads a result: none is stored
    app.conf.update(accept_content=["pickle"])  # configured after construction
    start = flnotify.TrainingStartNotification(
        receivers=[receiver("http://127.0.0.1:9/")],
        body=flnotify.GlobalModelBody(global_model_uuid=MODEL),
        training_uuid=MODEL,
    )
    with pytest.raises(flnotify.errors.ConfigurationError, match="accept_content"):
        sender.enqueue(start)  # refused before anything reaches the broker
    app.conf.update(accept_content=["nope"])
    with pytest.raises(flnotify.errors.ConfigurationError, match="not usable"):
        CeleryDelivery(app)
    app.close()


# -- a real worker ------------------------------------------------------------------------


def test_a_test_transport_reaches_the_cached_engine_and_the_worker_closes_it(
    app: Celery, finished: Finished, repo_path: Path
) -> None:
    """use_transport routes a delivery whose engine was built already; shutdown closes it."""
    live = MemoryTransport(lambda request: 202)
    sender = delivery_for(app, Recorder(), repo_path, transport_factory=lambda: live)
    start = flnotify.TrainingStartNotification(
        receivers=[receiver("http://client.test/a/")],
        body=flnotify.GlobalModelBody(global_model_uuid=MODEL),
        training_uuid=MODEL,
    )
    try:
        with start_worker(app, pool="solo", perform_ping_check=False) as worker:
            finished.wait({r.id for r in sender.enqueue(start).results})
            assert len(live.requests) == 1  # the engine of this process is built: cached
            fake = MemoryTransport()
            with use_transport(fake):
                finished.wait({r.id for r in sender.enqueue(start).results})
            finished.wait({r.id for r in sender.enqueue(start).results})
        assert [r.url for r in fake.requests] == ["http://client.test/a/"]
        assert len(live.requests) == 2  # before and after the block, not inside it
        # The worker's shutdown closes this process's objects (the in-thread test worker
        # never sends the signal a real worker sends as it stops: sent here as it would).
        assert sender._engine is not None  # built by the last task
        other = Celery("flnotify-other", set_as_current=False)
        signals.worker_shutdown.send(sender=Sender(other))
        assert sender._engine is not None  # another app's worker: not ours
        signals.worker_shutdown.send(sender=worker)
        assert sender._engine is None
        finished.wait(set())  # nothing pending; the objects are rebuilt on the next task
        sender._get_engine()
        signals.worker_process_shutdown.send(sender="host", pid=os.getpid(), exitcode=0)
        assert sender._engine is None  # a prefork child's own shutdown
        other.close()
    finally:
        sender.close()


@attrs.frozen
class Sender:
    """What a worker's shutdown signal is sent by: something with an ``app``."""

    app: Celery


def test_ordered_sends_never_overtake_a_retrying_earlier_one(
    app: Celery, clients: FaultServer, finished: Finished, repo_path: Path
) -> None:
    """TRAINING_START fails once for a client, then the round starts: it must come second.

    Two plain enqueues let the round start (a later task) reach the client while the
    start waits for its retry; enqueue_ordered holds it until the start settled, for that
    client only, and sends it after a failed start too.
    """
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.3, multiplier=1.0, jitter=0.0)
    flaky = receiver(clients.url("/flaky/1/200?id=flaky"))
    healthy = receiver(clients.url("/status/202?id=healthy"))
    dead = receiver(clients.url("/status/503?id=dead"))  # fails both attempts
    everyone = [flaky, healthy, dead]
    body = flnotify.GlobalModelBody(global_model_uuid=MODEL)
    start = flnotify.TrainingStartNotification(receivers=everyone, body=body, training_uuid=MODEL)
    round_ = flnotify.TrainingRoundStartNotification(
        receivers=everyone,
        body=flnotify.RoundBody(round=1, global_model_uuid=MODEL),
        training_uuid=MODEL,
    )
    sender = delivery_for(app, Recorder(), repo_path, chunk_size=1, retry=policy)
    try:
        with start_worker(app, pool="threads", concurrency=3, perform_ping_check=False):
            sent = sender.enqueue_ordered([start, round_], callbacks="tee")
            finished.wait({r.id for e in sent for r in e.results})
    finally:
        sender.close()

    def kinds(r: Receiver) -> list[tuple[str, int]]:
        return [
            (json.loads(q.body)["notification_type"], q.port)
            for q in clients.requests
            if q.target == r.message_endpoint.split(str(q.port), 1)[1]
        ]

    order = {r.id: [k for k, _ in kinds(r)] for r in everyone}
    assert order[flaky.id] == ["TRAINING_START", "TRAINING_START", "UPDATE_ROUND_START"]
    assert order[healthy.id] == ["TRAINING_START", "UPDATE_ROUND_START"]
    assert order[dead.id] == [  # a failed start does not hold the round back
        "TRAINING_START",
        "TRAINING_START",
        "UPDATE_ROUND_START",
        "UPDATE_ROUND_START",
    ]
    # the healthy client's round start did not wait for the flaky client's retry
    at = {
        (json.loads(q.body)["notification_type"], q.target): q.received_at for q in clients.requests
    }
    flaky_target = "/flaky/1/200?id=flaky"
    assert (
        at[("UPDATE_ROUND_START", "/status/202?id=healthy")] < at[("TRAINING_START", flaky_target)]
    )
    assert [len(e.results) for e in sent] == [3, 3]  # one task per client group and step


def test_all_delivered_signed_and_called_back_once_on_the_worker(
    app: Celery, clients: FaultServer, finished: Finished, repo_path: Path
) -> None:
    secret = generate_secret()
    with flnotify.SQLiteTrainingRepository(repo_path) as repo:
        rs = [receiver(clients.url(f"/status/202?c={i}")) for i in range(5)]
        training = repo.create_training(actor=rs[0], participants=rs, model_id=MODEL)
    recorder = Recorder()
    # Two worker threads share one transport. HttpxTransport makes its own client lazily
    # and without a lock (two racing first posts make two and leak one), so here it gets
    # the host's client, which the host closes.
    client = httpx.Client(trust_env=False, follow_redirects=False)
    sender = delivery_for(
        app,
        recorder,
        repo_path,
        chunk_size=2,
        signer=Signer(secret),
        transport_factory=lambda: HttpxTransport(client=client),
    )
    notification = flnotify.TrainingRoundStartNotification.from_training(training)
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
            enqueued = sender.enqueue(notification, callbacks="tee")
            finished.wait({r.id for r in enqueued.results})
    finally:
        sender.close()
        client.close()

    by_receiver = {d.receiver.id: d for d in recorder.calls}
    assert len(recorder.calls) == 5  # once per receiver
    assert set(by_receiver) == {r.id for r in rs}
    for r, message_id in zip(rs, enqueued.message_ids, strict=True):
        delivery = by_receiver[r.id]
        assert delivery.outcome is Outcome.DELIVERED
        assert (delivery.message_id, delivery.status_code, delivery.attempts) == (
            message_id,
            202,
            1,
        )
        assert delivery.receiver == r
        assert isinstance(delivery.notification, flnotify.TrainingRoundStartNotification)
        assert delivery.notification.training_uuid == training.id
        assert delivery.notification.body == notification.body
    assert all(
        isinstance(repo, flnotify.SQLiteTrainingRepository) for repo in recorder.repositories
    )

    wire = flnotify.codec.encode(notification)
    verifier = Verifier(secret)
    assert len(clients.requests) == 5
    for request in clients.requests:
        assert request.body == wire
        assert verifier.verify(request.headers, request.body).id in enqueued.message_ids
    with flnotify.SQLiteTrainingRepository(repo_path) as repo:
        after = repo.get_training(training.id)
    assert (after.participants, after.state) == (training.participants, TrainingState.INITIAL)


@pytest.mark.parametrize("tell_removed", [True, False])
def test_a_rejecting_client_is_removed_by_the_default_callbacks(
    app: Celery, clients: FaultServer, finished: Finished, repo_path: Path, tell_removed: bool
) -> None:
    good = [receiver(clients.url(f"/status/202?c={i}")) for i in range(2)]
    rejecting = receiver(clients.url("/status/409"))
    with flnotify.SQLiteTrainingRepository(repo_path) as repo:
        training = repo.create_training(
            actor=good[0], participants=[*good, rejecting], model_id=MODEL
        )
    sender = delivery_for(
        app,
        Recorder(),
        repo_path,
        chunk_size=1,
        retry=QUICK,
        default_callbacks=default_callback_registry(tell_removed=tell_removed),
    )
    try:
        with start_worker(app, pool="solo", perform_ping_check=False):
            enqueued = sender.enqueue(
                flnotify.TrainingRoundStartNotification.from_training(training)
            )  # no callbacks named: the class's defaults, with the worker's repository
            finished.wait({r.id for r in enqueued.results})
    finally:
        sender.close()

    with flnotify.SQLiteTrainingRepository(repo_path) as repo:
        after = repo.get_training(training.id)
    assert after.participant_ids() == {g.id for g in good}
    assert after.state is TrainingState.INITIAL
    to_rejecting = clients.requests_for("/status/409")
    kinds = [json.loads(r.body)["notification_type"] for r in to_rejecting]
    told = ["CLIENT_REMOVED"] if tell_removed else []  # the settings' options, as in-process
    assert kinds == ["UPDATE_ROUND_START", *told]  # not retried; told it was removed


def test_a_dead_client_puts_the_training_into_error_after_the_retries(
    app: Celery,
    clients: FaultServer,
    finished: Finished,
    repo_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flnotify")
    good = receiver(clients.url("/status/202"))
    dead = receiver(refused_url())
    with flnotify.SQLiteTrainingRepository(repo_path) as repo:
        training = repo.create_training(actor=good, participants=[good, dead], model_id=MODEL)
    recorder = Recorder()
    sender = delivery_for(app, recorder, repo_path, chunk_size=2, retry=QUICK)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False):
            enqueued = sender.enqueue(
                flnotify.TrainingRoundStartNotification.from_training(training), callbacks="tee"
            )
            finished.wait({r.id for r in enqueued.results})
    finally:
        sender.close()

    with flnotify.SQLiteTrainingRepository(repo_path) as repo:
        assert repo.get_training(training.id).state is TrainingState.ERROR
    assert [run[1] for run in finished.runs] == ["RETRY", "RETRY", "SUCCESS"]
    assert len(clients.requests_for("/status/202")) == 1  # the chunk's retries skip it
    assert sorted((d.receiver.id, d.outcome, d.attempts) for d in recorder.calls) == sorted(
        [(good.id, Outcome.DELIVERED, 1), (dead.id, Outcome.FAILED, 3)]
    )
    failed = next(d for d in recorder.calls if d.outcome is Outcome.FAILED)
    assert isinstance(failed.error, flnotify.errors.ConnectError)
    assert failed.message_id == enqueued.message_ids[1]
    assert failed.elapsed >= 0.1  # two backoffs of 0.05 s
    # one honest line per run: what settled, and what goes back to the broker
    lines = [r.getMessage() for r in caplog.records if r.name == "flnotify"]
    runs = [line for line in lines if line.startswith(("Sent ", "UPDATE_ROUND_START: "))]
    assert [line.split(" in ")[0] for line in runs] == [
        "Sent UPDATE_ROUND_START to 1 receiver(s): 1 delivered, 0 rejected, 0 failed",
        "UPDATE_ROUND_START: 1 receiver(s) to try again",
        "UPDATE_ROUND_START: 1 receiver(s) to try again",
        "Sent UPDATE_ROUND_START to 1 receiver(s): 0 delivered, 0 rejected, 1 failed",
    ], lines
    assert "(attempt 2 of 3), 1 settled." in runs[1]
    assert "(attempt 3 of 3), 0 settled." in runs[2]
    assert not any("to 0 receiver(s)" in line for line in lines)


def test_a_receiver_waiting_to_retry_does_not_hold_the_only_worker_slot(
    app: Celery, clients: FaultServer, finished: Finished, repo_path: Path
) -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.3, multiplier=1.0, jitter=0.0)
    sender = delivery_for(app, Recorder(), repo_path, chunk_size=1, retry=policy)

    def start(rs: list[Receiver]) -> flnotify.TrainingStartNotification:
        body = flnotify.GlobalModelBody(global_model_uuid=MODEL)
        return flnotify.TrainingStartNotification(receivers=rs, body=body, training_uuid=MODEL)

    busy = receiver(clients.url("/status/503"))
    healthy = [receiver(clients.url(f"/status/202?c={i}")) for i in range(4)]
    try:
        with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False):
            first = sender.enqueue(start([busy]))  # first in the queue
            then = sender.enqueue(start(healthy))
            finished.wait({r.id for r in (*first.results, *then.results)})
    finally:
        sender.close()

    busy_attempts = clients.requests_for("/status/503")
    assert len(busy_attempts) == 3
    assert {r.headers["webhook-id"] for r in busy_attempts} == set(first.message_ids)
    healthy_times = [
        r.received_at for r in clients.requests if r.target.startswith("/status/202?c=")
    ]
    assert len(healthy_times) == 4
    # All four were served by the one worker slot while the busy receiver waited for its
    # first retry: after its first attempt and before its second.
    assert busy_attempts[0].received_at < min(healthy_times)
    assert max(healthy_times) < busy_attempts[1].received_at
    ends = {task_id: at for task_id, _, at in finished.final()}
    busy_end = ends[first.results[0].id]
    assert all(ends[r.id] < busy_end for r in then.results)


# -- the delivery invariant, with hostile components on a real worker -----------------------


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(world=worlds(max_receivers=5), chunk_size=st.integers(1, 3))
def test_hostile_world_one_delivery_and_one_callback_per_receiver(
    redis_url: str, world: World, chunk_size: int
) -> None:
    rs = receivers(world)
    transport = HostileTransport(world, [r.message_endpoint for r in rs])
    callbacks = CountingCallbacks(world)
    app = Celery(f"flnotify-hostile-{uuid.uuid4().hex[:8]}", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=f"flnotify-{uuid.uuid4().hex[:8]}",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    with seams(rng=world_rng(world)):
        sender = CeleryDelivery(
            app,
            transport_factory=lambda: transport,
            callbacks={"count": lambda _repository: callbacks},
            chunk_size=chunk_size,
            **notifier_options(world),
        )
    logger = logging.getLogger("flnotify")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the hostile components are loud on purpose
    try:
        with start_worker(app, pool="solo", perform_ping_check=False):
            sender.enqueue(notification(rs), callbacks="count")
            callbacks.wait_for(len(rs))
    finally:
        logger.setLevel(level)
        sender.close()
        app.close()
    deliveries = [calls[0] for calls in callbacks.calls.values()]
    check_invariants(world, rs, deliveries, callbacks, transport.seen)


# -- failures the way FL runs them, on a real worker ----------------------------------------


def test_tolerant_policy_over_chunks_removes_the_dead_after_k_rounds_and_tells_them(
    app: Celery, clients: FaultServer, finished: Finished, tmp_path: Path
) -> None:
    """100 clients in chunks of 10, 3 of them down: the training goes on, and after two
    failed rounds the three are removed (counts shared by all chunks through the SQLite
    repository) and told."""
    repo_path = tmp_path / "trainings.db"
    live = [receiver(clients.url(f"/status/202?c={i}")) for i in range(97)]
    down = [receiver(clients.url(f"/down-for-rounds?c={i}")) for i in range(3)]
    with flnotify.SQLiteTrainingRepository(repo_path) as repo:
        training = repo.create_training(actor=live[0], participants=live + down, model_id=MODEL)
        repo.update_training(training.id, state=TrainingState.ONGOING)
    sender = CeleryDelivery(
        app,
        repository_factory=lambda: flnotify.SQLiteTrainingRepository(repo_path),
        retry=RetryPolicy.no_retries(),
        chunk_size=10,
        failure_policy=flnotify.FailurePolicy.tolerant(min_delivered_fraction=0.9, remove_after=2),
    )
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
            for round_ in (1, 2):
                with flnotify.SQLiteTrainingRepository(repo_path) as repo:
                    snapshot = repo.update_training(training.id, round=round_)
                enqueued = sender.enqueue(
                    flnotify.TrainingRoundStartNotification.from_training(snapshot)
                )
                finished.wait({r.id for r in enqueued.results}, timeout=60)
                with flnotify.SQLiteTrainingRepository(repo_path) as repo:
                    after = repo.get_training(training.id)
                assert after.state is TrainingState.ONGOING
                assert len(after.participants) == (100 if round_ == 1 else 97)
    finally:
        sender.close()
    assert after.participant_ids() == {r.id for r in live}
    for dead in down:
        notices = [
            json.loads(r.body)
            for r in clients.requests_for("/down-for-rounds")
            if r.target.endswith(dead.message_endpoint.rsplit("?", 1)[1])
            and json.loads(r.body)["notification_type"] == "CLIENT_REMOVED"
        ]
        assert len(notices) == 1, notices
        assert notices[0]["body"]["client_uuid"] == str(dead.id)
        assert notices[0]["body"]["reason"] == "unreachable for 2 notifications in a row"


def test_polling_receivers_of_a_chunk_are_reached_through_the_mailbox(
    app: Celery, clients: FaultServer, finished: Finished, repo_path: Path, tmp_path: Path
) -> None:
    """Pushed and polling receivers in one enqueue; the worker waits for the acks."""
    from flnotify.mailbox import MAILBOX_ENDPOINT, Mailbox, MailboxApp
    from helpers.mailbox_env import BareClient, asgi_server

    secrets: dict[uuid.UUID, str] = {}
    pushed = [receiver(clients.url(f"/status/202?c={i}")) for i in range(2)]
    polling = [Receiver(uuid.uuid4(), MAILBOX_ENDPOINT) for _ in range(2)]
    for r in [*pushed, *polling]:
        secrets[r.id] = generate_secret()
    signer = Signer(lookup=lambda r: secrets.get(r.id))
    with flnotify.SQLiteTrainingRepository(repo_path) as repo:
        training = repo.create_training(
            actor=pushed[0], participants=[*pushed, *polling], model_id=MODEL
        )
    recorder = Recorder()
    mail_path = tmp_path / "mail.db"
    sender = delivery_for(
        app,
        recorder,
        repo_path,
        chunk_size=2,
        signer=signer,
        mailbox_factory=lambda: Mailbox(mail_path),
    )
    notification = flnotify.TrainingRoundStartNotification.from_training(training)
    seen: list[str] = []
    with Mailbox(mail_path) as store, asgi_server(MailboxApp(store, signer).asgi_app()) as base:
        try:
            with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
                enqueued = sender.enqueue(notification, callbacks="tee")
                for r in polling:  # another process's store: woken by the app's look
                    client = BareClient(base, r.id, secrets[r.id])
                    (message,) = client.fetch(wait=20)
                    Verifier(secrets[r.id]).verify(message.headers, message.body)
                    seen.append(message.id)
                    assert client.ack((message.id, 202)) == 1
                    client.close()
                finished.wait({t.id for t in enqueued.results})
        finally:
            sender.close()
        assert store.counts()["done"] == 2
    by_receiver = {d.receiver.id: d for d in recorder.calls}
    assert len(recorder.calls) == 4  # once per receiver, pushed or polling
    assert {d.outcome for d in recorder.calls} == {Outcome.DELIVERED}
    assert sorted(seen) == sorted(by_receiver[r.id].message_id for r in polling)
    assert {by_receiver[r.id].send_id for r in polling} == {by_receiver[pushed[0].id].send_id}


def test_a_first_execution_takes_the_fast_lane_and_a_retry_the_general_path(
    app: Celery, finished: Finished, repo_path: Path
) -> None:
    """The chunk's first attempts are driven by the transport, as in-process; the retry of
    the one that answered 503 resumes its attempts through ``apost``."""
    from collections.abc import Iterator as Iter
    from collections.abc import Mapping

    from flnotify.transports import HttpResponse
    from flnotify.transports._base import Done, Job, drive_each

    answered: list[tuple[str, str]] = []  # (how, url)

    class Driving:
        bounds_attempts = True

        async def apost(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
            answered.append(("apost", url))
            first = sum(1 for _, u in answered if u == url) == 1
            return HttpResponse(503 if url.endswith("/busy") and first else 202)

        async def drive(
            self,
            body: bytes,
            headers: Mapping[str, str],
            jobs: Iter[Job],
            done: Done,
            concurrency: int,
        ) -> None:
            async def post(url: str, body: bytes, headers: dict[str, str]) -> HttpResponse:
                answered.append(("drive", url))
                return HttpResponse(503 if url.endswith("/busy") else 202)

            await drive_each(post, body, headers, jobs, done, concurrency)

        async def aclose(self) -> None:
            return None

    recorder = Recorder()
    sender = delivery_for(
        app, recorder, repo_path, transport_factory=Driving, retry=QUICK, chunk_size=3
    )
    rs = [receiver(f"http://client.test/{name}") for name in ("a", "b", "busy")]
    notification = flnotify.TrainingRoundStartNotification(
        receivers=rs, body=flnotify.RoundBody(round=1, global_model_uuid=MODEL), training_uuid=MODEL
    )
    try:
        with start_worker(app, pool="solo", perform_ping_check=False):
            finished.wait({r.id for r in sender.enqueue(notification, callbacks="tee").results})
    finally:
        sender.close()
    assert sorted(answered) == sorted(
        [("drive", r.message_endpoint) for r in rs] + [("apost", "http://client.test/busy")]
    )
    assert sorted((d.receiver.message_endpoint, d.outcome, d.attempts) for d in recorder.calls) == [
        ("http://client.test/a", Outcome.DELIVERED, 1),
        ("http://client.test/b", Outcome.DELIVERED, 1),
        ("http://client.test/busy", Outcome.DELIVERED, 2),
    ]


def test_the_default_chunk_is_as_large_as_the_broker_allows(redis_url: str) -> None:
    from flnotify.contrib.celery import (
        DEFAULT_CHUNK_SIZE,
        SMALL_MESSAGE_CHUNK_SIZE,
        default_chunk_size,
    )

    for url, size in [
        (redis_url, DEFAULT_CHUNK_SIZE),
        ("amqp://guest@localhost//", DEFAULT_CHUNK_SIZE),
        ("sqs://", SMALL_MESSAGE_CHUNK_SIZE),
        ("azureservicebus://key@namespace", SMALL_MESSAGE_CHUNK_SIZE),
    ]:
        other = Celery("flnotify-chunks", broker=url, set_as_current=False)
        try:
            assert default_chunk_size(other) == size, url
            assert CeleryDelivery(other, task_name=f"t.{size}").chunk_size == size
        finally:
            other.close()
    transported = Celery("flnotify-chunks", set_as_current=False)
    transported.conf.broker_transport = "sqs"
    assert default_chunk_size(transported) == SMALL_MESSAGE_CHUNK_SIZE
    transported.close()
