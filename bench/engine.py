"""The Notifier's own cost per delivery, with a transport that answers at once (no I/O).

Usage (from the project root)::

    python bench/engine.py                 # 1,000 / 10,000 / 100,000 receivers, 3 runs each

Prints a markdown table: microseconds of engine work per delivery (median of the runs) and
the peak RSS of this process. What it measures is everything but the wire: endpoint checks,
headers, retry decisions, the Delivery objects and the report.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
import uuid
from collections.abc import Mapping

import flnotify
from flnotify.transports import HttpResponse

ANSWER = HttpResponse(202)


class Instant:
    """A transport that answers 202 without any I/O."""

    async def apost(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        return ANSWER

    async def aclose(self) -> None:
        return None


def notification(n: int) -> flnotify.TrainingRoundStartNotification:
    receivers = [
        flnotify.Receiver(uuid.uuid4(), f"http://127.0.0.1:{20000 + i % 100}/fl/{i}")
        for i in range(n)
    ]
    return flnotify.TrainingRoundStartNotification(
        receivers=receivers,
        body=flnotify.RoundBody(round=1, global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )


async def once(n: flnotify.TrainingRoundStartNotification) -> float:
    async with flnotify.Notifier(transport=Instant()) as notifier:
        start = time.perf_counter()
        report = await notifier.asend(n)
        elapsed = time.perf_counter() - start
    assert report.ok
    return elapsed / len(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print("| receivers | engine µs/delivery (median) | peak RSS (MB) |")
    print("|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        n = notification(size)
        runs = [asyncio.run(once(n)) for _ in range(args.reps)]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(f"| {size:,} | {statistics.median(runs) * 1e6:.1f} | {rss} |")


if __name__ == "__main__":
    main()
