# ruff: noqa: S101 - a pytest suite: plain asserts are the point
"""A pytest suite every outbox store (an [`OutboxStore`][flnotify.outbox.OutboxStore]) must pass."""

from __future__ import annotations

import inspect
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .._exceptions import ConfigurationError, ConnectError, TransportError, TransportErrorKind
from .._notifier import Notifier
from .._report import Delivery
from .._retry import RetryPolicy
from .._training import GlobalModelBody, TrainingStartNotification
from .._types import Outcome, Receiver
from ..transports._memory import MemoryRequest, MemoryTransport
from ._dispatcher import OutboxDispatcher
from ._model import Claim, OutboxEntry, OutboxError, OutboxState, OutboxStore

__all__ = ["OutboxStoreContract"]

_MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
_JOIN_TIMEOUT = 60.0


_F = TypeVar("_F", bound=Callable[..., Any])
_FIXTURE_MARK = "_flnotify_contract_fixture"


def fixture(function: _F) -> _F:
    """Mark a method of a suite as a pytest fixture of the suite's subclasses.

    ``pytest.fixture`` is applied by `install_fixtures` when a suite is subclassed, so
    importing a suite (the docs build does, to document it) never imports pytest.
    """
    setattr(function, _FIXTURE_MARK, True)
    return function


def install_fixtures(cls: type) -> None:
    """Make the marked methods ``cls`` inherits unchanged pytest fixtures of ``cls``."""
    import pytest  # only a suite in use needs pytest

    for name in dir(cls):
        value = inspect.getattr_static(cls, name)
        if inspect.isfunction(value) and getattr(value, _FIXTURE_MARK, False):
            setattr(cls, name, pytest.fixture(value))


def raises(expected: type[BaseException], *, match: str | None = None) -> Any:
    """``pytest.raises``, importing pytest when a suite's test runs."""
    import pytest  # only a suite in use needs pytest

    return pytest.raises(expected, match=match)


class ContractClock:
    """An outbox clock the suite moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def in_threads(work: Callable[[int], None], n: int) -> None:
    """Run ``work(0..n-1)`` in ``n`` threads started together; re-raise their errors."""
    barrier = threading.Barrier(n, timeout=_JOIN_TIMEOUT)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(_JOIN_TIMEOUT)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)


def _receivers(n: int) -> list[Receiver]:
    return [Receiver(uuid.UUID(int=i + 1), f"http://client-{i}.test/msg") for i in range(n)]


def _start(receivers: list[Receiver]) -> TrainingStartNotification:
    return TrainingStartNotification(
        receivers=receivers, body=GlobalModelBody(global_model_uuid=_MODEL), training_uuid=_MODEL
    )


def _deliveries(
    claim: Claim, outcome: Outcome = Outcome.DELIVERED, **fields: Any
) -> list[Delivery]:
    notification = _start([e.receiver for e in claim.entries])
    values: dict[str, Any] = {"attempts": 1, "elapsed": 0.01, "status_code": 202, **fields}
    return [
        Delivery(
            receiver=e.receiver,
            notification=notification,
            outcome=outcome,
            message_id=e.message_id,
            **values,
        )
        for e in claim.entries
    ]


class _Calls:
    """Callbacks that remember the message id of each call."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()

    def on_success(self, delivery: Delivery, /) -> None:
        with self._lock:
            self.ids.append(delivery.message_id)

    def on_error(self, delivery: Delivery, /) -> None:
        with self._lock:
            self.ids.append(delivery.message_id)


