"""``flnotify demo``: a whole training against real, signed FL clients on loopback, in seconds.

The FL clients are [`NotificationRouter`][] s, each with a secret of
its own, served as WSGI apps by one threaded `wsgiref` server on ``127.0.0.1`` (one
path per client). The FL server side is what a host application writes: a
[`SQLiteTrainingRepository`][], a [`Notifier`][] signing with a
per-receiver [`Signer`][] lookup, and the notifications of one
training built with ``from_training``. The round-type notifications bring their default
callbacks, so rejecting clients leave the training (and are told), and an unreachable one
is skipped by its circuit breaker and removed after two failed rounds (tolerant policy, the
default), or puts the training into ``ERROR`` (``strict``, the original platform's rule);
the step results show it.

Nothing here prints: `run_demo` reports to a `DemoObserver` and returns a
`DemoResult`; the command line renders both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID
from wsgiref.simple_server import WSGIServer

import attrs

from ._exceptions import CircuitOpenError
from ._hooks import NullHook
from ._notification import Notification, TrainingNotification
from ._notifier import Notifier
from ._report import Delivery
from ._retry import RetryPolicy
from ._training import (
    RoundBody,
    TrainingFinishedNotification,
    TrainingModelTestNotification,
    TrainingRoundStartNotification,
    TrainingStartNotification,
)
from ._types import Outcome, Receiver, Timeouts, TrainingSnapshot, TrainingState
from .callbacks import FailurePolicy, default_callbacks_for
from .health import CircuitBreaker
from .mailbox import MAILBOX_ENDPOINT, Mailbox, MailboxApp
from .receiving import MailboxPoller, NotificationRouter, Reply, make_wsgi_server
from .repository import SendTally, SQLiteTrainingRepository
from .signing import Signer, generate_secret
from .testing import polling
from .transports import HttpxTransport

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "DEMO_RETRY",
    "DemoClient",
    "DemoConfig",
    "DemoObserver",
    "DemoResult",
    "StepResult",
    "make_wsgi_server",
    "polling",
    "run_demo",
]

HOST = "127.0.0.1"

DEMO_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2)
"""Short backoff, so the unreachable client costs a fraction of a second per send."""

REJECT_STATUS = 409
"""What a rejecting demo client answers to the round it will not train."""


# --------------------------------------------------------------------------- a WSGI server


@contextlib.contextmanager
def _serving(server: WSGIServer) -> Iterator[None]:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, for the whole run."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


# --------------------------------------------------------------------------- values


@attrs.frozen
class DemoConfig:
    """What ``flnotify demo`` runs.

    Args:
        clients: How many FL clients take part.
        rounds: How many update rounds the training has.
        faults: Let a few clients reject a round and make one unreachable.
        seed: Makes ids and the choice of faulty clients repeatable; random if ``None``.
        db: The SQLite file for the training store; a temporary one if ``None``.
        strict: The original platform's rule (any failure puts the training into
            ``ERROR``, no breaker) instead of the tolerant policy.
        pull: How many clients poll a mailbox instead of being pushed to (clients behind
            NAT); never the actor nor the unreachable one.
    """

    clients: int = 20
    rounds: int = 3
    faults: bool = False
    seed: int | None = None
    db: str | None = None
    strict: bool = False
    pull: int = 0

    def policy(self) -> FailurePolicy:
        """The default callbacks' policy: strict, or tolerant with removal after 2 rounds."""
        if self.strict:
            return FailurePolicy.strict()
        return FailurePolicy.tolerant(min_delivered_fraction=0.5, remove_after=2)

    def breaker(self) -> CircuitBreaker | None:
        """Open after one send's attempts failed; no probe within the demo (strict: none)."""
        if self.strict:
            return None
        return CircuitBreaker(failure_threshold=DEMO_RETRY.max_attempts, cool_down=3600.0)


@attrs.frozen
class DemoClient:
    """One FL client of the demo.

    Args:
        name: ``client-01`` and so on, for people.
        id: The client's id (a receiver id).
        message_endpoint: Where it listens.
        reject_round: The update round it answers 409 to, if any.
        unreachable: Whether its endpoint is a closed port.
        polling: Whether it polls the server's mailbox (it has no endpoint of its own).
    """

    name: str
    id: UUID
    message_endpoint: str
    reject_round: int | None = None
    unreachable: bool = False
    polling: bool = False

    @property
    def fault(self) -> str | None:
        """What goes wrong with this client, in words, or ``None``."""
        if self.unreachable:
            return "unreachable"
        if self.reject_round is not None:
            return f"rejects round {self.reject_round}"
        return None


