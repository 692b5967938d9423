"""The host's flnotify set-up: the repository arguments its settings block uses."""

from __future__ import annotations

from typing import Any

from flnotify import TrainingState

REPOSITORY: dict[str, Any] = {
    "model": "flhost.Training",
    "participants": "participants",
    "actor": "actor",
    "round": "model.round",
    "model_id": "model.id",
    "state": "state",
    "states": {
        "I": TrainingState.INITIAL,
        "O": TrainingState.ONGOING,
        "C": TrainingState.COMPLETED,
        "E": TrainingState.ERROR,
        "S": TrainingState.SWAG_ROUND,
    },
    "receiver_endpoint": "message_endpoint",
}
