"""The ``FLNOTIFY`` settings block, and the delivery objects each process builds from it."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode
from uuid import UUID

import attrs
from django.db import models

from ..._exceptions import ConfigurationError
from ..._notifier import Notifier
from ...callbacks import FailurePolicy
from ...mailbox import Mailbox, PostgresMailbox
from ...mailbox import open_mailbox as _open_mailbox_at
from ...outbox import Outbox, PostgresOutbox
from ...outbox import open_outbox as _open_outbox_at
from ...signing import Signer
from ...transports import AsyncTransport, Transport
from ._repository import DjangoTrackingRepository, DjangoTrainingRepository
from ._secrets import ClientSecretLookup

if TYPE_CHECKING:
    from ..celery import CeleryDelivery

__all__ = [
    "celery_delivery",
    "database_target",
    "get_notifier",
    "get_repository",
    "notification_for",
    "open_mailbox",
    "open_outbox",
    "reset",
    "use_transport",
]

N = TypeVar("N")

_KEYS = frozenset(
    {"REPOSITORY", "SIGNER", "FAILURE_POLICY", "NOTIFIER", "TRANSPORT", "OUTBOX", "MAILBOX"}
)


def _block() -> Mapping[str, Any]:
    """The ``FLNOTIFY`` setting, its keys checked."""
    from django.conf import settings

    block = getattr(settings, "FLNOTIFY", None)
    if not isinstance(block, Mapping):
        msg = "settings.FLNOTIFY must be a dict (see flnotify.contrib.django)"
        raise ConfigurationError(msg)
    unknown = sorted(set(block) - _KEYS)
    if unknown:
        msg = f"settings.FLNOTIFY has unknown key(s) {unknown}; known: {sorted(_KEYS)}"
        raise ConfigurationError(msg)
    return block


def _section(name: str) -> dict[str, Any]:
    value = _block().get(name) or {}
    if not isinstance(value, Mapping):
        msg = f"settings.FLNOTIFY[{name!r}] must be a dict, not {type(value).__name__}"
        raise ConfigurationError(msg)
    return dict(value)


def _build_repository() -> DjangoTrainingRepository:
    options = _section("REPOSITORY")
    if "model" not in options:
        msg = "settings.FLNOTIFY['REPOSITORY'] needs 'model' (e.g. 'trainings.Training')"
        raise ConfigurationError(msg)
    tracking = options.pop("track_outcomes", False)
    kind = DjangoTrackingRepository if tracking else DjangoTrainingRepository
    try:
        return kind(**options)
    except TypeError as exc:
        msg = f"settings.FLNOTIFY['REPOSITORY']: {exc}"
        raise ConfigurationError(msg) from None


def _build_signer() -> tuple[Signer | None, ClientSecretLookup | None]:
    value = _block().get("SIGNER")
    if value is None or isinstance(value, Signer):
        return value, None
    if not isinstance(value, Mapping):
        msg = f"settings.FLNOTIFY['SIGNER'] must be a Signer or a dict, not {value!r}"
        raise ConfigurationError(msg)
    unknown = sorted(set(value) - {"SECRETS", "CLIENT_SECRETS", "DATABASE", "CACHE_SECONDS"})
    if unknown:
        msg = f"settings.FLNOTIFY['SIGNER'] has unknown key(s) {unknown}"
        raise ConfigurationError(msg)
    lookup = None
    if value.get("CLIENT_SECRETS"):
        lookup = ClientSecretLookup(
            using=value.get("DATABASE", "default"),
            cache_seconds=value.get("CACHE_SECONDS", 30.0),
        )
    return Signer(value.get("SECRETS"), lookup=lookup), lookup


@attrs.define
class _Process:
    """What one process built from the settings; rebuilt after a fork or a settings change."""

    pid: int = attrs.field(factory=os.getpid)
    repository: DjangoTrainingRepository | None = None
    notifier: Notifier | None = None
    mailbox: Mailbox | PostgresMailbox | None = None
    lookup: ClientSecretLookup | None = None
    transport: AsyncTransport | Transport | None = None  # a test's override

    def close(self) -> None:
        notifier, self.notifier = self.notifier, None
        mailbox, self.mailbox = self.mailbox, None
        lookup, self.lookup = self.lookup, None
        self.repository = None
        if notifier is not None:
            notifier.close()
        if mailbox is not None:
            mailbox.close()
        if lookup is not None:
            lookup.close()


_lock = threading.RLock()
_state = _Process()


def _current() -> _Process:
    """The objects of the current process (under ``_lock``); a forked child starts afresh."""
    global _state
    if _state.pid != os.getpid():
        _state = _Process(transport=_state.transport)  # the parent's objects are not ours
    return _state


def get_repository() -> DjangoTrainingRepository:
    """The repository of ``FLNOTIFY["REPOSITORY"]``, built once per process.

    Raises:
        ConfigurationError: The settings block is missing or wrong.
    """
    with _lock:
        state = _current()
        if state.repository is None:
            state.repository = _build_repository()
        return state.repository


def notification_for(
    kind: Callable[..., N],
    training: models.Model | UUID,
    *,
    repository: DjangoTrainingRepository | None = None,
    **options: Any,
) -> N:
    """``kind.from_training(...)`` for a host's training instance (or its id).

    ``notification_for(TrainingRoundStartNotification, training)`` reads the training
    through ``repository`` (by default the one of the ``FLNOTIFY`` settings) and builds the
    notification, so no notification class needs a ``from_training`` of its own.

    Args:
        kind: The notification class (one with a ``from_training`` factory).
        training: The host's training instance or id.
        repository: Where to read it; the settings' repository if omitted.
        **options: Passed on to ``from_training`` (``receivers=``, ``client=``, ...).

    Raises:
        ConfigurationError: ``kind`` has no ``from_training``.
    """
    factory: Callable[..., N] | None = getattr(kind, "from_training", None)
    if factory is None:
        msg = f"{kind!r} has no from_training(); build it with its constructor"
        raise ConfigurationError(msg)
    if repository is None:
        repository = get_repository()
    return factory(repository.snapshot(training), **options)


def get_notifier() -> Notifier:
    """The process's [`Notifier`][flnotify.Notifier], built from the settings on first use.

    Built lazily, so each process (a forked web or Celery worker included) has its own,
    with its own connections; closed at interpreter exit and when ``FLNOTIFY`` changes.
    Do not close it yourself.

    Raises:
        ConfigurationError: The settings block is missing or wrong.
    """
    with _lock:
        state = _current()
        if state.notifier is None:
            state.notifier = _build_notifier(state)
        return state.notifier


def _sending_options() -> tuple[dict[str, Any], ClientSecretLookup | None]:
    """The fields of ``Settings`` the block gives: ``NOTIFIER``, the signer, the policy."""
    options = _section("NOTIFIER")
    signer, lookup = _build_signer()
    options["signer"] = signer
    policy = _block().get("FAILURE_POLICY")
    if policy is not None:
        if not isinstance(policy, FailurePolicy):
            msg = f"settings.FLNOTIFY['FAILURE_POLICY'] must be a FailurePolicy, not {policy!r}"
            raise ConfigurationError(msg)
        options["failure_policy"] = policy
    return options, lookup


def _build_notifier(state: _Process) -> Notifier:
    options, lookup = _sending_options()
    block = _block()
    if state.repository is None:
        state.repository = _build_repository()
    options["repository"] = state.repository
    if state.transport is not None:
        options["transport"] = state.transport
    elif block.get("TRANSPORT") is not None:
        factory: Callable[[], AsyncTransport | Transport] = block["TRANSPORT"]
        options["transport"] = factory()
    if block.get("MAILBOX") is not None:
        state.mailbox = open_mailbox()
        options["mailbox"] = state.mailbox
    try:
        notifier = Notifier(**options)
    except TypeError as exc:
        msg = f"settings.FLNOTIFY['NOTIFIER']: {exc}"
        raise ConfigurationError(msg) from None
    state.lookup = lookup
    return notifier


def celery_delivery(app: Any, **options: Any) -> CeleryDelivery:
    """A [`CeleryDelivery`][flnotify.contrib.celery.CeleryDelivery] on ``app``, from the settings.

    The same ``FLNOTIFY`` block as [`get_notifier`][]: the ``NOTIFIER`` options, the
    signer (per-client secrets from the ORM included), the failure policy; on the worker
    the repository of the settings, the ``TRANSPORT`` factory and, with ``MAILBOX``, the
    mailbox in the host's database, each built once per worker process and closed when it
    shuts down. Call it where the Celery app is made (``celery.py``), after
    ``django.setup()``, so that web processes and workers register the same task.

    Args:
        app: The host's Celery app. Its workers must accept JSON (``accept_content``).
        **options: Passed on to ``CeleryDelivery`` over the settings (``chunk_size``,
            ``callbacks``, ``task_name``, ...).

    Raises:
        ConfigurationError: The settings block is wrong, or the app would refuse JSON.
    """
    from ..celery import CeleryDelivery

    settings, _ = _sending_options()
    block = _block()
    transport = block.get("TRANSPORT")
    built: dict[str, Any] = {
        "repository_factory": get_repository,
        "transport_factory": transport,
        "mailbox_factory": open_mailbox if block.get("MAILBOX") is not None else None,
    }
    try:
        return CeleryDelivery(app, **{**settings, **built, **options})
    except TypeError as exc:
        msg = f"settings.FLNOTIFY['NOTIFIER'] or celery_delivery(): {exc}"
        raise ConfigurationError(msg) from None


def reset() -> None:
    """Close and drop this process's objects; the next use builds them from the settings."""
    with _lock:
        _current().close()


