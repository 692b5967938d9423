"""What the failure policy makes of rejections, removals and told clients, and what it says."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

import flnotify
import flnotify.errors
from flnotify import FailurePolicy, Receiver, RetryPolicy, TrainingState
from flnotify.repository import SendTally
from flnotify.testing import MemoryRequest, MemoryTransport

ONCE = RetryPolicy.no_retries()


def training_of(
    repo: flnotify.InMemoryTrainingRepository, names: list[str]
) -> tuple[flnotify.TrainingSnapshot, dict[str, Receiver]]:
    clients = {n: Receiver(uuid.uuid4(), f"http://{n}.test/fl") for n in names}
    people = list(clients.values())
    training = repo.create_training(actor=people[0], participants=people, model_id=uuid.uuid4())
    return repo.update_training(training.id, state=TrainingState.ONGOING), clients


def kind(request: MemoryRequest) -> str:
    return str(__import__("json").loads(request.body)["notification_type"])


def answering(table: dict[str, Any]) -> MemoryTransport:
    def answer(request: MemoryRequest) -> int:
        host = request.url.split("//")[1].split(".")[0]
        value = table[host]
        if isinstance(value, Exception):
            raise value
        return int(value)

    return MemoryTransport(answer)


def test_a_rejection_leaves_the_fraction_so_one_no_and_one_offline_of_3_is_met() -> None:
    repo = flnotify.InMemoryTrainingRepository()
    training, clients = training_of(repo, ["a", "b", "c"])
    transport = answering({"a": 202, "b": 409, "c": flnotify.errors.ConnectError("refused")})
    policy = FailurePolicy.tolerant(tell_removed=False)
    with flnotify.Notifier(transport, retry=ONCE, repository=repo, failure_policy=policy) as n:
        n.send(flnotify.TrainingRoundStartNotification.from_training(training))
    after = repo.get_training(training.id)
    assert after.state is TrainingState.ONGOING  # 1 delivered of the 2 that did not say no
    assert clients["b"].id not in after.participant_ids()


def test_the_share_is_of_those_that_did_not_say_no() -> None:
    policy = FailurePolicy.tolerant()
    assert policy.verdict(SendTally(3, delivered=1, rejected=1, failed=1)).value == "fine"
    assert policy.verdict(SendTally(3, delivered=0, rejected=1, failed=2)).value == "error"
    assert policy.verdict(SendTally(4, delivered=1, rejected=1, failed=0)).value == "open"


def test_removals_below_min_participants_err_the_training_with_a_sentence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = flnotify.InMemoryTrainingRepository()
    training, _ = training_of(repo, ["a", "b"])
    caplog.set_level(logging.INFO, logger="flnotify")
    with flnotify.Notifier(answering({"a": 409, "b": 410}), retry=ONCE, repository=repo) as n:
        n.send(flnotify.TrainingRoundStartNotification.from_training(training))
    after = repo.get_training(training.id)
    assert after.participants == ()
    assert after.state is TrainingState.ERROR  # never a silent empty training
    lines = [r.getMessage() for r in caplog.records if "participant(s) left" in r.getMessage()]
    assert lines  # each removal that finds the training below the minimum says so
    assert all("0 participant(s) left" in line and "needs at least 1" in line for line in lines)


def test_min_participants_is_checked_for_what_it_is() -> None:
    with pytest.raises(flnotify.errors.ConfigurationError, match="min_participants"):
        FailurePolicy(min_participants=-1)
    with pytest.raises(flnotify.errors.ConfigurationError, match="tell_removed"):
        FailurePolicy(tell_removed="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "told"), [(FailurePolicy(), False), (FailurePolicy.tolerant(), True)]
)
def test_telling_removed_clients_is_opt_in_for_strict_and_on_for_tolerant(
    policy: FailurePolicy, told: bool
) -> None:
    repo = flnotify.InMemoryTrainingRepository()
    training, _ = training_of(repo, ["a", "b"])
    transport = answering({"a": 202, "b": 409})
    with flnotify.Notifier(transport, retry=ONCE, repository=repo, failure_policy=policy) as n:
        n.send(flnotify.TrainingRoundStartNotification.from_training(training))
    notices = [r for r in transport.requests if kind(r) == "CLIENT_REMOVED"]
    assert bool(notices) is told


def test_a_client_not_knowing_client_removed_is_a_quiet_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = flnotify.InMemoryTrainingRepository()
    training, _ = training_of(repo, ["a", "b", "c"])

    def answer(request: MemoryRequest) -> int:
        if kind(request) == "CLIENT_REMOVED":
            return 500  # the reference client's answer to a type it does not know
        return 409 if request.url.startswith("http://b.") else 202

    caplog.set_level(logging.DEBUG, logger="flnotify")
    policy = FailurePolicy.tolerant()
    with flnotify.Notifier(
        MemoryTransport(answer), retry=ONCE, repository=repo, failure_policy=policy
    ) as n:
        n.send(flnotify.TrainingRoundStartNotification.from_training(training))
    quiet = [r for r in caplog.records if "did not take CLIENT_REMOVED" in r.getMessage()]
    assert quiet
    assert all(r.levelno == logging.DEBUG for r in quiet)
    assert not [r for r in caplog.records if "Could not tell" in r.getMessage()]
    assert not [r for r in caplog.records if r.exc_info]


def test_an_early_verdict_is_said_again_with_the_whole_send(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    decided = asyncio.Event()  # set once the early verdict was said
    loops: list[asyncio.AbstractEventLoop] = []

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "of training" in record.getMessage():
                loops[0].call_soon_threadsafe(decided.set)

    async def answer(request: MemoryRequest) -> int:
        if request.url.startswith("http://a."):
            loops.append(asyncio.get_running_loop())
            raise flnotify.errors.ConnectError("refused", url=request.url)
        await decided.wait()  # held until the verdict was said
        return 202

    repo = flnotify.InMemoryTrainingRepository()
    training, _ = training_of(repo, ["a", "b", "c"])
    caplog.set_level(logging.INFO, logger="flnotify")
    said = Said()
    logging.getLogger("flnotify").addHandler(said)
    try:
        with flnotify.Notifier(MemoryTransport(answer), retry=ONCE, repository=repo) as n:
            n.send(flnotify.TrainingRoundStartNotification.from_training(training))
    finally:
        logging.getLogger("flnotify").removeHandler(said)
    lines = [r.getMessage() for r in caplog.records if "of training" in r.getMessage()]
    assert "0 delivered, 0 rejected, 1 failed of 3 so far, 2 still pending" in lines[0]
    assert "2 delivered, 0 rejected, 1 failed of 3 in all" in lines[-1]
    assert "certain with 2 still pending" in lines[-1]
    assert not any("0 delivered, 0 rejected, 1 failed of 3:" in line for line in lines)


def test_a_run_that_settled_nothing_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    empty = flnotify.TrainingStartNotification(
        receivers=[],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    caplog.set_level(logging.INFO, logger="flnotify")
    with flnotify.Notifier(MemoryTransport()) as n:
        n.send(empty)
    assert not [r for r in caplog.records if r.getMessage().startswith("Sent ")]
