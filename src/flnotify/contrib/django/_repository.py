"""A ready `TrainingRepository` over the host's own Django models."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import attrs
from django.apps import apps
from django.db import IntegrityError, models, transaction
from django.db.models import Count, Max

from ..._exceptions import ConfigurationError, RepositoryError, TrainingNotFoundError
from ..._types import Outcome, Receiver, TrainingSnapshot, TrainingState
from ...repository import OutcomeRecord, SendTally, check_outcome, check_send_id
from ._db import database_call

__all__ = ["DjangoTrackingRepository", "DjangoTrainingRepository"]


def _state_map(value: Mapping[Any, TrainingState | str] | None) -> dict[Any, TrainingState]:
    """Stored value -> TrainingState; states may be given by name (``"ONGOING"``)."""
    if value is None:
        return {state.value: state for state in TrainingState}
    mapped: dict[Any, TrainingState] = {}
    for stored, state in value.items():
        try:
            mapped[stored] = state if isinstance(state, TrainingState) else TrainingState(state)
        except ValueError:
            names = ", ".join(s.value for s in TrainingState)
            msg = f"states[{stored!r}] = {state!r} is not a TrainingState ({names})"
            raise ConfigurationError(msg) from None
    return mapped


def _lookup(path: str) -> str:
    """``"model.round"`` -> ``"model__round"`` (Django's lookup spelling)."""
    return path.replace(".", "__")


@attrs.frozen
class _Resolved:
    """The host's model and the lookups the queries use, resolved once."""

    training: type[models.Model]
    through: type[models.Model]
    training_side: str  # the through model's field pointing at the training
    receiver_side: str  # ... and at the receiver
    fields: tuple[str, ...]  # pk, round, model id, state, actor id, actor endpoint


@attrs.define(eq=False)
class DjangoTrainingRepository:
    """flnotify's [`TrainingRepository`][flnotify.TrainingRepository] over your Django models.

    Configured by field paths (dots follow relations) and a state map, e.g. for a training
    whose related model carries the round and whose states are one-letter choices::

        DjangoTrainingRepository(
            model="trainings.Training",
            participants="participants",        # a ManyToManyField to the users
            actor="actor",                      # a ForeignKey to the user who started it
            round="model.round",
            model_id="model.id",
            state="state",
            states={"I": "INITIAL", "O": "ONGOING", "C": "COMPLETED", "E": "ERROR",
                    "S": "SWAG_ROUND"},
            receiver_endpoint="message_endpoint",
        )

    Every call runs in one transaction and closes the database connection it opened, so
    flnotify's worker threads leave none behind; a connection that was open before the
    call (a request's, a test's) is left alone. Participants are listed in the order
    they were added. Ids (the training's primary key, the users' ``receiver_id``, the
    model id) must be UUIDs or UUID strings.

    Args:
        model: The training model, as ``"app_label.ModelName"`` or the class.
        participants: The training's many-to-many field to the receivers.
        actor: The path to the receiver who started the training.
        round: The path to the current round number.
        model_id: The path to the current global model's id.
        state: The training's own field holding the state.
        states: Stored state value -> [`TrainingState`][flnotify.TrainingState] (or its
            name). ``None``: the state names are stored as they are. A state stored under
            several values is written as the first of them.
        receiver_id: The receivers' id field.
        receiver_endpoint: The receivers' field holding their ``message_endpoint``.
        using: The database alias.

    Raises:
        ConfigurationError: (on the first call) a model or field path does not exist,
            or ``participants`` is not a many-to-many field.
        TrainingNotFoundError: No training has the id.
        RepositoryError: The database failed, or holds a state ``states`` does not map.
        RepositoryBusyError: The database was busy for now (SQLite locked, a PostgreSQL
            serialization failure, deadlock or lock timeout) and the call ran in no
            transaction of the host's: callbacks try it again.
    """

    model: str | type[models.Model]
    participants: str = "participants"
    actor: str = "actor"
    round: str = "round"
    model_id: str = "model_id"
    state: str = "state"
    states: dict[Any, TrainingState] = attrs.field(default=None, converter=_state_map)
    receiver_id: str = "id"
    receiver_endpoint: str = "message_endpoint"
    using: str = "default"
    _stored: dict[TrainingState, Any] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        stored: dict[TrainingState, Any] = {}
        for value, state in self.states.items():
            stored.setdefault(state, value)
        self._stored = stored

    # -- the TrainingRepository protocol

    def get_training(self, training_id: UUID) -> TrainingSnapshot:
        """The training as it is now, read in one transaction.

        Raises:
            TrainingNotFoundError: No training has this id.
        """
        with self._call("reading training", training_id):
            resolved = self._resolved()
            with transaction.atomic(using=self.using):
                row = (
                    resolved.training._default_manager.using(self.using)
                    .filter(pk=training_id)
                    .values_list(*resolved.fields)
                    .first()
                )
                if row is None:
                    raise TrainingNotFoundError(training_id)
                members = list(
                    self._members(resolved, training_id).values_list(
                        f"{resolved.receiver_side}__{_lookup(self.receiver_id)}",
                        f"{resolved.receiver_side}__{_lookup(self.receiver_endpoint)}",
                    )
                )
        pk, round_, model_id, state, actor_id, actor_endpoint = row
        return TrainingSnapshot(
            id=self._uuid(pk, "id", training_id),
            model_id=self._uuid(model_id, self.model_id, training_id),
            round=round_,
            participants=[
                Receiver(self._uuid(rid, self.receiver_id, training_id), endpoint)
                for rid, endpoint in members
            ],
            actor=Receiver(self._uuid(actor_id, self.actor, training_id), actor_endpoint),
            state=self._read_state(state, training_id),
        )

    def remove_participant(self, training_id: UUID, receiver_id: UUID) -> bool:
        """Remove one participant; a no-op if it takes no part (idempotent).

        The training's row is locked (``select_for_update``) while its participant goes.

        Returns:
            ``True`` if this call removed it, ``False`` if it took no part.

        Raises:
            TrainingNotFoundError: No training has this id.
        """
        with self._call("removing a participant from training", training_id):
            resolved = self._resolved()
            with transaction.atomic(using=self.using):
                locked = (
                    resolved.training._default_manager.using(self.using)
                    .select_for_update()
                    .filter(pk=training_id)
                    .values_list("pk", flat=True)
                )
                if not list(locked):
                    raise TrainingNotFoundError(training_id)
                deleted, _ = (
                    self._members(resolved, training_id)
                    .filter(
                        **{f"{resolved.receiver_side}__{_lookup(self.receiver_id)}": receiver_id}
                    )
                    .delete()
                )
                removed: bool = deleted > 0
                return removed

    def set_state(self, training_id: UUID, state: TrainingState) -> None:
        """Set the training's state (one ``UPDATE``).

        Raises:
            TrainingNotFoundError: No training has this id.
            ConfigurationError: ``states`` maps no stored value to ``state``.
        """
        try:
            stored = self._stored[state]
        except KeyError:
            msg = f"states maps no stored value to {state!r}: add one to write it"
            raise ConfigurationError(msg) from None
        with self._call("setting the state of training", training_id):
            updated = (
                self._resolved()
                .training._default_manager.using(self.using)
                .filter(pk=training_id)
                .update(**{self.state: stored})
            )
        if not updated:
            raise TrainingNotFoundError(training_id)

    # -- for the host's own code

    def snapshot(self, training: models.Model | UUID) -> TrainingSnapshot:
        """The [`TrainingSnapshot`][flnotify.TrainingSnapshot] of a training instance (or id).

        Read fresh from the database, so what was saved is what is sent::

            TrainingRoundStartNotification.from_training(repository.snapshot(training))
        """
        pk = training if isinstance(training, UUID) else training.pk
        return self.get_training(pk if isinstance(pk, UUID) else UUID(str(pk)))

    # -- plumbing

    def _call(self, what: str, training_id: object) -> Any:
        return database_call(self.using, f"{what} {training_id}")

    def _members(self, resolved: _Resolved, training_id: UUID) -> models.QuerySet[Any]:
        members: models.QuerySet[Any] = (
            resolved.through._default_manager.using(self.using)
            .filter(**{resolved.training_side: training_id})
            .order_by("pk")
        )
        return members

    def _resolved(self) -> _Resolved:
        return _resolve(
            self.model,
            self.participants,
            (self.round, self.model_id, self.state, self.actor),
            (self.receiver_id, self.receiver_endpoint),
        )

    def _uuid(self, value: object, field: str, training_id: object) -> UUID:
        if isinstance(value, UUID):
            return value
        try:
            return UUID(str(value))
        except ValueError:
            msg = f"training {training_id}: {field} is {value!r}, not a UUID"
            raise RepositoryError(msg) from None

    def _read_state(self, value: object, training_id: object) -> TrainingState:
        try:
            return self.states[value]
        except (KeyError, TypeError):
            known = ", ".join(repr(v) for v in self.states)
            msg = f"training {training_id} has state {value!r}, which states does not map ({known})"
            raise RepositoryError(msg) from None


@functools.cache
def _resolve(
    model: str | type[models.Model],
    participants: str,
    paths: tuple[str, str, str, str],
    receiver: tuple[str, str],
) -> _Resolved:
    """Check the configuration against the models (once per configuration)."""
    if isinstance(model, str):
        try:
            training = apps.get_model(model)
        except (LookupError, ValueError) as exc:
            msg = f"model {model!r}: {exc}"
            raise ConfigurationError(msg) from None
    else:
        training = model
    label = training._meta.label
    try:
        field = training._meta.get_field(participants)
    except Exception as exc:  # FieldDoesNotExist
        msg = f"participants: {label} has no field {participants!r}"
        raise ConfigurationError(msg) from exc
    if not isinstance(field, models.ManyToManyField):
        msg = f"participants: {label}.{participants} is not a ManyToManyField"
        raise ConfigurationError(msg)
    round_, model_id, state, actor = paths
    for name, path in (("round", round_), ("model_id", model_id), ("state", state)):
        _check_path(training, name, path)
    if "." in state:
        msg = f"state: {state!r} must be a field of {label} itself (it is written)"
        raise ConfigurationError(msg)
    for name, path in (("receiver_id", receiver[0]), ("receiver_endpoint", receiver[1])):
        _check_path(training, name, f"{actor}.{path}")
        _check_path(field.related_model, name, path)
    through = field.remote_field.through
    assert through is not None  # noqa: S101 - Django sets it when the models are ready
    return _Resolved(
        training=training,
        through=through,
        training_side=field.m2m_field_name(),
        receiver_side=field.m2m_reverse_field_name(),
        fields=(
            "pk",
            _lookup(round_),
            _lookup(model_id),
            _lookup(state),
            _lookup(f"{actor}.{receiver[0]}"),
            _lookup(f"{actor}.{receiver[1]}"),
        ),
    )


def _check_path(model: Any, name: str, path: str) -> None:
    """Follow ``path`` (dots) through ``model``'s relations, or raise ConfigurationError."""
    current = model
    for part in path.split("."):
        try:
            field = current._meta.get_field(part)
        except Exception:  # FieldDoesNotExist
            msg = f"{name}: {path!r} does not exist ({current._meta.label} has no {part!r})"
            raise ConfigurationError(msg) from None
        if field.is_relation and field.related_model is not None:
            current = field.related_model


# --------------------------------------------------------------------------- tracking


@attrs.define(eq=False)
class DjangoTrackingRepository(DjangoTrainingRepository):
    """The Django repository plus `OutcomeTracking`, in this app's tables.

    A [`DjangoTrainingRepository`][flnotify.contrib.django.DjangoTrainingRepository] that
    also implements [`OutcomeTracking`][flnotify.repository.OutcomeTracking].

    With it a send's failure policy is judged once over all its receivers, across
    processes, and a client's consecutive failures survive restarts
    (``FailurePolicy.remove_after``). Needs ``"flnotify.contrib.django"`` in
    ``INSTALLED_APPS`` and its migrations applied (on the ``using`` database). The rows
    are inserted under unique constraints and the failure run is read and changed under
    ``select_for_update``, so concurrent workers count each outcome once.
    """

    def record_outcome(
        self,
        training_id: UUID,
        send_id: str,
        send_size: int,
        receiver_id: UUID,
        outcome: Outcome,
    ) -> OutcomeRecord:
        """Count one receiver's outcome of one send, at most once; see `OutcomeTracking`.

        Raises:
            ConfigurationError: An argument is invalid.
            RepositoryError: The database failed.
        """
        check_outcome(send_id, send_size, outcome)
        from .models import ParticipantFailure, SendOutcome

        db = self.using
        with (
            self._call("recording an outcome of training", training_id),
            transaction.atomic(using=db),
        ):
            try:
                with transaction.atomic(using=db):
                    SendOutcome.objects.using(db).create(
                        send_id=send_id,
                        receiver_id=receiver_id,
                        training_id=training_id,
                        total=send_size,
                        outcome=outcome.value,
                    )
                first = True
            except IntegrityError:
                first = False  # recorded before: count nothing again
            runs = ParticipantFailure.objects.using(db)
            key = {"training_id": training_id, "receiver_id": receiver_id}
            if first and outcome is Outcome.FAILED:
                run, created = runs.select_for_update().get_or_create(
                    **key, defaults={"consecutive": 1, "last_send": send_id}
                )
                if not created and run.last_send != send_id:
                    run.consecutive += 1
                    run.last_send = send_id
                    run.save(update_fields=["consecutive", "last_send"])
            elif first:
                runs.filter(**key).delete()
            counts = dict.fromkeys(Outcome, 0)
            total = send_size
            for value, n, stored_total in (
                SendOutcome.objects.using(db)
                .filter(send_id=send_id)
                .values("outcome")
                .annotate(n=Count("pk"), total=Max("total"))
                .values_list("outcome", "n", "total")
            ):
                counts[Outcome(value)] = n
                total = stored_total
            current = runs.filter(**key).values_list("consecutive", flat=True).first()
        tally = SendTally(
            total, counts[Outcome.DELIVERED], counts[Outcome.REJECTED], counts[Outcome.FAILED]
        )
        return OutcomeRecord(tally, current or 0)

    def claim_verdict(self, send_id: str) -> bool:
        """``True`` exactly once per send; see `OutcomeTracking`."""
        check_send_id(send_id)
        from .models import SendVerdict

        with self._call("claiming the verdict of send", send_id):
            try:
                with transaction.atomic(using=self.using):
                    SendVerdict.objects.using(self.using).create(send_id=send_id)
            except IntegrityError:
                return False
            return True
