"""The delivery core on its own: a receiver's flow driven by hand, without any I/O.

Each test plays the driver: it sends back what the flow's steps would have produced (a
response, addresses) or throws in what the I/O would have raised, and reads the delivery
the flow returns.
"""

from __future__ import annotations

import uuid
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

import flnotify
import flnotify.errors
from flnotify import Outcome, Receiver, RetryPolicy
from flnotify._attempt import Core, Course, Flow, Post, Resolve, Step, Wait
from flnotify._hooks import HookSet
from flnotify.endpoints import EndpointPolicy
from flnotify.errors import TransportErrorKind
from flnotify.signing import Signer, generate_secret
from flnotify.testing import RecordingHook
from flnotify.transports import HttpResponse

URL = "https://client.example/hook"
RETRY = RetryPolicy(max_attempts=3, initial_backoff=1.0, jitter=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _notification(url: str = URL) -> flnotify.TrainingStartNotification:
    return flnotify.TrainingStartNotification(
        receivers=[Receiver(uuid.uuid4(), url)],
        body=flnotify.GlobalModelBody(global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )


def _core(
    *,
    retry: RetryPolicy = RETRY,
    policy: EndpointPolicy | None = None,
    signer: Signer | None = None,
    hook: RecordingHook | None = None,
    clock: Clock | None = None,
) -> tuple[Core, Course]:
    notification = _notification()
    core = Core(
        notification,
        b"{}",
        retry=retry,
        signer=signer,
        policy=policy or EndpointPolicy(),
        user_agent="flnotify-test",
        clock=clock or Clock(),
        wall_clock=lambda: 1_700_000_000.0,
        rng=lambda: 0.0,
        hooks=HookSet([] if hook is None else [hook]),
        send_id="snd_1",
        send_size=1,
    )
    return core, Course(0, notification.receivers[0], "msg_1")


def _finish(flow: Flow, answer: Any = None, throw: Exception | None = None) -> Any:
    """Send ``answer`` (or throw ``throw``) into ``flow``: its next step, or its delivery."""
    try:
        return flow.send(answer) if throw is None else flow.throw(throw)
    except StopIteration as stop:
        return stop.value


def test_a_delivered_attempt_is_one_post_and_one_delivery() -> None:
    core, course = _core()
    flow = core.flow(course)
    step = next(flow)
    assert isinstance(step, Post)
    assert step.address is None
    assert step.headers["webhook-id"] == "msg_1"
    assert step.headers["content-type"] == "application/json"
    delivery = _finish(flow, HttpResponse(202))
    assert isinstance(delivery, flnotify.Delivery)
    assert (delivery.outcome, delivery.attempts, delivery.status_code) == (
        Outcome.DELIVERED,
        1,
        202,
    )


def test_a_retryable_answer_waits_then_posts_again() -> None:
    core, course = _core()
    flow = core.flow(course)
    assert isinstance(next(flow), Post)
    wait = _finish(flow, HttpResponse(503))
    assert wait == Wait(1.0)
    again = _finish(flow)
    assert isinstance(again, Post)
    assert again.headers["webhook-id"] == "msg_1"  # the same message, attempted again
    delivery = _finish(flow, HttpResponse(200))
    assert (delivery.outcome, delivery.attempts) == (Outcome.DELIVERED, 2)


def test_the_guard_resolves_before_each_attempt_and_a_rebound_retry_is_refused() -> None:
    policy = EndpointPolicy(block_private=True)
    core, course = _core(policy=policy)
    flow = core.flow(course)
    assert next(flow) == Resolve("client.example", 443)
    post = _finish(flow, ["93.184.216.34"])
    assert isinstance(post, Post)
    assert post.address == ("93.184.216.34",)
    assert _finish(flow, HttpResponse(503)) == Wait(1.0)
    assert _finish(flow) == Resolve("client.example", 443)  # checked again for the retry
    refused = _finish(flow, throw=flnotify.errors.BlockedAddressError(URL, "10.0.0.1 is private"))
    assert refused.outcome is Outcome.FAILED
    assert refused.error.kind is TransportErrorKind.BLOCKED
    assert (refused.attempts, refused.status_code) == (1, 503)


def test_what_the_transport_raises_is_named_as_the_transports() -> None:
    core, course = _core()
    flow = core.flow(course)
    next(flow)
    delivery = _finish(flow, throw=ValueError("bug in a transport"))
    assert delivery.outcome is Outcome.FAILED
    assert isinstance(delivery.error, flnotify.errors.InternalError)
    assert "the transport raised" in str(delivery.error)
    assert delivery.error.kind is TransportErrorKind.INTERNAL


def test_a_transport_returning_junk_fails_the_receiver_naming_the_transport() -> None:
    core, course = _core()
    flow = core.flow(course)
    next(flow)
    delivery = _finish(flow, "not a response")
    assert delivery.outcome is Outcome.FAILED
    assert "the transport" in str(delivery.error)


def test_a_signer_that_raises_fails_before_any_post() -> None:
    class Broken(Signer):
        def headers(self, *args: Any, **kwargs: Any) -> dict[str, str]:
            raise RuntimeError("no key")

    core, course = _core(signer=Broken(generate_secret()))
    delivery = _finish(core.flow(course))
    assert delivery.outcome is Outcome.FAILED
    assert "building the headers raised" in str(delivery.error)
    assert delivery.attempts == 0


def test_an_invalid_url_fails_without_any_step() -> None:
    core, course = _core()
    course.receiver = Receiver(uuid.uuid4(), "ftp://nope")
    delivery = _finish(core.flow(course))
    assert delivery.outcome is Outcome.FAILED
    assert delivery.error.kind is TransportErrorKind.INVALID_URL


ANSWERS = st.one_of(
    st.sampled_from([200, 202, 204, 400, 409, 410, 429, 500, 502, 503, 504]).map(HttpResponse),
    st.sampled_from(
        [
            flnotify.errors.TransportError("reset", url=URL, kind=TransportErrorKind.RESET),
            flnotify.errors.TransportTimeoutError("slow", url=URL),
            RuntimeError("a transport bug"),
        ]
    ),
    st.just("junk"),
)


@settings(max_examples=200, deadline=None)
@given(answers=st.lists(ANSWERS, min_size=1, max_size=8), attempts=st.integers(1, 5))
def test_any_answers_end_in_one_delivery_with_paired_attempt_hooks(
    answers: list[Any], attempts: int
) -> None:
    """Whatever the I/O produces: at most max_attempts POSTs, one delivery, hooks paired."""
    hook = RecordingHook()
    clock = Clock()
    core, course = _core(
        retry=RetryPolicy(max_attempts=attempts, initial_backoff=1.0, jitter=0.0),
        hook=hook,
        clock=clock,
    )
    flow = core.flow(course)
    posts = 0
    feed = iter(answers)
    result: Step | flnotify.Delivery = next(flow)
    while not isinstance(result, flnotify.Delivery):
        if isinstance(result, Post):
            posts += 1
            answer = next(feed, HttpResponse(200))
            clock.now += 0.5
            if isinstance(answer, Exception):
                result = _finish(flow, throw=answer)
            else:
                result = _finish(flow, answer)
        else:
            assert isinstance(result, Wait)
            assert result.seconds >= 0
            clock.now += result.seconds
            result = _finish(flow)
    assert posts <= attempts
    assert result.attempts == posts
    assert hook.outcomes == [result]
    assert len(hook.started) == len(hook.ended) == posts
    # a retry is announced exactly when another attempt followed
    assert [e.retry_in is not None for e in hook.ended] == [True] * (posts - 1) + [False]
    error = result.error
    if (
        isinstance(error, flnotify.errors.TransportError)
        and error.kind is TransportErrorKind.INTERNAL
    ):
        assert "the transport" in str(error)  # the component that broke is named


def test_a_cancelled_attempt_is_ended_for_the_hooks_by_fail() -> None:
    hook = RecordingHook()
    core, course = _core(hook=hook)
    flow = core.flow(course)
    next(flow)  # the POST is in flight
    flow.close()  # the driver was cancelled
    error = flnotify.errors.TransportError("deadline", url=URL, kind=TransportErrorKind.DEADLINE)
    delivery = core.fail(course, error)
    assert delivery.outcome is Outcome.FAILED
    assert len(hook.started) == len(hook.ended) == 1
    assert hook.ended[0].error is error
    assert hook.ended[0].retry_in is None


@pytest.mark.parametrize("status", [200, 409])
def test_a_final_answer_never_waits(status: int) -> None:
    core, course = _core()
    flow = core.flow(course)
    next(flow)
    assert isinstance(_finish(flow, HttpResponse(status)), flnotify.Delivery)
