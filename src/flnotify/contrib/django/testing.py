"""pytest fixtures for Django hosts: every delivery of ``get_notifier()`` stays in memory.

Enable them in your ``conftest.py``::

    pytest_plugins = ["flnotify.contrib.django.testing"]

``flnotify_transport`` routes the process's [`Notifier`][flnotify.Notifier] (from
[`get_notifier`][flnotify.contrib.django.get_notifier]) and, with Celery installed, every
[`CeleryDelivery`][flnotify.contrib.celery.CeleryDelivery] whose tasks run in the test
process (``task_always_eager``, or a worker started by ``celery.contrib.testing``) to a
[`MemoryTransport`][flnotify.testing.MemoryTransport] for the test, answering 200 unless
you set its ``handler``; ``flnotify_requests`` is the list of what was sent (url, body,
headers), in order. Nothing happens unless a test asks for one of them. Code that builds
its own ``Notifier`` is not routed: pass it the transport yourself.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import pytest

from ...transports._memory import MemoryRequest, MemoryTransport
from ._process import use_transport

__all__ = ["flnotify_requests", "flnotify_transport"]


@pytest.fixture
def flnotify_transport() -> Iterator[MemoryTransport]:
    """The in-memory transport ``get_notifier()`` sends through during the test."""
    transport = MemoryTransport()
    with contextlib.ExitStack() as stack:
        stack.enter_context(use_transport(transport))
        if importlib.util.find_spec("celery") is not None:
            from ..celery import use_transport as celery_transport

            stack.enter_context(celery_transport(transport))
        yield transport


@pytest.fixture
def flnotify_requests(flnotify_transport: MemoryTransport) -> list[MemoryRequest]:
    """Every request ``get_notifier()`` sent during the test, in order."""
    return flnotify_transport.requests
