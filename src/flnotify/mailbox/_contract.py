# ruff: noqa: S101 - a pytest suite: plain asserts are the point
"""A pytest suite every [`MailboxStore`][flnotify.mailbox.MailboxStore] must pass."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .._exceptions import ConfigurationError
from .._notifier import Notifier
from .._report import Delivery
from .._retry import RetryPolicy
from .._training import GlobalModelBody, TrainingStartNotification
from .._types import Outcome, Receiver
from ..outbox._contract import ContractClock, fixture, in_threads, install_fixtures, raises
from ..transports._memory import MemoryTransport
from ._dispatcher import MailboxDispatcher
from ._model import STATES, MailboxError
from ._store import Adopted, Answer, Letter, MailboxStore
from ._wire import MAILBOX_ENDPOINT

if TYPE_CHECKING:
    from hypothesis.stateful import RuleBasedStateMachine

__all__ = ["MailboxStoreContract"]

ACK_DEADLINE = 300.0
"""The acknowledgement deadline of the suite's handles, unless a test asks for another."""
VISIBILITY = 30.0
"""The visibility of the suite's handles, unless a test asks for another."""

_MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
_C1, _C2, _C3 = (uuid.UUID(int=i) for i in (1, 2, 3))
_BODY = bytes(range(256)) + b"\x00 end \xff"


class OpenMailbox(Protocol):
    """Opens a handle on the test's mailbox (the fixture ``handles``)."""

    def __call__(
        self, *, ack_deadline: float = ACK_DEADLINE, visibility: float = VISIBILITY
    ) -> MailboxStore: ...


def _notification(clients: Sequence[uuid.UUID]) -> TrainingStartNotification:
    return TrainingStartNotification(
        receivers=[Receiver(c, MAILBOX_ENDPOINT) for c in clients],
        body=GlobalModelBody(global_model_uuid=_MODEL),
        training_uuid=_MODEL,
    )


def _outcome(
    message_id: str, outcome: Outcome = Outcome.DELIVERED, client: uuid.UUID = _C1
) -> Delivery:
    status = {Outcome.DELIVERED: 204, Outcome.REJECTED: 409}.get(outcome)
    receiver = Receiver(client, MAILBOX_ENDPOINT)
    return Delivery(receiver, _notification([client]), outcome, message_id, 1, 0.5, status)


def _post(
    store: MailboxStore,
    letters: Sequence[tuple[uuid.UUID, str]],
    *,
    send: str = "send-1",
    body: bytes = _BODY,
    owner: str = "judge-a",
    lease: float = 60.0,
    size: int | None = None,
) -> None:
    size = len(letters) if size is None else size
    store.post(send, size, body, letters, owner=owner, lease_seconds=lease)


def _seen(letters: list[Letter]) -> list[tuple[str, uuid.UUID, int]]:
    return [(letter.message_id, letter.client_id, letter.fetches) for letter in letters]


def _answered(answers: list[Answer]) -> list[tuple[str, int | None, int]]:
    return [(a.message_id, a.status, a.fetches) for a in answers]