@contextlib.contextmanager
def use_transport(transport: AsyncTransport | Transport) -> Iterator[None]:
    """Within the block, [`get_notifier`][] sends through ``transport`` (for tests).

    The Notifier built before is closed on entry, and the one built inside on exit, so
    nothing sent in the block reaches the network, e.g. with a
    [`MemoryTransport`][flnotify.testing.MemoryTransport].
    """
    with _lock:
        state = _current()
        state.close()
        previous, state.transport = state.transport, transport
    try:
        yield
    finally:
        with _lock:
            state = _current()
            state.close()
            state.transport = previous


atexit.register(reset)


# --------------------------------------------------------------------------- stores


def database_target(alias: str = "default") -> str:
    """What flnotify's store backends open for a Django database: a PostgreSQL URL or a path.

    Read from the live connection settings, so under Django's test runner it names the
    test database.

    Raises:
        ConfigurationError: The alias is unknown, in memory, or neither SQLite nor PostgreSQL.
    """
    from django.db import connections

    if alias not in connections:
        msg = f"no database {alias!r} in DATABASES"
        raise ConfigurationError(msg)
    db = connections[alias].settings_dict
    engine = str(db.get("ENGINE", ""))
    name = str(db.get("NAME") or "")
    if engine.endswith("sqlite3"):
        if not name or ":memory:" in name or "mode=memory" in name:
            msg = f"DATABASES[{alias!r}] is an in-memory SQLite database: stores need a file"
            raise ConfigurationError(msg)
        return name
    if "postgresql" in engine or "postgis" in engine:
        return _postgres_url(db, name)
    msg = f"DATABASES[{alias!r}] uses {engine}; flnotify's stores run on SQLite or PostgreSQL"
    raise ConfigurationError(msg)


