"""flnotify in a Django project (``pip install 'flnotify[django]'``).

Add ``"flnotify.contrib.django"`` to ``INSTALLED_APPS``, run its migrations (outcome
tracking and per-client secrets, used only when configured), and describe the set-up in
one settings block::

    FLNOTIFY = {
        "REPOSITORY": {"model": "trainings.Training", "round": "model.round", ...,
                       "track_outcomes": True},
        "SIGNER": {"SECRETS": [...], "CLIENT_SECRETS": True},
        "FAILURE_POLICY": flnotify.FailurePolicy(min_delivered_fraction=0.8),
        "NOTIFIER": {"retry": flnotify.RetryPolicy(max_attempts=3), "deadline": 60.0},
        "OUTBOX": {"DATABASE": "default"},
    }

Then [`get_notifier`][flnotify.contrib.django.get_notifier] is the process's
[`Notifier`][flnotify.Notifier] and
[`notification_for`][flnotify.contrib.django.notification_for] builds a notification from a
training instance. See the "Django and Celery" page of the documentation.
"""

from ._process import (
    celery_delivery,
    database_target,
    get_notifier,
    get_repository,
    notification_for,
    open_mailbox,
    open_outbox,
    reset,
    use_transport,
)
from ._repository import DjangoTrackingRepository, DjangoTrainingRepository
from ._secrets import ClientSecretLookup

__all__ = [
    "ClientSecretLookup",
    "DjangoTrackingRepository",
    "DjangoTrainingRepository",
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
