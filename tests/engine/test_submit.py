"""``Notifier.submit``: the message ids at once, the report later, in sync and async code."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

import flnotify
import flnotify.errors
from flnotify import Receiver, RetryPolicy
from flnotify.testing import MemoryRequest, MemoryTransport

ONCE = RetryPolicy.no_retries()


def round_start(n: int) -> flnotify.TrainingRoundStartNotification:
    return flnotify.TrainingRoundStartNotification(
        receivers=[Receiver(uuid.uuid4(), f"http://c{i}.test/fl") for i in range(n)],
        body=flnotify.RoundBody(round=1, global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )


def test_sync_submit_returns_the_ids_at_once_and_the_report_later() -> None:
    release = threading.Event()

    async def held(_: MemoryRequest) -> int:
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        return 202

    ids = ["msg_a", "msg_b"]
    with flnotify.Notifier(transport=MemoryTransport(held), retry=ONCE) as notifier:
        handle = notifier.submit(round_start(2), message_ids=ids)
        assert handle.message_ids == ("msg_a", "msg_b")
        assert not handle.done()  # the clients are held: the send cannot have ended
        assert "running" in repr(handle)
        release.set()
        report = handle.result()
    assert handle.done()
    assert [d.message_id for d in report] == ids
    assert [d.send_id for d in report] == [handle.send_id] * 2
    assert report.ok


def test_async_submit_runs_on_the_callers_loop_and_a_waiter_giving_up_never_stops_it() -> None:
    async def main() -> flnotify.DeliveryReport:
        release = asyncio.Event()

        async def held(_: MemoryRequest) -> int:
            await release.wait()
            return 202

        async with flnotify.Notifier(transport=MemoryTransport(held), retry=ONCE) as notifier:
            handle = notifier.submit(round_start(3))
            assert len(handle.message_ids) == 3
            impatient = asyncio.ensure_future(_await(handle))
            await asyncio.sleep(0)  # it starts waiting
            impatient.cancel()  # a request that went away
            with pytest.raises(asyncio.CancelledError):
                await impatient
            with pytest.raises(flnotify.errors.ConfigurationError, match="await the handle"):
                handle.result()  # on the loop that runs it: it would wait for itself
            release.set()
            return await handle

    report = asyncio.run(main())
    assert report.counts().delivered == 3


async def _await(handle: flnotify.SendHandle) -> flnotify.DeliveryReport:
    return await handle


def test_closing_waits_for_submitted_sends() -> None:
    async def main() -> flnotify.SendHandle:
        release = asyncio.Event()

        async def held(_: MemoryRequest) -> int:
            await release.wait()
            return 200

        async with flnotify.Notifier(transport=MemoryTransport(held), retry=ONCE) as notifier:
            handle = notifier.submit(round_start(1))
            asyncio.get_running_loop().call_soon(release.set)
        assert handle.done()  # aclose() waited for it
        return handle

    assert asyncio.run(main()).result().ok


def test_bad_input_is_refused_at_submit_not_later() -> None:
    with (
        flnotify.Notifier(transport=MemoryTransport(), retry=ONCE) as notifier,
        pytest.raises(flnotify.errors.ConfigurationError),
    ):
        notifier.submit(round_start(2), message_ids=["only-one"])