class MailboxStoreContract:
    """Tests every mailbox store must pass: offers, answers, judging once, leases, replays.

    Subclass it in a ``test_*.py`` file under a ``Test``-prefixed name and implement
    [`make_mailbox`][flnotify.testing.MailboxStoreContract.make_mailbox]. Each test starts
    from an empty mailbox: set one up per test in an ``autouse`` fixture method of the
    subclass (a new file under ``tmp_path``, a new database) and store where it is on
    ``self``::

        from flnotify.mailbox import PostgresMailbox
        from flnotify.testing import MailboxStoreContract

        class TestMyMailbox(MailboxStoreContract):
            @pytest.fixture(autouse=True)
            def _database(self, postgres_url):
                self.url = postgres_url

            def make_mailbox(self, clock, *, ack_deadline, visibility):
                return PostgresMailbox(
                    self.url, clock=clock, ack_deadline=ack_deadline, visibility=visibility
                )

    The clock is the suite's: no test sleeps. The concurrency tests use 4 handles from 4
    threads at once; the randomised test opens a handle per example and keeps its
    examples apart by their own client ids and owners (it never adopts).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        install_fixtures(cls)

    # -- hooks for subclasses

    def make_mailbox(
        self, clock: Callable[[], float], *, ack_deadline: float, visibility: float
    ) -> MailboxStore:
        """A new handle (its own connection) on this test's mailbox, timed by ``clock``."""
        raise NotImplementedError("subclasses of MailboxStoreContract implement this")

    # -- plumbing

    @fixture
    def clock(self) -> ContractClock:
        """The fake clock of this test's handles."""
        return ContractClock()

    @fixture
    def handles(self, clock: ContractClock) -> Iterator[OpenMailbox]:
        """Opens handles on the test's mailbox and closes them all afterwards."""
        opened: list[MailboxStore] = []

        def open_one(
            *, ack_deadline: float = ACK_DEADLINE, visibility: float = VISIBILITY
        ) -> MailboxStore:
            store = self.make_mailbox(clock, ack_deadline=ack_deadline, visibility=visibility)
            opened.append(store)
            return store

        yield open_one
        for store in opened:
            store.close()

    @fixture
    def mailbox(self, handles: OpenMailbox) -> MailboxStore:
        """One handle on this test's mailbox."""
        return handles()

    # -- the store

    def test_it_is_a_mailbox_store_with_the_options_given(
        self, clock: ContractClock, handles: OpenMailbox
    ) -> None:
        """The Protocol holds; deadline and visibility are the ones asked for; now is clock."""
        store = handles(ack_deadline=7.0, visibility=2.0)
        assert isinstance(store, MailboxStore)
        assert (store.ack_deadline, store.visibility) == (7.0, 2.0)
        assert store.now() == clock.now
        assert store.counts() == dict.fromkeys(STATES, 0)
        _post(store, [(_C1, "m1")])
        assert _seen(store.fetch(_C1, 10)) == [("m1", _C1, 1)]
        clock.now += 2.0
        assert _seen(store.fetch(_C1, 10)) == [("m1", _C1, 2)]
        clock.now += 5.0
        assert store.fetch(_C1, 10) == []
        assert _answered(store.answers("judge-a")) == [("m1", None, 2)]

    def test_a_closed_handle_refuses_work(self, handles: OpenMailbox) -> None:
        """After close every call is a ConfigurationError; close is idempotent."""
        store = handles()
        store.close()
        store.close()
        with raises(ConfigurationError, match="closed"):
            store.counts()
        with raises(ConfigurationError, match="closed"):
            store.fetch(_C1, 1)

    # -- posting and fetching

    def test_fetch_returns_the_exact_bodies_oldest_first(
        self, mailbox: MailboxStore, handles: OpenMailbox
    ) -> None:
        """Each client gets its own letters, in the order posted, byte for byte."""
        other = b'{"text": "\xc3\xbc \\u0000"}\r\n'
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")], send="s1")
        _post(mailbox, [(_C1, "m3")], send="s2", body=other)
        letters = handles().fetch(_C1, 10)
        assert letters == [Letter("m1", _C1, _BODY, 1), Letter("m3", _C1, other, 1)]
        assert mailbox.fetch(_C2, 10) == [Letter("m2", _C2, _BODY, 1)]
        assert mailbox.fetch(_C1, 10) == []
        assert mailbox.fetch(_C3, 10) == []

    def test_fetch_many_offers_each_client_what_its_own_fetch_would(
        self, mailbox: MailboxStore, clock: ContractClock
    ) -> None:
        """One call for several waiting clients: each its own letters, up to its limit."""
        _post(mailbox, [(_C1, "a1"), (_C2, "b1")], send="s1", body=b"one")
        _post(mailbox, [(_C1, "a2"), (_C2, "b2")], send="s2", body=b"two")
        assert mailbox.fetch_many({}) == {}
        got = mailbox.fetch_many({_C1: 1, _C2: 5, _C3: 2})
        assert got == {
            _C1: [Letter("a1", _C1, b"one", 1)],
            _C2: [Letter("b1", _C2, b"one", 1), Letter("b2", _C2, b"two", 1)],
        }
        assert mailbox.fetch_many({_C1: 5, _C2: 5}) == {_C1: [Letter("a2", _C1, b"two", 1)]}
        clock.now += VISIBILITY
        assert _seen(mailbox.fetch_many({_C2: 1})[_C2]) == [("b1", _C2, 2)]
        with raises(ConfigurationError):
            mailbox.fetch_many({_C1: 1, _C2: 0})

    def test_fetch_respects_the_limit(self, mailbox: MailboxStore) -> None:
        """A fetch offers at most ``limit`` letters; the next fetch the following ones."""
        _post(mailbox, [(_C1, f"m{i}") for i in range(5)] + [(_C2, "other")])
        assert [x.message_id for x in mailbox.fetch(_C1, 2)] == ["m0", "m1"]
        assert [x.message_id for x in mailbox.fetch(_C1, 2)] == ["m2", "m3"]
        assert [x.message_id for x in mailbox.fetch(_C1, 2)] == ["m4"]
        assert [x.message_id for x in mailbox.fetch(_C2, 2)] == ["other"]

    def test_a_fetched_letter_is_hidden_for_visibility_then_offered_again(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """Unacknowledged, it comes back after ``visibility``: same id, one more fetch."""
        _post(mailbox, [(_C1, "m1"), (_C1, "m2")])
        assert _seen(mailbox.fetch(_C1, 1)) == [("m1", _C1, 1)]
        assert mailbox.counts()["offered"] == 1
        clock.now += VISIBILITY - 0.5
        assert _seen(mailbox.fetch(_C1, 10)) == [("m2", _C1, 1)]
        assert mailbox.fetch(_C1, 10) == []
        assert mailbox.fetchable([_C1]) == set()
        clock.now += 0.5
        assert mailbox.fetchable([_C1]) == {_C1}
        assert mailbox.fetch(_C1, 10) == [Letter("m1", _C1, _BODY, 2)]
        clock.now += VISIBILITY
        assert _seen(mailbox.fetch(_C1, 10)) == [("m1", _C1, 3), ("m2", _C1, 2)]

    def test_a_letter_past_its_deadline_is_not_offered(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """At ``ack_deadline`` after posting a letter is no longer fetchable; its judge fails it."""
        _post(mailbox, [(_C1, "m1")])
        clock.now += ACK_DEADLINE
        assert mailbox.fetchable([_C1]) == set()
        assert mailbox.fetch(_C1, 10) == []
        assert mailbox.answers("judge-a") == [Answer("m1", _C1, None, 0, "send-1")]

    def test_fetchable_names_the_clients_a_fetch_would_serve(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """Only clients with a queued letter, or an offered one whose visibility ended."""
        assert mailbox.fetchable([]) == set()
        assert mailbox.fetchable([_C1, _C2]) == set()
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")])
        assert mailbox.fetchable([_C1, _C2, _C3]) == {_C1, _C2}
        assert mailbox.fetchable([_C2]) == {_C2}
        mailbox.fetch(_C1, 10)
        assert mailbox.fetchable([_C1, _C2, _C3]) == {_C2}
        clock.now += VISIBILITY
        assert mailbox.fetchable([_C1, _C2, _C3]) == {_C1, _C2}

    def test_concurrent_fetches_never_offer_one_letter_twice(
        self, mailbox: MailboxStore, handles: OpenMailbox
    ) -> None:
        """Four handles fetching one client's mailbox at once split its letters."""
        _post(mailbox, [(_C1, f"m{i}") for i in range(200)])
        mine = [handles() for _ in range(4)]
        got: list[list[str]] = [[] for _ in range(4)]

        def work(index: int) -> None:
            while letters := mine[index].fetch(_C1, 7):
                got[index].extend(x.message_id for x in letters)

        in_threads(work, 4)
        every = [m for ids in got for m in ids]
        assert sorted(every) == sorted(f"m{i}" for i in range(200))
        assert mailbox.counts()["offered"] == 200

    # -- acknowledging

    def test_an_ack_counts_only_for_a_letter_offered_to_that_client(
        self, mailbox: MailboxStore
    ) -> None:
        """Not for a queued letter, another client's, or an unknown id."""
        _post(mailbox, [(_C1, "m1"), (_C1, "m2"), (_C2, "m3")])
        mailbox.fetch(_C1, 1)
        mailbox.fetch(_C2, 1)
        assert mailbox.ack(_C1, []) == 0
        assert mailbox.ack(_C1, [("m2", 204)]) == 0  # queued, never fetched
        assert mailbox.ack(_C2, [("m1", 204)]) == 0  # offered, but to another client
        assert mailbox.ack(_C1, [("m3", 204)]) == 0
        assert mailbox.ack(_C1, [("unknown", 204)]) == 0
        assert mailbox.answers("judge-a") == []
        assert mailbox.ack(_C1, [("m1", 204), ("m2", 204), ("m3", 204)]) == 1
        assert mailbox.answers("judge-a") == [Answer("m1", _C1, 204, 1, "send-1")]
        assert mailbox.counts() == {"queued": 1, "offered": 1, "answered": 1, "done": 0}

    def test_the_first_answer_wins(self, mailbox: MailboxStore) -> None:
        """Within one call and across calls, a letter takes one answer only."""
        _post(mailbox, [(_C1, "m1"), (_C1, "m2")])
        mailbox.fetch(_C1, 10)
        assert mailbox.ack(_C1, [("m1", 503), ("m1", 204), ("m2", 409)]) == 2
        assert mailbox.ack(_C1, [("m1", 204), ("m2", 204)]) == 0
        assert _answered(mailbox.answers("judge-a")) == [("m1", 503, 1), ("m2", 409, 1)]

    def test_an_ack_counts_until_the_deadline_even_after_visibility(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """A late answer of an offered letter counts; one at the deadline does not."""
        _post(mailbox, [(_C1, "m1"), (_C1, "m2")])
        mailbox.fetch(_C1, 10)
        clock.now += ACK_DEADLINE - 1
        assert mailbox.ack(_C1, [("m1", 204)]) == 1
        clock.now += 1
        assert mailbox.ack(_C1, [("m2", 204)]) == 0
        assert _answered(mailbox.answers("judge-a")) == [("m1", 204, 1), ("m2", None, 1)]

    # -- judging: answers, requeue, settle

    def test_answers_go_to_their_owner_only_and_overdue_letters_answer_none(
        self, clock: ContractClock, mailbox: MailboxStore, handles: OpenMailbox
    ) -> None:
        """Each owner reads its own answers, until they are requeued or settled."""
        _post(mailbox, [(_C1, "a1")], send="sa", owner="judge-a")
        _post(mailbox, [(_C2, "b1")], send="sb", owner="judge-b")
        clock.now += 1
        _post(mailbox, [(_C3, "a2")], send="sa2", owner="judge-a")
        mailbox.fetch(_C1, 10)
        mailbox.fetch(_C2, 10)
        mailbox.ack(_C1, [("a1", 204)])
        mailbox.ack(_C2, [("b1", 500)])
        assert mailbox.answers("judge-a") == [Answer("a1", _C1, 204, 1, "sa")]
        assert handles().answers("judge-a") == [Answer("a1", _C1, 204, 1, "sa")]
        assert mailbox.answers("judge-b") == [Answer("b1", _C2, 500, 1, "sb")]
        assert mailbox.answers("nobody") == []
        clock.now += ACK_DEADLINE - 1  # a1's and b1's deadline; a2 has a second left
        assert mailbox.answers("judge-a") == [Answer("a1", _C1, 204, 1, "sa")]
        clock.now += 1
        assert mailbox.answers("judge-a") == [
            Answer("a1", _C1, 204, 1, "sa"),
            Answer("a2", _C3, None, 0, "sa2"),
        ]
        assert mailbox.answers("judge-b") == [Answer("b1", _C2, 500, 1, "sb")]
        assert mailbox.counts()["answered"] == 3

    def test_requeue_offers_a_letter_again_after_its_delay(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """Only the owner's answered letters; the next offer counts on, same id and body."""
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")])
        _post(mailbox, [(_C3, "other")], send="s2", owner="judge-b")
        for client in (_C1, _C2, _C3):
            mailbox.fetch(client, 10)
        mailbox.ack(_C1, [("m1", 503)])
        mailbox.ack(_C3, [("other", 503)])
        assert mailbox.requeue("judge-a", []) == 0
        assert mailbox.requeue("judge-a", [("m2", 0.0)]) == 0  # offered, not answered
        assert mailbox.requeue("judge-a", [("other", 0.0)]) == 0  # judge-b's
        assert mailbox.requeue("judge-a", [("m1", 10.0), ("unknown", 0.0)]) == 1
        assert mailbox.requeue("judge-a", [("m1", 10.0)]) == 0
        assert mailbox.answers("judge-a") == []
        assert mailbox.counts() == {"queued": 1, "offered": 1, "answered": 1, "done": 0}
        clock.now += 9.5
        assert mailbox.fetch(_C1, 10) == []
        assert mailbox.fetchable([_C1]) == set()
        clock.now += 0.5
        assert mailbox.fetchable([_C1]) == {_C1}
        assert mailbox.fetch(_C1, 10) == [Letter("m1", _C1, _BODY, 2)]
        assert mailbox.ack(_C1, [("m1", 204)]) == 1
        assert mailbox.answers("judge-a") == [Answer("m1", _C1, 204, 2, "send-1")]

    def test_settle_records_once_and_done_letters_stay_done(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """Only the owner settles, each letter once; then nothing offers or answers it."""
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")])
        mailbox.fetch(_C1, 10)
        mailbox.ack(_C1, [("m1", 204)])
        first, again = _outcome("m1"), _outcome("m1", Outcome.FAILED)
        assert mailbox.settle("judge-a", []) == []
        assert mailbox.settle("judge-b", [first]) == []
        assert mailbox.settle("judge-a", [first, again]) == [first]
        assert mailbox.settle("judge-a", [again]) == []
        unanswered = _outcome("m2", Outcome.FAILED, _C2)  # a judge that gave up waiting
        assert mailbox.settle("judge-a", [unanswered, _outcome("unknown")]) == [unanswered]
        assert mailbox.counts() == {"queued": 0, "offered": 0, "answered": 0, "done": 2}
        assert mailbox.answers("judge-a") == []
        assert mailbox.fetch(_C2, 10) == []
        assert mailbox.fetchable([_C1, _C2]) == set()
        assert mailbox.ack(_C1, [("m1", 500)]) == 0
        assert mailbox.requeue("judge-a", [("m1", 0.0)]) == 0
        assert mailbox.renew("judge-a", 60.0) == 0
        clock.now += ACK_DEADLINE
        assert mailbox.answers("judge-a") == []
        assert mailbox.adopt("judge-c", 60.0, 10) == []

    # -- leases and adoption

    def test_renew_and_release_move_the_lease_that_adoption_waits_for(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """Nothing is adopted while its lease runs; release ends it at once."""
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")], lease=60.0)
        clock.now += 59
        assert mailbox.adopt("judge-b", 60.0, 10) == []
        assert mailbox.renew("judge-a", 60.0) == 2
        assert mailbox.renew("nobody", 60.0) == 0
        clock.now += 59
        assert mailbox.adopt("judge-b", 60.0, 10) == []
        assert mailbox.release("judge-a") == 2
        assert [a.message_id for a in mailbox.adopt("judge-b", 60.0, 10)] == ["m1", "m2"]
        assert mailbox.release("judge-a") == 0

    def test_adopt_takes_over_ended_leases_with_what_judging_needs(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """The adopter gets payload, send size and posting time; the old owner loses all."""
        posted = clock.now
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")], send="s1", size=5, lease=30.0)
        clock.now += 1
        _post(mailbox, [(_C3, "m3")], send="s2", body=b"two", owner="judge-x", lease=30.0)
        mailbox.fetch(_C1, 10)
        mailbox.ack(_C1, [("m1", 204)])
        clock.now += 29
        adopted = mailbox.adopt("judge-b", 60.0, 10)
        assert adopted == [
            Adopted("m1", _C1, "s1", 5, _BODY, posted),
            Adopted("m2", _C2, "s1", 5, _BODY, posted),
        ]
        assert mailbox.adopt("judge-c", 60.0, 10) == []  # m3's lease has a second left
        assert mailbox.answers("judge-a") == []
        assert mailbox.settle("judge-a", [_outcome("m1")]) == []
        assert mailbox.renew("judge-a", 60.0) == 0
        assert mailbox.answers("judge-b") == [Answer("m1", _C1, 204, 1, "s1")]
        assert mailbox.renew("judge-b", 60.0) == 2
        clock.now += 1
        assert mailbox.adopt("judge-c", 60.0, 10) == [
            Adopted("m3", _C3, "s2", 1, b"two", posted + 1)
        ]
        assert mailbox.settle("judge-b", [_outcome("m1")]) == [_outcome("m1")]
        assert mailbox.release("judge-b") == 1
        assert [a.message_id for a in mailbox.adopt("judge-d", 60.0, 1)] == ["m2"]
        assert mailbox.adopt("judge-d", 60.0, 1) == []

    def test_adopt_takes_the_oldest_ended_leases_first_up_to_the_limit(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """The lease that ended first is adopted first; a limit of n takes n."""
        _post(mailbox, [(_C1, "late")], send="s1", owner="judge-a", lease=50.0)
        _post(mailbox, [(_C2, "early1"), (_C3, "early2")], send="s2", owner="judge-b", lease=10.0)
        clock.now += 50
        assert [a.message_id for a in mailbox.adopt("judge-c", 60.0, 2)] == ["early1", "early2"]
        assert [a.message_id for a in mailbox.adopt("judge-c", 60.0, 2)] == ["late"]

    def test_concurrent_adopters_never_take_the_same_letter(
        self, mailbox: MailboxStore, handles: OpenMailbox
    ) -> None:
        """Four dispatchers adopting at once split the orphaned letters between them."""
        _post(mailbox, [(uuid.UUID(int=i + 1), f"m{i}") for i in range(200)])
        mailbox.release("judge-a")
        mine = [handles() for _ in range(4)]
        got: list[list[str]] = [[] for _ in range(4)]

        def work(index: int) -> None:
            while adopted := mine[index].adopt(f"dispatcher-{index}", 60.0, 7):
                got[index].extend(a.message_id for a in adopted)

        in_threads(work, 4)
        every = [m for ids in got for m in ids]
        assert sorted(every) == sorted(f"m{i}" for i in range(200))
        assert sum(mailbox.renew(f"dispatcher-{i}", 60.0) for i in range(4)) == 200

    # -- replays, operating, durability

    def test_remember_says_true_once_until_the_nonce_expires(
        self, clock: ContractClock, mailbox: MailboxStore, handles: OpenMailbox
    ) -> None:
        """A nonce is new once; a replay is refused by every handle until ``until``."""
        assert mailbox.remember("n1", clock.now + 10) is True
        assert mailbox.remember("n1", clock.now + 10) is False
        assert handles().remember("n1", clock.now + 100) is False
        assert mailbox.remember("n2", clock.now + 20) is True
        clock.now += 9.5
        assert mailbox.remember("n1", clock.now + 10) is False
        clock.now += 0.5
        assert mailbox.remember("n1", clock.now + 10) is True
        assert mailbox.remember("n2", clock.now + 10) is False
        clock.now += 5
        assert mailbox.remember("n1", clock.now + 10) is False

    def test_remember_many_and_ack_many_answer_each_as_one_call_would(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """Several requests' nonces and answers in one call each, answered in order."""
        assert mailbox.remember("old", clock.now + 10) is True
        assert mailbox.remember_many([]) == []
        got = mailbox.remember_many([("a", clock.now + 10), ("old", 1e12), ("a", 1e12)])
        assert got == [True, False, False]  # a nonce twice in one call: fresh once
        _post(mailbox, [(_C1, "m1"), (_C1, "m2"), (_C2, "m3")])
        mailbox.fetch_many({_C1: 5, _C2: 5})
        taken = mailbox.ack_many(
            [
                (_C1, [("m1", 204), ("m3", 204)]),  # m3 is not _C1's
                (_C2, []),
                (_C2, [("m3", 409), ("m3", 204)]),
                (_C1, [("m1", 500), ("m2", 503)]),  # m1 answered already
            ]
        )
        assert taken == [1, 0, 1, 1]
        assert _answered(mailbox.answers("judge-a")) == [
            ("m1", 204, 1),
            ("m2", 503, 1),
            ("m3", 409, 1),
        ]
        assert mailbox.ack_many([]) == []

    def test_counts_follow_the_life_cycle(self, mailbox: MailboxStore) -> None:
        """Every state is present, from queued to done."""
        assert mailbox.counts() == {"queued": 0, "offered": 0, "answered": 0, "done": 0}
        _post(mailbox, [(_C1, f"m{i}") for i in range(4)])
        assert mailbox.counts() == {"queued": 4, "offered": 0, "answered": 0, "done": 0}
        mailbox.fetch(_C1, 3)
        mailbox.ack(_C1, [("m0", 204), ("m1", 204)])
        mailbox.settle("judge-a", [_outcome("m0")])
        assert mailbox.counts() == {"queued": 1, "offered": 1, "answered": 1, "done": 1}

    def test_prune_forgets_old_done_letters_only(
        self, clock: ContractClock, mailbox: MailboxStore
    ) -> None:
        """Prune deletes done letters settled before the given time, nothing else."""
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")])
        mailbox.settle("judge-a", [_outcome("m1")])
        assert mailbox.prune(before=clock.now) == 0
        clock.now += 1
        assert mailbox.prune(before=clock.now) == 1
        assert mailbox.counts() == {"queued": 1, "offered": 0, "answered": 0, "done": 0}
        assert mailbox.fetch(_C2, 10) == [Letter("m2", _C2, _BODY, 1)]  # its send is kept
        mailbox.settle("judge-a", [_outcome("m2", client=_C2)])
        clock.now += 1
        assert mailbox.prune(before=clock.now) == 1
        assert sum(mailbox.counts().values()) == 0
        _post(mailbox, [(_C1, "m3")], body=b"new")  # the send's id is free again
        assert mailbox.fetch(_C1, 10) == [Letter("m3", _C1, b"new", 1)]

    def test_letters_survive_reopening(
        self, clock: ContractClock, mailbox: MailboxStore, handles: OpenMailbox
    ) -> None:
        """A new handle on the same mailbox sees every letter in the state it was left."""
        _post(mailbox, [(_C1, "m1"), (_C2, "m2"), (_C3, "m3")])
        mailbox.fetch(_C1, 10)
        mailbox.fetch(_C3, 10)
        mailbox.ack(_C1, [("m1", 204)])
        mailbox.close()
        again = handles()
        assert again.counts() == {"queued": 1, "offered": 1, "answered": 1, "done": 0}
        assert again.answers("judge-a") == [Answer("m1", _C1, 204, 1, "send-1")]
        assert again.fetch(_C2, 10) == [Letter("m2", _C2, _BODY, 1)]
        assert again.ack(_C3, [("m3", 409)]) == 1
        clock.now += VISIBILITY
        assert again.fetch(_C2, 10) == [Letter("m2", _C2, _BODY, 2)]

    # -- refused input

    def test_a_message_id_of_another_client_is_refused_and_nothing_is_written(
        self, mailbox: MailboxStore
    ) -> None:
        """The whole post fails with MailboxError; the handle stays usable."""
        _post(mailbox, [(_C1, "taken")], send="s1")
        with raises(MailboxError):
            _post(mailbox, [(_C2, "fresh"), (_C3, "taken")], send="s2", body=b"first")
        with raises(MailboxError):
            _post(mailbox, [(_C2, "twice"), (_C3, "twice")], send="s2", body=b"first")
        with raises(MailboxError):
            _post(mailbox, [(_C2, "twice"), (_C2, "twice")], send="s2", body=b"first")
        assert mailbox.counts() == {"queued": 1, "offered": 0, "answered": 0, "done": 0}
        assert mailbox.fetchable([_C2, _C3]) == set()
        _post(mailbox, [(_C2, "fresh")], send="s2", body=b"second")
        assert mailbox.fetch(_C2, 10) == [Letter("fresh", _C2, b"second", 1)]

    def test_a_message_id_posted_again_is_offered_again_and_judged_by_the_new_post(
        self, mailbox: MailboxStore, clock: ContractClock
    ) -> None:
        """One message, one row: a re-post re-offers it whatever its state; one outcome each."""
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")], send="s1", owner="judge-a")
        assert _seen(mailbox.fetch(_C1, 10)) == [("m1", _C1, 1)]
        assert mailbox.ack(_C1, [("m1", 204)]) == 1
        assert mailbox.settle("judge-a", [_outcome("m1")]) == [_outcome("m1")]
        clock.now += 1.0
        # m1 is done, m2 still queued under judge-a: both are taken over by the new post
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")], send="s2", owner="judge-b", body=b"again")
        assert mailbox.counts() == {"queued": 2, "offered": 0, "answered": 0, "done": 0}
        assert mailbox.fetch(_C1, 10) == [Letter("m1", _C1, b"again", 1)]
        assert mailbox.ack(_C1, [("m1", 204)]) == 1
        assert mailbox.answers("judge-a") == []
        assert _answered(mailbox.answers("judge-b")) == [("m1", 204, 1)]
        assert mailbox.settle("judge-a", [_outcome("m2")]) == []  # no longer its judge
        assert mailbox.settle("judge-b", [_outcome("m1")]) == [_outcome("m1")]
        assert mailbox.settle("judge-b", [_outcome("m1")]) == []  # once per post
        # the fresh deadline runs from the re-post
        clock.now += ACK_DEADLINE - 0.5
        assert mailbox.fetchable([_C2]) == {_C2}
        mailbox.release("judge-b")
        assert [(a.message_id, a.send_id) for a in mailbox.adopt("c", 60.0, 10)] == [("m2", "s2")]

    def test_a_send_posted_in_parts_keeps_its_first_body(self, mailbox: MailboxStore) -> None:
        """Later posts of one send add letters; the send's body is written once."""
        _post(mailbox, [(_C1, "m1")], send="s1", size=2, body=b"body")
        _post(mailbox, [(_C2, "m2")], send="s1", size=2, body=b"body")
        assert mailbox.fetch(_C2, 10) == [Letter("m2", _C2, b"body", 1)]
        mailbox.release("judge-a")
        assert {(a.send_id, a.send_size) for a in mailbox.adopt("b", 60.0, 10)} == {("s1", 2)}

    def test_bad_input_is_a_configuration_error_and_writes_nothing(
        self, mailbox: MailboxStore
    ) -> None:
        """Client ids must be UUIDs, message ids non-empty, leases and limits positive."""
        bad: list[Callable[[], object]] = [
            lambda: _post(mailbox, [("not-a-uuid", "m1")]),  # type: ignore[list-item]
            lambda: _post(mailbox, [(_C1, "m1"), (_C2, "")]),
            lambda: _post(mailbox, [(_C1, "m1")], lease=0.0),
            lambda: _post(mailbox, [(_C1, "m1"), (_C2, "m2")], size=1),
            lambda: mailbox.renew("judge-a", 0.0),
            lambda: mailbox.adopt("judge-a", -1.0, 10),
            lambda: mailbox.adopt("judge-a", 60.0, 0),
            lambda: mailbox.fetch(_C1, 0),
            lambda: mailbox.fetch(_C1, -1),
        ]
        for call in bad:
            with raises(ConfigurationError):
                call()
        assert mailbox.counts() == dict.fromkeys(STATES, 0)
        _post(mailbox, [(_C1, "m1")], send="s1", body=b"ok")  # still usable
        assert mailbox.fetch(_C1, 10) == [Letter("m1", _C1, b"ok", 1)]

    # -- wake-ups

    def test_signals_tell_of_new_mail_and_answers(self, mailbox: MailboxStore) -> None:
        """Posts and requeues wake fetches of their clients; counted acks wake judges."""
        mail: list[frozenset[uuid.UUID]] = []
        answered: list[None] = []
        stop_mail = mailbox.signals.on_mail(mail.append)
        stop_answers = mailbox.signals.on_answer(lambda: answered.append(None))
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")])
        assert mail == [frozenset({_C1, _C2})]
        mailbox.fetch(_C1, 10)
        assert mailbox.ack(_C1, [("m2", 204)]) == 0
        assert answered == []
        assert mailbox.ack(_C1, [("m1", 503)]) == 1
        assert answered == [None]
        assert mailbox.requeue("judge-a", [("m1", 5.0)]) == 1
        assert mail[1:] == [frozenset({_C1})]
        stop_mail()
        stop_answers()
        _post(mailbox, [(_C3, "m3")], send="s2")
        assert len(mail) == 2

    # -- with a dispatcher

    def test_a_dispatcher_judges_and_settles_the_answers_of_a_stopped_sender(
        self, mailbox: MailboxStore
    ) -> None:
        """Adopted letters are judged like POST answers, called back and settled once."""
        notification = _notification([_C1, _C2])
        body = mailbox.codec.encode(notification)
        _post(mailbox, [(_C1, "m1"), (_C2, "m2")], body=body, owner="stopped")
        for client in (_C1, _C2):
            mailbox.fetch(client, 10)
        mailbox.ack(_C1, [("m1", 204)])
        mailbox.ack(_C2, [("m2", 409)])
        mailbox.release("stopped")
        calls = _Calls()
        transport = MemoryTransport()
        with Notifier(transport=transport, retry=RetryPolicy.no_retries()) as notifier:
            dispatcher = MailboxDispatcher(mailbox, notifier, callbacks=calls)
            assert dispatcher.run_once() == 2
            assert dispatcher.run_once() == 0
        assert sorted(calls.seen) == [
            ("m1", _C1, Outcome.DELIVERED),
            ("m2", _C2, Outcome.REJECTED),
        ]
        assert transport.requests == []
        assert mailbox.counts() == {"queued": 0, "offered": 0, "answered": 0, "done": 2}

    # -- random operations against a model

    def test_random_operations_agree_with_a_model(self) -> None:
        """Any sequence of posts, fetches, acks, judging, time and reopening keeps the rules.

        Bodies come back exact, a client sees only its letters, each letter settles at
        most once, and a reopened handle has lost nothing.
        """
        from hypothesis import HealthCheck, settings  # only when the test runs
        from hypothesis.stateful import run_state_machine_as_test

        run_state_machine_as_test(
            _machine(self.make_mailbox),
            settings=settings(
                max_examples=40,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


class _Calls:
    """Callbacks that remember (message id, client, outcome) of each call."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, uuid.UUID, Outcome]] = []

    def on_success(self, delivery: Delivery, /) -> None:
        self.seen.append((delivery.message_id, delivery.receiver.id, delivery.outcome))

    def on_error(self, delivery: Delivery, /) -> None:
        self.seen.append((delivery.message_id, delivery.receiver.id, delivery.outcome))


@attrs.define
class _Row:
    """What the model expects of one letter."""

    client: int
    owner: int
    send: str
    body: bytes
    deadline: float
    available: float
    state: str = "queued"
    offered_until: float = 0.0
    fetches: int = 0
    status: int | None = None

    def fetchable(self, now: float) -> bool:
        if self.state not in {"queued", "offered"} or self.deadline <= now:
            return False
        return (self.available if self.state == "queued" else self.offered_until) <= now


_ADVANCES = (0.5, 1.0, 10.0, VISIBILITY - 0.5, VISIBILITY, 60.0, ACK_DEADLINE / 2, ACK_DEADLINE)


def _machine(make: Callable[..., MailboxStore]) -> type[RuleBasedStateMachine]:
    """A state machine driving one handle and a model side by side.

    Its clients, owners and message ids are fresh per example, so the examples of one
    test need no fresh mailbox each. Hypothesis is imported here, when the test runs.
    """
    from hypothesis import strategies as st  # only when the test runs
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        rule,
    )

    picks_ = st.lists(st.integers(0, 1_000), max_size=4)

    class MailboxMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = ContractClock()
            self.store = self._open()
            tag = uuid.uuid4().hex[:12]
            self.clients = [uuid.uuid4() for _ in range(3)]
            self.owners = [f"judge-{tag}-{i}" for i in range(2)]
            self.prefix = f"msg-{tag}-"
            self.rows: dict[str, _Row] = {}  # in the order posted
            self.settled: set[str] = set()
            self.sends = 0

        def _open(self) -> MailboxStore:
            return make(self.clock, ack_deadline=ACK_DEADLINE, visibility=VISIBILITY)

        def _pick(self, picks: list[int]) -> list[str]:
            """Message ids: posted ones, and an unknown one for the last index."""
            ids = [*self.rows, "nope"]
            return [ids[p % len(ids)] for p in picks]

        @rule(
            clients=st.lists(st.integers(0, 2), min_size=1, max_size=3),
            owner=st.integers(0, 1),
            body=st.binary(max_size=40),
        )
        def post(self, clients: list[int], owner: int, body: bytes) -> None:
            self.sends += 1
            send = f"{self.prefix}send-{self.sends}"
            now = self.clock.now
            letters = []
            for client in clients:
                mid = f"{self.prefix}{len(self.rows)}"
                letters.append((self.clients[client], mid))
                self.rows[mid] = _Row(client, owner, send, body, now + ACK_DEADLINE, now)
            self.store.post(
                send, len(letters), body, letters, owner=self.owners[owner], lease_seconds=600
            )

        @rule(picks=picks_, owner=st.integers(0, 1), body=st.binary(max_size=40))
        def repost(self, picks: list[int], owner: int, body: bytes) -> None:
            """The same message ids posted again to their clients: offered afresh."""
            mids = [mid for mid in dict.fromkeys(self._pick(picks)) if mid in self.rows]
            if not mids:
                return
            self.sends += 1
            send = f"{self.prefix}send-{self.sends}"
            now = self.clock.now
            letters = []
            for mid in mids:
                client = self.rows[mid].client
                letters.append((self.clients[client], mid))
                self.rows[mid] = _Row(client, owner, send, body, now + ACK_DEADLINE, now)
                self.settled.discard(mid)
            self.store.post(
                send, len(letters), body, letters, owner=self.owners[owner], lease_seconds=600
            )

        @rule(limits=st.dictionaries(st.integers(0, 2), st.integers(1, 3), max_size=3))
        def fetch_many(self, limits: dict[int, int]) -> None:
            now = self.clock.now
            expected: dict[uuid.UUID, list[Letter]] = {}
            for client, limit in limits.items():
                who = self.clients[client]
                for mid, row in [
                    (mid, row)
                    for mid, row in self.rows.items()
                    if row.client == client and row.fetchable(now)
                ][:limit]:
                    row.state, row.offered_until = "offered", now + VISIBILITY
                    row.fetches += 1
                    expected.setdefault(who, []).append(Letter(mid, who, row.body, row.fetches))
            asked = {self.clients[client]: limit for client, limit in limits.items()}
            assert self.store.fetch_many(asked) == expected

        @rule(client=st.integers(0, 2), limit=st.integers(1, 3))
        def fetch(self, client: int, limit: int) -> None:
            now = self.clock.now
            due = [
                (mid, row)
                for mid, row in self.rows.items()
                if row.client == client and row.fetchable(now)
            ][:limit]
            for _, row in due:
                row.state, row.offered_until = "offered", now + VISIBILITY
                row.fetches += 1
            who = self.clients[client]
            got = self.store.fetch(who, limit)
            assert got == [Letter(mid, who, row.body, row.fetches) for mid, row in due]

        @rule(
            client=st.integers(0, 2),
            picks=picks_,
            statuses=st.lists(st.sampled_from([200, 204, 409, 500, 503]), min_size=4, max_size=4),
        )
        def ack(self, client: int, picks: list[int], statuses: list[int]) -> None:
            acks = list(zip(self._pick(picks), statuses, strict=False))
            now = self.clock.now
            expected = 0
            for mid, status in dict(reversed(acks)).items():  # the first answer of each
                row = self.rows.get(mid)
                if row and row.client == client and row.state == "offered" and row.deadline > now:
                    row.state, row.status = "answered", status
                    expected += 1
            assert self.store.ack(self.clients[client], acks) == expected

        def _expire(self, owner: int) -> None:
            for row in self.rows.values():
                waiting = row.state in {"queued", "offered"}
                if row.owner == owner and waiting and row.deadline <= self.clock.now:
                    row.state, row.status = "answered", None

        @rule(owner=st.integers(0, 1))
        def answers(self, owner: int) -> None:
            self._expire(owner)
            expected = [
                Answer(mid, self.clients[row.client], row.status, row.fetches, row.send)
                for mid, row in self.rows.items()
                if row.owner == owner and row.state == "answered"
            ]
            assert self.store.answers(self.owners[owner]) == expected

        @rule(owner=st.integers(0, 1), picks=picks_, delay=st.sampled_from([0.0, 5.0, 45.0]))
        def requeue(self, owner: int, picks: list[int], delay: float) -> None:
            retries = [(mid, delay) for mid in dict.fromkeys(self._pick(picks))]
            expected = 0
            for mid, _ in retries:
                row = self.rows.get(mid)
                if row and row.owner == owner and row.state == "answered":
                    row.state, row.status, row.available = "queued", None, self.clock.now + delay
                    expected += 1
            assert self.store.requeue(self.owners[owner], retries) == expected

        @rule(owner=st.integers(0, 1), picks=picks_, outcome=st.sampled_from(list(Outcome)))
        def settle(self, owner: int, picks: list[int], outcome: Outcome) -> None:
            deliveries = [_outcome(mid, outcome) for mid in self._pick(picks)]
            expected = []
            for delivery in deliveries:
                row = self.rows.get(delivery.message_id)
                if row and row.owner == owner and row.state != "done":
                    row.state = "done"
                    expected.append(delivery)
            got = self.store.settle(self.owners[owner], deliveries)
            assert got == expected
            ids = [d.message_id for d in got]
            assert self.settled.isdisjoint(ids)
            self.settled.update(ids)

        @rule(seconds=st.sampled_from(_ADVANCES))
        def advance(self, seconds: float) -> None:
            self.clock.now += seconds

        @rule()
        def reopen(self) -> None:
            self.store.close()
            self.store = self._open()

        @invariant()
        def fetchable_agrees(self) -> None:
            now = self.clock.now
            expected = {self.clients[r.client] for r in self.rows.values() if r.fetchable(now)}
            assert self.store.fetchable(self.clients) == expected

        def teardown(self) -> None:
            self.store.close()

    return MailboxMachine
