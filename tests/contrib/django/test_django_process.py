"""The settings block: objects per process, the transport seam, the stores' databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flnotify
import flnotify.errors
from flnotify import generate_secret
from flnotify.testing import MemoryTransport


@pytest.fixture
def block(django_site: None) -> Iterator[dict[str, Any]]:
    from django.test import override_settings
    from flhost import config

    settings = {
        "REPOSITORY": dict(config.REPOSITORY),
        "SIGNER": {"SECRETS": generate_secret()},
    }
    with override_settings(FLNOTIFY=settings):
        yield settings


def start(*endpoints: str) -> flnotify.TrainingStartNotification:
    return flnotify.TrainingStartNotification(
        receivers=[flnotify.Receiver(uuid.uuid4(), url) for url in endpoints],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )


def test_one_notifier_per_process_rebuilt_when_the_settings_change(
    block: dict[str, Any],
) -> None:
    from django.test import override_settings

    from flnotify.contrib.django import get_notifier, get_repository

    notifier = get_notifier()
    assert get_notifier() is notifier
    assert get_repository().model == "flhost.Training"
    with override_settings(FLNOTIFY={**block, "NOTIFIER": {"concurrency": 7}}):
        assert get_notifier() is not notifier
        assert get_notifier().settings.concurrency == 7
    assert get_notifier().settings.concurrency == 100


def test_use_transport_routes_and_signs(block: dict[str, Any]) -> None:
    from flnotify.contrib.django import get_notifier, use_transport

    transport = MemoryTransport(lambda request: 202)
    with use_transport(transport):
        report = get_notifier().send(start("http://127.0.0.1:9/a/"))
    assert [d.status_code for d in report] == [202]
    (request,) = transport.requests
    assert request.url == "http://127.0.0.1:9/a/"
    assert request.headers["webhook-signature"].startswith("v1,")
    assert json.loads(request.body)["notification_type"] == "TRAINING_START"


def test_a_wrong_block_names_the_key(django_site: None) -> None:
    from django.test import override_settings

    from flnotify.contrib.django import get_notifier, get_repository

    unknown: dict[str, Any] = {"REPOSITORY": {}, "SINGER": {}}
    with (
        override_settings(FLNOTIFY=unknown),
        pytest.raises(flnotify.errors.ConfigurationError, match=r"unknown key\(s\) \['SINGER'\]"),
    ):
        get_notifier()
    wrong: dict[str, Any] = {"REPOSITORY": {"model": "flhost.Training", "rounds": 1}}
    with (
        override_settings(FLNOTIFY=wrong),
        pytest.raises(flnotify.errors.ConfigurationError, match="rounds"),
    ):
        get_repository()
    with override_settings(FLNOTIFY={"REPOSITORY": {"model": "flhost.Training", "round": "x"}}):
        repository = get_repository()
        with pytest.raises(flnotify.errors.ConfigurationError, match="round: 'x' does not exist"):
            repository.get_training(uuid.uuid4())


def test_the_stores_open_in_the_hosts_databases(django_site: None) -> None:
    from django.test import override_settings

    from flnotify.contrib.django import database_target, open_mailbox, open_outbox
    from flnotify.mailbox import Mailbox, PostgresMailbox
    from flnotify.outbox import Outbox, PostgresOutbox

    assert database_target("default").endswith("default.sqlite3")
    assert database_target("postgres").startswith("postgresql://")
    with override_settings(
        FLNOTIFY={"OUTBOX": {"DATABASE": "postgres"}, "MAILBOX": {"DATABASE": "default"}}
    ):
        with open_outbox() as outbox:
            assert isinstance(outbox, PostgresOutbox)
        with open_mailbox() as mailbox:
            assert isinstance(mailbox, Mailbox)
    with override_settings(FLNOTIFY={"OUTBOX": {}, "MAILBOX": {"DATABASE": "postgres"}}):
        with open_outbox() as outbox:
            assert isinstance(outbox, Outbox)
        with open_mailbox() as mailbox:
            assert isinstance(mailbox, PostgresMailbox)
    with pytest.raises(flnotify.errors.ConfigurationError, match="no database 'nope'"):
        database_target("nope")


PLUGIN_TEST = """
import uuid

import django
from django.conf import settings

import flnotify

settings.configure(
    INSTALLED_APPS=["flnotify.contrib.django"],
    FLNOTIFY={"REPOSITORY": {"model": "flnotify.SendVerdict"}},
)
django.setup()


def test_sends_are_recorded(flnotify_requests, flnotify_transport):
    from flnotify.contrib.django import get_notifier

    flnotify_transport.handler = lambda request: 202
    notification = flnotify.TrainingStartNotification(
        receivers=[flnotify.Receiver(uuid.uuid4(), "https://client.example.org/fl/")],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )
    (delivery,) = get_notifier().send(notification)
    assert delivery.status_code == 202
    assert [r.url for r in flnotify_requests] == ["https://client.example.org/fl/"]
"""


def test_the_pytest_plugin_records_what_get_notifier_sends(tmp_path: Path) -> None:
    pytest.importorskip("django")
    (tmp_path / "test_host.py").write_text(PLUGIN_TEST)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "flnotify.contrib.django.testing"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
