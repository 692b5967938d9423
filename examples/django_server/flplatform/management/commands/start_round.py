"""``python manage.py start_round <training-id> [--model-id UUID]``."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flplatform.models import Training
from flplatform.notifications import start_next_round


class Command(BaseCommand):
    help = "Start the next round of a training and notify its participants."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("training_id", type=uuid.UUID)
        parser.add_argument("--model-id", type=uuid.UUID, help="the new global model")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = start_next_round(options["training_id"], options["model_id"])
        except Training.DoesNotExist:
            raise CommandError(f"no training {options['training_id']}") from None
        for delivery in report:
            self.stdout.write(delivery.describe())
        training = Training.objects.get(pk=options["training_id"])
        self.stdout.write(
            f"round {training.round}: {len(report.delivered)} delivered, "
            f"{len(report.rejected)} rejected, {len(report.failed)} failed; "
            f"training {training.state}, {training.participants.count()} participant(s)"
        )