def _postgres_url(db: Mapping[str, Any], name: str) -> str:
    user = quote(str(db.get("USER") or ""), safe="")
    password = quote(str(db.get("PASSWORD") or ""), safe="")
    host = str(db.get("HOST") or "")
    port = str(db.get("PORT") or "")
    query = {k: str(v) for k, v in (db.get("OPTIONS") or {}).items() if isinstance(v, str | int)}
    if host.startswith("/"):  # a socket directory
        query["host"], host = host, ""
    auth = f"{user}:{password}@" if password else f"{user}@" if user else ""
    netloc = f"{auth}{host}{':' + port if port else ''}"
    tail = f"?{urlencode(query)}" if query else ""
    return f"postgresql://{netloc}/{quote(name, safe='')}{tail}"


def _store_options(name: str) -> tuple[str, dict[str, Any]]:
    options = _section(name)
    return options.pop("DATABASE", "default"), options


def open_outbox(**options: Any) -> Outbox | PostgresOutbox:
    """A new outbox in the host's database (``FLNOTIFY["OUTBOX"]["DATABASE"]``).

    The existing SQLite or PostgreSQL store opens its own connection to that database and
    keeps its own tables (``flnotify_outbox*``); close it when done.

    Args:
        **options: Passed on to the store, over the settings' other keys.
    """
    alias, configured = _store_options("OUTBOX")
    return _open_outbox_at(database_target(alias), **{**configured, **options})


def open_mailbox(**options: Any) -> Mailbox | PostgresMailbox:
    """A new mailbox in the host's database (``FLNOTIFY["MAILBOX"]["DATABASE"]``).

    Like [`open_outbox`][]: the existing store on its own connection and tables
    (``flnotify_mailbox*``); close it when done. [`get_notifier`][] opens one itself when
    ``MAILBOX`` is set.

    Args:
        **options: Passed on to the store, over the settings' other keys.
    """
    alias, configured = _store_options("MAILBOX")
    return _open_mailbox_at(database_target(alias), **{**configured, **options})
