"""The judge of a send waits for news: it does not read the store again and again."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import flnotify
from flnotify import Delivery, Notifier, Receiver, RoundBody, Signer, generate_secret
from flnotify.mailbox import MAILBOX_ENDPOINT, Mailbox
from flnotify.mailbox._route import MailLeg
from helpers.mailbox_env import Clock

SPIN = 3
"""Reads in a row that found only answers judged already: the judge looped without waiting."""


class HeldMailbox(Mailbox):
    """Outcomes are recorded only once the test lets them; every read of answers noted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = threading.Event()
        self.decided = threading.Event()
        self.judged: set[str] = set()
        self.reads_of_judged = 0
        self.waits_after_judging = 0

    def answers(self, owner: str) -> Any:
        found = super().answers(owner)
        ids = {a.message_id for a in found}
        if self.judged and ids and ids <= self.judged:
            self.reads_of_judged += 1
            if self.reads_of_judged >= SPIN:
                self.decided.set()
        self.judged |= ids
        return found

    def settle(self, owner: str, deliveries: Iterable[Delivery]) -> list[Delivery]:
        deliveries = list(deliveries)
        assert self.record.wait(30)
        return super().settle(owner, deliveries)


def test_answers_being_recorded_do_not_make_the_judge_read_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer judged stays answered until its outcome is recorded after the callbacks.

    Meanwhile the judge must wait for news (an acknowledgement, or its poll interval):
    reading the same answers in a loop burns the CPU the mailbox app needs.
    """
    clock = Clock()
    secrets = {uuid.uuid4(): generate_secret() for _ in range(2)}
    signer = Signer(lookup=lambda r: secrets.get(r.id))
    store = HeldMailbox(tmp_path / "mail.db", clock=clock, ack_deadline=60.0, visibility=10.0)
    waited = MailLeg._wait

    async def wait(self: MailLeg, woken: asyncio.Event) -> None:
        if store.judged:
            store.waits_after_judging += 1
            store.decided.set()
        await waited(self, woken)

    monkeypatch.setattr(MailLeg, "_wait", wait)
    posted = threading.Event()
    store.signals.on_mail(lambda _: posted.set())
    first, second = (Receiver(client, MAILBOX_ENDPOINT) for client in secrets)
    notification = flnotify.TrainingRoundStartNotification(
        receivers=[first, second],
        body=RoundBody(round=1, global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    notifier = Notifier(signer=signer, mailbox=store)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(notifier.send, notification)
        assert posted.wait(30)
        (letter,) = store.fetch(first.id, 10)
        (other,) = store.fetch(second.id, 10)
        assert store.ack(first.id, [(letter.message_id, 200)]) == 1
        assert store.decided.wait(30)  # the judge waited, or read the same answers again
        spun = store.reads_of_judged >= SPIN
        store.record.set()
        assert store.ack(second.id, [(other.message_id, 200)]) == 1
        report = sent.result(timeout=30)
    notifier.close()
    store.close()
    assert len(report.delivered) == 2
    assert not spun, f"the judge read {store.reads_of_judged} times without waiting"
    assert store.waits_after_judging >= 1