class OutboxStoreContract:
    """Tests every outbox store must pass: claims, leases, recording once, re-driving.

    Subclass it in a ``test_*.py`` file under a ``Test``-prefixed name and implement
    [`make_outbox`][flnotify.testing.OutboxStoreContract.make_outbox]. Each test starts
    from an empty outbox: set one up per test in an ``autouse`` fixture method of the
    subclass (a new file under ``tmp_path``, a new database) and store where it is on
    ``self``::

        from flnotify.outbox import PostgresOutbox
        from flnotify.testing import OutboxStoreContract

        class TestMyOutbox(OutboxStoreContract):
            @pytest.fixture(autouse=True)
            def _database(self, postgres_url):
                self.url = postgres_url

            def make_outbox(self, clock):
                return PostgresOutbox(self.url, clock=clock)

    The concurrency test uses 4 handles from 4 threads at once.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        install_fixtures(cls)

    # -- hooks for subclasses

    def make_outbox(self, clock: Callable[[], float]) -> OutboxStore:
        """A new handle (its own connection) on this test's outbox, leases by ``clock``."""
        raise NotImplementedError("subclasses of OutboxStoreContract implement this")

    # -- plumbing

    @fixture
    def clock(self) -> ContractClock:
        """The fake clock of this test's handles."""
        return ContractClock()

    @fixture
    def handles(self, clock: ContractClock) -> Iterator[Callable[[], OutboxStore]]:
        """Opens handles on the test's outbox and closes them all afterwards."""
        opened: list[OutboxStore] = []

        def open_one() -> OutboxStore:
            store = self.make_outbox(clock)
            opened.append(store)
            return store

        yield open_one
        for store in opened:
            store.close()

    @fixture
    def outbox(self, handles: Callable[[], OutboxStore]) -> OutboxStore:
        """One handle on this test's outbox."""
        return handles()

    # -- storing

    def test_put_is_committed_and_visible_to_other_handles(
        self, outbox: OutboxStore, handles: Callable[[], OutboxStore]
    ) -> None:
        """Rows are committed by put, in receiver order, pending, with the given ids."""
        batch = outbox.put(_start(_receivers(3)), message_ids=["m0", "m1", "m2"])
        entries = handles().entries(batch)
        assert [e.message_id for e in entries] == ["m0", "m1", "m2"]
        assert [e.receiver for e in entries] == _receivers(3)
        assert {e.batch_id for e in entries} == {batch}
        assert {e.state for e in entries} == {OutboxState.PENDING}
        assert {(e.outcome, e.claims, e.lease_until) for e in entries} == {(None, 0, None)}
        assert outbox.counts() == {
            OutboxState.PENDING: 3,
            OutboxState.CLAIMED: 0,
            OutboxState.DONE: 0,
        }

    def test_put_refuses_what_could_not_be_sent(self, outbox: OutboxStore) -> None:
        """Mismatched ids are a ConfigurationError, a taken id an OutboxError; nothing stays."""
        with raises(ConfigurationError, match="2 message ids for 3"):
            outbox.put(_start(_receivers(3)), message_ids=["a", "b"])
        outbox.put(_start(_receivers(1)), message_ids=["taken"])
        with raises(OutboxError):
            outbox.put(_start(_receivers(2)), message_ids=["fresh", "taken"])
        assert [e.message_id for e in outbox.entries()] == ["taken"]
        outbox.put(_start(_receivers(1)))  # the handle is still usable after an error
        assert sum(outbox.counts().values()) == 2

    # -- claims and leases

    def test_concurrent_claims_never_take_the_same_row(
        self, outbox: OutboxStore, handles: Callable[[], OutboxStore]
    ) -> None:
        """Four handles claiming from four threads at once split the rows between them."""
        outbox.put(_start(_receivers(400)))
        mine = [handles() for _ in range(4)]
        claimed: list[list[str]] = [[] for _ in range(4)]

        def work(index: int) -> None:
            while claim := mine[index].claim(7, lease_seconds=60).entries:
                claimed[index].extend(e.message_id for e in claim)

        in_threads(work, 4)
        every = [m for ids in claimed for m in ids]
        assert len(every) == 400
        assert len(set(every)) == 400

    def test_an_expired_lease_is_claimable_again_and_only_the_new_claim_records(
        self, clock: ContractClock, outbox: OutboxStore, handles: Callable[[], OutboxStore]
    ) -> None:
        """After its lease a claim's rows go to the next claim; the old one records nothing."""
        other = handles()
        outbox.put(_start(_receivers(5)))
        first = outbox.claim(10, lease_seconds=30)
        assert len(first) == 5
        assert first.lease_until == clock.now + 30
        assert [e.claims for e in first.entries] == [1] * 5
        clock.now += 29.9
        assert len(other.claim(10, lease_seconds=30)) == 0
        clock.now += 0.1
        second = other.claim(10, lease_seconds=30)
        assert [e.message_id for e in second.entries] == [e.message_id for e in first.entries]
        assert {e.claims for e in second.entries} == {2}
        assert second.token != first.token
        assert outbox.record(first, _deliveries(first), done=True) == []
        assert len(other.record(second, _deliveries(second), done=True)) == 5
        assert other.record(second, _deliveries(second, Outcome.FAILED), done=True) == []
        assert {(e.state, e.outcome, e.lease_until) for e in outbox.entries()} == {
            (OutboxState.DONE, Outcome.DELIVERED, None)
        }

    def test_renewing_keeps_the_rows_and_release_gives_them_back(
        self, clock: ContractClock, outbox: OutboxStore
    ) -> None:
        """Renewal moves the lease; release makes the rows claimable at once."""
        outbox.put(_start(_receivers(2)))
        claim = outbox.claim(10, lease_seconds=30)
        clock.now += 20
        assert outbox.renew(claim, 30) == 2
        clock.now += 20
        assert len(outbox.claim(10, lease_seconds=30)) == 0
        assert outbox.next_claimable() == clock.now + 10
        assert outbox.release(claim) == 2
        again = outbox.claim(10, lease_seconds=30)
        assert len(again) == 2
        assert outbox.renew(claim, 30) == 0  # the old claim holds nothing any more

    def test_claims_come_in_the_order_rows_were_put(self, outbox: OutboxStore) -> None:
        """Older notifications are claimed first, with their batches' payloads and sizes.

        A batch's size is that of its send: all its receivers, not only those claimed.
        """
        first = outbox.put(_start(_receivers(3)), message_ids=["a0", "a1", "a2"])
        second = outbox.put(_start(_receivers(2)), message_ids=["b0", "b1"])
        claim = outbox.claim(4, lease_seconds=30)
        assert [e.message_id for e in claim.entries] == ["a0", "a1", "a2", "b0"]
        assert set(claim.payloads) == {first, second}
        assert claim.sizes == {first: 3, second: 2}
        assert (outbox.batch_size(first), outbox.batch_size(second)) == (3, 2)
        rest = outbox.claim(4, lease_seconds=30)
        assert [e.message_id for e in rest.entries] == ["b1"]
        assert rest.sizes == {second: 2}
        assert len(outbox.claim(4, lease_seconds=30)) == 0

    def test_bad_claim_arguments_are_refused(self, outbox: OutboxStore) -> None:
        """A claim of nothing, or for no time, is a ConfigurationError."""
        with raises(ConfigurationError):
            outbox.claim(0, lease_seconds=30)
        with raises(ConfigurationError):
            outbox.claim(1, lease_seconds=0)

    # -- recording

    def test_recorded_values_read_back_and_finish_marks_done(
        self, clock: ContractClock, outbox: OutboxStore
    ) -> None:
        """Every field of an outcome is stored; finish marks recorded rows done once."""
        outbox.put(_start(_receivers(3)))
        claim = outbox.claim(10, lease_seconds=30)
        a, b, c = claim.entries
        notification = _start([e.receiver for e in claim.entries])
        error = TransportError(
            "reset by peer \x00 \udcff ü",
            url=c.receiver.message_endpoint,
            kind=TransportErrorKind.RESET,
        )
        deliveries = [
            Delivery(a.receiver, notification, Outcome.DELIVERED, a.message_id, 1, 0.25, 202),
            Delivery(b.receiver, notification, Outcome.REJECTED, b.message_id, 2, 1.5, 409),
            Delivery(c.receiver, notification, Outcome.FAILED, c.message_id, 3, 7.0, None, error),
        ]
        clock.now += 5
        assert [d.message_id for d in outbox.record(claim, deliveries)] == [
            a.message_id,
            b.message_id,
            c.message_id,
        ]
        entries = {e.message_id: e for e in outbox.entries()}
        assert {e.state for e in entries.values()} == {OutboxState.CLAIMED}
        got = entries[a.message_id]
        assert (got.outcome, got.attempts, got.status_code, got.elapsed) == (
            Outcome.DELIVERED,
            1,
            202,
            0.25,
        )
        assert got.recorded_at == clock.now
        got = entries[b.message_id]
        assert (got.outcome, got.attempts, got.status_code) == (Outcome.REJECTED, 2, 409)
        got = entries[c.message_id]
        assert (got.outcome, got.attempts, got.status_code, got.error_kind) == (
            Outcome.FAILED,
            3,
            None,
            TransportErrorKind.RESET,
        )
        assert got.error is not None
        assert got.error.startswith("reset by peer ")
        assert got.error.endswith(" ü")
        assert outbox.record(claim, deliveries) == []  # once only
        assert outbox.finish(claim, [a.message_id, b.message_id]) == 2
        assert outbox.finish(claim, [a.message_id]) == 0
        assert outbox.counts()[OutboxState.DONE] == 2
        assert outbox.next_claimable() == claim.lease_until  # c waits for its callbacks

    def test_a_batch_records_only_its_claims_rows_each_once(self, outbox: OutboxStore) -> None:
        """One record call records a claim's own rows once; others in the batch are left.

        A row of another claim, and the same id a second time, are not recorded (the rest
        of the batch is, done or not).
        """
        outbox.put(_start(_receivers(4)))
        claim = outbox.claim(3, lease_seconds=30)
        a, b, c = claim.entries
        (other,) = outbox.claim(3, lease_seconds=30).entries
        notification = _start([e.receiver for e in (a, b, c, other)])

        def delivery(entry: OutboxEntry) -> Delivery:
            return Delivery(
                entry.receiver, notification, Outcome.DELIVERED, entry.message_id, 1, 0.1, 202
            )

        for done in (False, True):
            first, second = (a, b) if not done else (c, c)
            batch = [delivery(first), delivery(other), delivery(second), delivery(first)]
            got = outbox.record(claim, batch, done=done)
            assert sorted({d.message_id for d in got}) == sorted(
                {first.message_id, second.message_id}
            )
        assert outbox.record(claim, [delivery(a), delivery(c)], done=True) == []
        assert outbox.counts() == {
            OutboxState.PENDING: 0,
            OutboxState.CLAIMED: 3,  # a and b wait to be finished, other is unrecorded
            OutboxState.DONE: 1,
        }

    def test_an_unrecorded_row_is_not_finished(self, outbox: OutboxStore) -> None:
        """Finish only touches rows whose outcome is recorded."""
        outbox.put(_start(_receivers(1)))
        claim = outbox.claim(10, lease_seconds=30)
        assert outbox.finish(claim, [claim.entries[0].message_id]) == 0
        assert outbox.counts()[OutboxState.CLAIMED] == 1

    # -- operating

    def test_failed_deliveries_can_be_listed_and_retried_with_the_same_id(
        self, clock: ContractClock, outbox: OutboxStore
    ) -> None:
        """Re-driving a failed delivery makes it pending again, same id, claimable."""
        outbox.put(_start(_receivers(3)))
        claim = outbox.claim(10, lease_seconds=30)
        error = ConnectError("refused", url="http://client-1.test/msg")
        results = _deliveries(claim)
        results[1] = _deliveries(claim, Outcome.FAILED, status_code=None, error=error)[1]
        results[2] = _deliveries(claim, Outcome.FAILED, status_code=503)[2]
        outbox.record(claim, results, done=True)
        failed = outbox.failed()
        assert [e.message_id for e in failed] == [e.message_id for e in claim.entries[1:]]
        assert failed[0].error == str(error)
        assert failed[0].error_kind is TransportErrorKind.CONNECT
        assert failed[1].status_code == 503
        assert [e.message_id for e in outbox.failed(limit=1)] == [failed[0].message_id]
        assert outbox.retry_failed([failed[1].message_id]) == 1
        assert outbox.retry_failed() == 1
        assert outbox.retry_failed() == 0
        assert outbox.failed() == []
        again = outbox.claim(10, lease_seconds=30)
        assert [e.message_id for e in again.entries] == [e.message_id for e in failed]
        assert {(e.outcome, e.claims) for e in again.entries} == {(None, 2)}

    def test_prune_forgets_old_done_deliveries_only(
        self, clock: ContractClock, outbox: OutboxStore
    ) -> None:
        """Prune deletes done rows recorded before the given time, nothing else."""
        outbox.put(_start(_receivers(2)))
        claim = outbox.claim(10, lease_seconds=30)
        outbox.record(claim, _deliveries(claim), done=True)
        outbox.put(_start(_receivers(1)))
        assert outbox.prune(before=clock.now) == 0
        clock.now += 1
        assert outbox.prune(before=clock.now) == 2
        assert outbox.counts() == {
            OutboxState.PENDING: 1,
            OutboxState.CLAIMED: 0,
            OutboxState.DONE: 0,
        }
        assert outbox.next_claimable() == clock.now

    def test_next_claimable_is_none_when_everything_is_done(self, outbox: OutboxStore) -> None:
        """An empty or finished outbox has nothing to claim, ever."""
        assert outbox.next_claimable() is None
        outbox.put(_start(_receivers(1)))
        claim = outbox.claim(10, lease_seconds=30)
        outbox.record(claim, _deliveries(claim), done=True)
        assert outbox.next_claimable() is None

    def test_a_closed_handle_refuses_work(self, handles: Callable[[], OutboxStore]) -> None:
        """After close every call is a ConfigurationError; close is idempotent."""
        store = handles()
        store.close()
        store.close()
        with raises(ConfigurationError, match="closed"):
            store.counts()

    # -- with a dispatcher

    def test_a_dispatcher_delivers_records_and_calls_back_once(self, outbox: OutboxStore) -> None:
        """End to end: the same webhook-id on the wire as stored, one outcome and call each."""
        dead = "http://client-2.test/msg"

        def answer(request: MemoryRequest) -> int:
            if request.url == dead:
                raise ConnectError("refused", url=request.url)
            return 409 if request.url.startswith("http://client-1.") else 202

        transport = MemoryTransport(answer)
        calls = _Calls()
        batch = outbox.put(_start(_receivers(5)))
        with Notifier(transport=transport, retry=RetryPolicy.no_retries()) as notifier:
            dispatcher = OutboxDispatcher(outbox, notifier, callbacks=calls, batch_size=2)
            assert dispatcher.run() == 5
            assert dispatcher.run_once() == 0
        entries = outbox.entries(batch)
        assert [e.outcome for e in entries] == [
            Outcome.DELIVERED,
            Outcome.REJECTED,
            Outcome.FAILED,
            Outcome.DELIVERED,
            Outcome.DELIVERED,
        ]
        assert {e.state for e in entries} == {OutboxState.DONE}
        assert sorted(calls.ids) == sorted(e.message_id for e in entries)
        assert sorted(r.headers["webhook-id"] for r in transport.requests) == sorted(
            e.message_id for e in entries
        )

    def test_callbacks_of_an_outcome_recorded_before_a_crash_run_without_resending(
        self, clock: ContractClock, outbox: OutboxStore
    ) -> None:
        """A recorded outcome whose claim died is called back, never sent again."""
        outbox.put(_start(_receivers(3)))
        crashed = outbox.claim(10, lease_seconds=30)
        assert len(outbox.record(crashed, _deliveries(crashed)[:2])) == 2
        clock.now += 31
        transport = MemoryTransport()
        calls = _Calls()
        with Notifier(transport=transport) as notifier:
            OutboxDispatcher(outbox, notifier, callbacks=calls).run()
        entries = outbox.entries()
        assert [r.headers["webhook-id"] for r in transport.requests] == [entries[2].message_id]
        assert sorted(calls.ids) == sorted(e.message_id for e in entries)
        assert {e.state for e in entries} == {OutboxState.DONE}