@attrs.frozen
class StepResult:
    """One notification of the training and what it led to.

    Args:
        number: 1-based position in the training.
        notification_type: The wire name.
        round: The round it carried, if it has one.
        receivers: How many receivers it went to.
        delivered: How many answered 2xx.
        rejected: How many said no.
        failed: How many could not be reached.
        elapsed: Seconds the send took.
        state: The training's state after the send (and its callbacks).
        participants: How many participants were left after it.
        removed: The ids the callbacks removed from the training during this step.
        skipped: The ids whose open circuit skipped them (0 attempts, no timeout).
        decision: The failure policy's verdict on this send, in a sentence (round-type
            notifications only).
    """

    number: int
    notification_type: str
    round: int | None
    receivers: int
    delivered: int
    rejected: int
    failed: int
    elapsed: float
    state: TrainingState
    participants: int
    removed: tuple[UUID, ...]
    skipped: tuple[UUID, ...] = ()
    decision: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "step": self.number,
            "notification_type": self.notification_type,
            "round": self.round,
            "receivers": self.receivers,
            "delivered": self.delivered,
            "rejected": self.rejected,
            "failed": self.failed,
            "elapsed": round(self.elapsed, 4),
            "state": self.state.value,
            "participants": self.participants,
            "removed": [str(i) for i in self.removed],
            "skipped": [str(i) for i in self.skipped],
            "decision": self.decision,
        }


@attrs.frozen
class DemoResult:
    """Everything a demo run did.

    Args:
        config: What was asked for.
        seed: The seed used (the one given, or the random one picked).
        clients: The FL clients, in order.
        db: The SQLite file, or ``None`` for a temporary one (deleted afterwards).
        steps: One result per notification sent.
        final: The training as the repository holds it at the end.
        verified: Notifications the clients received with a valid signature.
        elapsed: Seconds the whole run took, start-up included.
        log: What the ``flnotify`` logger said (warnings and errors), in order.
    """

    config: DemoConfig
    seed: int
    clients: tuple[DemoClient, ...]
    db: str | None
    steps: tuple[StepResult, ...]
    final: TrainingSnapshot
    verified: int
    elapsed: float
    log: tuple[str, ...] = ()

    def name_of(self, client_id: UUID) -> str:
        """The client's name, or its id when it is not a demo client."""
        return next((c.name for c in self.clients if c.id == client_id), str(client_id))

    def totals(self) -> dict[str, int]:
        """Delivered, rejected and failed over all steps."""
        return {
            "delivered": sum(s.delivered for s in self.steps),
            "rejected": sum(s.rejected for s in self.steps),
            "failed": sum(s.failed for s in self.steps),
        }

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable summary printed by ``flnotify demo --json``."""
        final = self.final
        return {
            "seed": self.seed,
            "rounds": self.config.rounds,
            "faults": self.config.faults,
            "strict": self.config.strict,
            "db": self.db,
            "training_id": str(final.id),
            "actor": str(final.actor.id),
            "pull": self.config.pull,
            "clients": [
                {"name": c.name, "id": str(c.id), "fault": c.fault, "polling": c.polling}
                for c in self.clients
            ],
            "steps": [s.as_dict() for s in self.steps],
            "totals": self.totals(),
            "verified_by_clients": self.verified,
            "final": {
                "state": final.state.value,
                "round": final.round,
                "model_id": str(final.model_id),
                "participants": [str(p.id) for p in final.participants],
            },
            "elapsed": round(self.elapsed, 4),
        }


class DemoObserver(Protocol):
    """Follows a demo run; called from the Notifier's thread for each delivery."""

    def step_started(self, number: int, total: int, notification: Notification[Any]) -> None:
        """A notification is about to be sent."""
        ...

    def delivery_done(self, number: int, delivery: Delivery) -> None:
        """One receiver's outcome is known (after the default callbacks ran)."""
        ...

    def step_finished(self, step: StepResult, total: int) -> None:
        """A notification's send and its callbacks are done."""
        ...


class _NoObserver:
    def step_started(self, number: int, total: int, notification: Notification[Any]) -> None:
        pass

    def delivery_done(self, number: int, delivery: Delivery) -> None:
        pass

    def step_finished(self, step: StepResult, total: int) -> None:
        pass


# --------------------------------------------------------------------------- the clients


