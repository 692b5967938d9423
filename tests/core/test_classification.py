"""The table of answers over real loopback receivers: a server's mistake never removes clients.

A server signing with the wrong secret, a mistyped path (404) and a framework's
trailing-slash redirect (307) fail every receiver, so the strict policy puts the training
into ERROR with a sentence that says what to check, and every participant stays; a 409 is
a client's "no" and still removes it; the table is one value that can be replaced.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

import flnotify
import flnotify.errors
from flnotify import Classification, Outcome, Receiver, RetryPolicy, StatusMeaning, TrainingState
from flnotify.errors import AnswerError, AnswerErrorKind
from flnotify.receiving import NotificationRouter, asgi_app
from flnotify.signing import Signer, generate_secret
from helpers.receivers import serve_asgi
from helpers.servers import FaultServer

CLIENTS = 20
ONCE = RetryPolicy.no_retries()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def ongoing(
    repo: flnotify.InMemoryTrainingRepository, clients: list[Receiver]
) -> flnotify.TrainingSnapshot:
    training = repo.create_training(actor=clients[0], participants=clients, model_id=uuid.uuid4())
    return repo.update_training(training.id, state=TrainingState.ONGOING)


def send_round(
    notifier: flnotify.Notifier, repo: flnotify.InMemoryTrainingRepository, training_id: uuid.UUID
) -> flnotify.DeliveryReport:
    snapshot = repo.update_training(training_id, round=1)
    return notifier.send(flnotify.TrainingRoundStartNotification.from_training(snapshot))


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_wrong_secret_errs_the_training_and_keeps_all_20_verifying_clients(
    caplog: pytest.LogCaptureFixture,
) -> None:
    theirs, ours = generate_secret(), generate_secret()  # a botched rotation: they differ
    router = NotificationRouter(secrets=theirs)
    router.add_handler(flnotify.NotificationType.UPDATE_ROUND_START, lambda _: None)
    repo = flnotify.InMemoryTrainingRepository()
    with serve_asgi(asgi_app(router)) as url:
        clients = [Receiver(uuid.uuid4(), f"{url}?client={i}") for i in range(CLIENTS)]
        training = ongoing(repo, clients)
        caplog.set_level(logging.INFO, logger="flnotify")
        with flnotify.Notifier(signer=Signer(ours), retry=ONCE, repository=repo) as notifier:
            report = send_round(notifier, repo, training.id)
    assert [(d.outcome, d.status_code) for d in report] == [(Outcome.FAILED, 401)] * CLIENTS
    assert all(
        isinstance(d.error, AnswerError) and d.error.kind is AnswerErrorKind.SIGNATURE
        for d in report
    )
    after = repo.get_training(training.id)
    assert after.state is TrainingState.ERROR
    assert after.participant_ids() == {c.id for c in clients}  # nobody removed
    verdicts = [m for m in errors(caplog) if "of training" in m]
    assert verdicts, errors(caplog)
    assert all("signing secret" in m for m in verdicts)
    assert f"{CLIENTS} delivered" not in verdicts[-1]
    assert f"0 delivered, 0 rejected, {CLIENTS} failed of {CLIENTS}" in caplog.text
    assert theirs not in caplog.text
    assert ours not in caplog.text
    assert ours.removeprefix("whsec_") not in caplog.text


@pytest.mark.parametrize(
    ("path", "kind", "what"),
    [
        ("/status/404", AnswerErrorKind.ENDPOINT, "message_endpoint"),
        ("/redirect/307", AnswerErrorKind.REDIRECT, "redirecting to http://127.0.0.1:"),
    ],
)
def test_a_wrong_endpoint_or_redirect_errs_the_training_and_keeps_its_clients(
    server: FaultServer,
    caplog: pytest.LogCaptureFixture,
    path: str,
    kind: AnswerErrorKind,
    what: str,
) -> None:
    repo = flnotify.InMemoryTrainingRepository()
    clients = [Receiver(uuid.uuid4(), server.url(f"{path}?client={i}")) for i in range(CLIENTS)]
    training = ongoing(repo, clients)
    caplog.set_level(logging.INFO, logger="flnotify")
    with flnotify.Notifier(retry=ONCE, repository=repo) as notifier:
        report = send_round(notifier, repo, training.id)
    assert [d.outcome for d in report] == [Outcome.FAILED] * CLIENTS
    assert all(isinstance(d.error, AnswerError) and d.error.kind is kind for d in report)
    assert server.request_count == CLIENTS  # one each: a redirect is never followed
    after = repo.get_training(training.id)
    assert after.state is TrainingState.ERROR
    assert after.participant_ids() == {c.id for c in clients}
    verdicts = [m for m in errors(caplog) if "of training" in m]
    assert verdicts
    assert all(what in m for m in verdicts)


def test_a_409_still_removes_the_client(server: FaultServer) -> None:
    repo = flnotify.InMemoryTrainingRepository()
    good = [Receiver(uuid.uuid4(), server.url(f"/status/202?client={i}")) for i in range(3)]
    saying_no = Receiver(uuid.uuid4(), server.url("/status/409"))
    training = ongoing(repo, [*good, saying_no])
    with flnotify.Notifier(retry=ONCE, repository=repo) as notifier:
        report = send_round(notifier, repo, training.id)
    assert [d.outcome for d in report] == [Outcome.DELIVERED] * 3 + [Outcome.REJECTED]
    after = repo.get_training(training.id)
    assert after.participant_ids() == {c.id for c in good}
    assert after.state is TrainingState.ONGOING


def test_the_classification_can_be_replaced(server: FaultServer) -> None:
    # a platform whose clients answer 404 for "I left this training" makes 404 a "no"
    table = Classification().with_statuses({404: StatusMeaning.REJECTED})
    repo = flnotify.InMemoryTrainingRepository()
    good = Receiver(uuid.uuid4(), server.url("/status/202"))
    gone = Receiver(uuid.uuid4(), server.url("/status/404"))
    training = ongoing(repo, [good, gone])
    retry = RetryPolicy(max_attempts=1, classification=table)
    with flnotify.Notifier(retry=retry, repository=repo) as notifier:
        report = send_round(notifier, repo, training.id)
    assert [d.outcome for d in report] == [Outcome.DELIVERED, Outcome.REJECTED]
    after = repo.get_training(training.id)
    assert after.participant_ids() == {good.id}
    assert after.state is TrainingState.ONGOING


def test_the_default_table_reads_as_documented() -> None:
    table = Classification()
    meanings = {status: table.meaning(status) for status in (200, 204, 301, 307, 308)}
    assert meanings == {
        200: StatusMeaning.DELIVERED,
        204: StatusMeaning.DELIVERED,
        301: StatusMeaning.REDIRECTED,
        307: StatusMeaning.REDIRECTED,
        308: StatusMeaning.REDIRECTED,
    }
    for status in (400, 409, 410, 422, 500, 418, 501):
        assert table.meaning(status) is StatusMeaning.REJECTED, status
    for status in (429, 502, 503, 504):
        assert table.meaning(status) is StatusMeaning.RETRY, status
    assert table.meaning(401) is table.meaning(403) is StatusMeaning.SIGNATURE_REFUSED
    assert table.meaning(404) is table.meaning(405) is StatusMeaning.WRONG_ENDPOINT
    assert RetryPolicy().retry_statuses == frozenset({429, 502, 503, 504})
    assert Classification() == table  # a value: equal tables compare equal


@pytest.mark.parametrize(
    ("statuses", "families"),
    [
        ({201: StatusMeaning.REJECTED}, None),
        ({404: StatusMeaning.DELIVERED}, None),
        ({99: StatusMeaning.REJECTED}, None),
        ({404: "rejected"}, None),
        (None, {2: StatusMeaning.REJECTED}),
        (None, {6: StatusMeaning.REJECTED}),
    ],
)
def test_a_table_that_cannot_work_is_refused_with_what_is_wrong(
    statuses: dict[int, object] | None, families: dict[int, object] | None
) -> None:
    kwargs = {"statuses": statuses} if statuses is not None else {"families": families}
    with pytest.raises(flnotify.errors.ConfigurationError, match="Classification"):
        Classification(**kwargs)
