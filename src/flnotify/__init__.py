"""flnotify: typed, signed, fault-tolerant notifications from an FL server to its clients.

The top level holds what an FL server's code needs to send (docs/api.md says why each name
is here); each other name has one home: the client side in ``flnotify.receiving``, every
error in ``flnotify.errors``, the codec in ``flnotify.codec``, and the rest in the module
of its part (``signing``, ``callbacks``, ``hooks``, ``repository``, ``endpoints``, ``health``,
``transports``, ``outbox``, ``mailbox``, ``testing``).
"""

# the modules a server reaches for beside the top level, usable after a plain `import flnotify`
from . import errors as errors
from . import hooks as hooks
from ._engine import Settings
from ._handle import SendHandle
from ._notification import Notification, TrainingNotification
from ._notifier import Notifier
from ._report import Delivery, DeliveryReport, OutcomeCounts
from ._retry import Classification, RetryPolicy, StatusMeaning
from ._training import (
    ClientRemovedBody,
    ClientRemovedNotification,
    GlobalModelBody,
    RoundBody,
    TrainingFinishedNotification,
    TrainingModelTestNotification,
    TrainingRoundStartNotification,
    TrainingStartNotification,
    TrainingSWAGRoundStartNotification,
)
from ._types import (
    NotificationKind,
    NotificationType,
    Outcome,
    Receiver,
    ReceiverLike,
    Timeouts,
    TrainingSnapshot,
    TrainingState,
)
from ._version import __version__
from .callbacks import Callbacks, FailurePolicy, FunctionCallbacks, TrainingCallbacks
from .endpoints import EndpointPolicy
from .health import CircuitBreaker
from .repository import (
    AsyncTrainingRepository,
    InMemoryTrainingRepository,
    SQLiteTrainingRepository,
    TrainingRepository,
)
from .signing import Signer, generate_secret

__all__ = [
    "AsyncTrainingRepository",
    "Callbacks",
    "CircuitBreaker",
    "Classification",
    "ClientRemovedBody",
    "ClientRemovedNotification",
    "Delivery",
    "DeliveryReport",
    "EndpointPolicy",
    "FailurePolicy",
    "FunctionCallbacks",
    "GlobalModelBody",
    "InMemoryTrainingRepository",
    "Notification",
    "NotificationKind",
    "NotificationType",
    "Notifier",
    "Outcome",
    "OutcomeCounts",
    "Receiver",
    "ReceiverLike",
    "RetryPolicy",
    "RoundBody",
    "SQLiteTrainingRepository",
    "SendHandle",
    "Settings",
    "Signer",
    "StatusMeaning",
    "Timeouts",
    "TrainingCallbacks",
    "TrainingFinishedNotification",
    "TrainingModelTestNotification",
    "TrainingNotification",
    "TrainingRepository",
    "TrainingRoundStartNotification",
    "TrainingSWAGRoundStartNotification",
    "TrainingSnapshot",
    "TrainingStartNotification",
    "TrainingState",
    "__version__",
    "generate_secret",
]