@attrs.define
class _Client:
    """A demo FL client: a verifying router that answers as the reference client does."""

    spec: DemoClient
    router: NotificationRouter
    _received: list[str] = attrs.field(factory=list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @classmethod
    def create(cls, spec: DemoClient, secret: str) -> _Client:
        client = cls(spec, NotificationRouter(secrets=secret))
        client.router.on(
            TrainingStartNotification,
            TrainingModelTestNotification,
            TrainingFinishedNotification,
        )(client.accept)
        client.router.on(TrainingRoundStartNotification)(client.start_round)
        return client

    def _record(self, notification: Notification[Any]) -> None:
        with self._lock:
            self._received.append(notification.notification_type.value)

    def accept(self, notification: Notification[Any]) -> None:
        """Take note; the router answers 200 or 202 as the reference client does."""
        self._record(notification)

    def start_round(self, notification: TrainingRoundStartNotification) -> Reply | None:
        """Accept the round (202), unless this client was told to reject it (409)."""
        self._record(notification)
        body: RoundBody = notification.body
        if body.round == self.spec.reject_round:
            return Reply(REJECT_STATUS, {"error": f"cannot take part in round {body.round}"})
        return None

    @property
    def received(self) -> int:
        with self._lock:
            return len(self._received)


def _dispatcher(apps: dict[str, WSGIApplication]) -> WSGIApplication:
    """One WSGI app: each client's app under ``/client/<n>/``, the mailbox's at ``/mailbox/``."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        parts = environ.get("PATH_INFO", "").strip("/").split("/")
        target = apps.get(parts[1]) if len(parts) == 2 and parts[0] == "client" else None
        if parts[0] == "mailbox" and len(parts) == 2:
            target = apps.get("mailbox")
        if target is None:
            start_response("404 Not Found", [("content-length", "0")])
            return [b""]
        return target(environ, start_response)

    return app


def _uuid(rng: random.Random) -> UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _plan(config: DemoConfig, rng: random.Random, base: str, closed: str) -> list[DemoClient]:
    """The clients; with faults a tenth of them (at least one) reject a round, one is down.

    The first client is the training's actor and never faulty.
    """
    n = config.clients
    reject: dict[int, int] = {}
    unreachable: int | None = None
    if config.faults:
        chosen = rng.sample(range(1, n), max(1, n // 10) + 1)
        unreachable = chosen.pop()
        reject = {i: rng.randint(1, config.rounds) for i in chosen}
    polling = set([i for i in range(n - 1, 0, -1) if i != unreachable][: config.pull])
    width = max(2, len(str(n)))
    clients = []
    for i in range(n):
        down = i == unreachable
        clients.append(
            DemoClient(
                name=f"client-{i + 1:0{width}d}",
                id=_uuid(rng),
                message_endpoint=MAILBOX_ENDPOINT
                if i in polling
                else f"{closed if down else base}/client/{i}/",
                reject_round=reject.get(i),
                unreachable=down,
                polling=i in polling,
            )
        )
    return clients


@attrs.define
class _Progress(NullHook):
    """A delivery hook that tells the observer of each outcome of the current step."""

    watch: DemoObserver
    number: int = 0
    notification: Notification[Any] | None = None

    def on_outcome(self, delivery: Delivery, /) -> None:
        if delivery.notification is self.notification:  # not a CLIENT_REMOVED notice
            self.watch.delivery_done(self.number, delivery)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _captured_log() -> Iterator[list[str]]:
    """Keep the ``flnotify`` logger's warnings in a list instead of on stderr."""
    logger = logging.getLogger("flnotify")
    handler = _ListHandler()
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def _database(path: str | None) -> Iterator[str]:
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="flnotify-demo-", ignore_cleanup_errors=True) as tmp:
        yield os.path.join(tmp, "trainings.db")


# --------------------------------------------------------------------------- the run


def run_demo(config: DemoConfig, observer: DemoObserver | None = None) -> DemoResult:
    """Run one training against ``config.clients`` loopback clients and report each step.

    Args:
        config: What to run.
        observer: Told about each step and delivery as they happen.

    Raises:
        RepositoryError: ``config.db`` cannot be used as an SQLite database.
    """
    watch = observer or _NoObserver()
    begin = time.monotonic()
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)  # noqa: S311 - repeatable ids for a demo, not secrets
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(_captured_log())
        closed_port = stack.enter_context(_closed_port())
        apps: dict[str, WSGIApplication] = {}
        # each polling client holds one long poll (a server thread) open
        server = make_wsgi_server(HOST, 0, _dispatcher(apps), max_connections=64 + config.pull)
        base = f"http://{HOST}:{server.server_port}"
        specs = _plan(config, rng, base, f"http://{HOST}:{closed_port}")
        secrets = {spec.id: generate_secret() for spec in specs}
        signer = Signer(lookup=lambda receiver: secrets.get(receiver.id))
        clients = [_Client.create(spec, secrets[spec.id]) for spec in specs]
        apps.update((str(i), c.router.wsgi_app()) for i, c in enumerate(clients))

        path = stack.enter_context(_database(config.db))
        mailbox = stack.enter_context(Mailbox(path, ack_deadline=30.0)) if config.pull else None
        if mailbox is not None:  # the server's mailbox app, next to the clients' endpoints
            app = MailboxApp(mailbox, signer)
            apps["mailbox"] = app.wsgi_app()
        stack.enter_context(_serving(server))
        if mailbox is not None:
            stack.callback(app.close)  # before the server stops: held polls answer now
        if mailbox is not None:
            pollers = [
                MailboxPoller(f"{base}/mailbox", spec.id, secrets[spec.id], c.router, wait=10.0)
                for spec, c in zip(specs, clients, strict=True)
                if spec.polling
            ]
            stack.enter_context(polling(pollers))
        repo = stack.enter_context(SQLiteTrainingRepository(path))
        progress = _Progress(watch)
        notifier = stack.enter_context(
            Notifier(
                transport=HttpxTransport(timeouts=Timeouts.all(5.0)),
                retry=DEMO_RETRY,
                signer=signer,
                repository=repo,
                mailbox=mailbox,
                hooks=[progress],
                failure_policy=config.policy(),
                breaker=config.breaker(),
            )
        )
        receivers = [Receiver(s.id, s.message_endpoint) for s in specs]
        training = repo.create_training(
            actor=receivers[0],
            participants=receivers,
            model_id=_uuid(rng),
            training_id=_uuid(rng),
        )
        repo.update_training(training.id, state=TrainingState.ONGOING)
        plan = _schedule(config.rounds)
        steps: list[StepResult] = []
        for number, (cls, round_) in enumerate(plan, 1):
            if round_ is not None:  # the server aggregated: a new global model (and round)
                snapshot = repo.update_training(training.id, round=round_, model_id=_uuid(rng))
            else:
                snapshot = repo.get_training(training.id)
            notification = cls.from_training(snapshot)
            watch.step_started(number, len(plan), notification)
            progress.number, progress.notification = number, notification
            step = _send(number, notification, notifier, repo, config.policy())
            if cls is TrainingFinishedNotification and step.state is not TrainingState.ERROR:
                # the server completes the training with the notification that says so: the
                # step's row shows the state after it, as the final summary does
                repo.update_training(training.id, state=TrainingState.COMPLETED)
                step = attrs.evolve(step, state=TrainingState.COMPLETED)
            steps.append(step)
            watch.step_finished(step, len(plan))
        final = repo.get_training(training.id)
        return DemoResult(
            config=config,
            seed=seed,
            clients=tuple(specs),
            db=config.db,
            steps=tuple(steps),
            final=final,
            verified=sum(c.received for c in clients),
            elapsed=time.monotonic() - begin,
            log=tuple(log),
        )


_Buildable = (
    type[TrainingStartNotification]
    | type[TrainingRoundStartNotification]
    | type[TrainingModelTestNotification]
    | type[TrainingFinishedNotification]
)


def _schedule(rounds: int) -> list[tuple[_Buildable, int | None]]:
    """Start, the update rounds, a test round on the last model, finish."""
    plan: list[tuple[_Buildable, int | None]] = [(TrainingStartNotification, None)]
    plan += [(TrainingRoundStartNotification, r) for r in range(1, rounds + 1)]
    plan += [(TrainingModelTestNotification, rounds), (TrainingFinishedNotification, None)]
    return plan


def _send(
    number: int,
    notification: TrainingNotification[Any],
    notifier: Notifier,
    repo: SQLiteTrainingRepository,
    policy: FailurePolicy,
) -> StepResult:
    """Send with the notification's default callbacks (if any) and see what changed."""
    before = repo.get_training(notification.training_uuid)
    report = notifier.send(notification)
    after = repo.get_training(notification.training_uuid)
    remaining = after.participant_ids()
    counts = report.counts()
    body = notification.body
    return StepResult(
        number=number,
        notification_type=notification.notification_type.value,
        round=body.round if isinstance(body, RoundBody) else None,
        receivers=len(report),
        delivered=counts[Outcome.DELIVERED],
        rejected=counts[Outcome.REJECTED],
        failed=counts[Outcome.FAILED],
        elapsed=report.elapsed,
        state=after.state,
        participants=len(after.participants),
        removed=tuple(p.id for p in before.participants if p.id not in remaining),
        skipped=tuple(d.receiver.id for d in report if isinstance(d.error, CircuitOpenError)),
        decision=policy.explain(
            SendTally(len(report), counts.delivered, counts.rejected, counts.failed)
        )
        if default_callbacks_for(notification, repo) is not None
        else "",
    )
