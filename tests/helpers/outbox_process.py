"""A dispatcher process for tests/outbox/test_outbox.py: put (optionally), then dispatch everything.

Run as ``python outbox_process.py --db FILE|URL --base URL [--put N] --log FILE``; ``--db``
is an SQLite file or a ``postgresql://`` URL. With ``--put`` it first stores one
TRAINING_START for N receivers (ids ``UUID(int=i + 1)``, endpoints
``<base>/slow-headers/<delay>/200?r=<i>``) and then dispatches; without, it only dispatches
(the restart after a crash). With ``--wait-go`` it prints ``ready`` once set up and waits
for a line on stdin before dispatching (to start several at the same moment). Each callback
call appends ``<message id> <outcome> <pid>`` to the log with one ``write`` on an
``O_APPEND`` descriptor, so a SIGKILL never leaves half a line.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Mapping

import flnotify
from flnotify.outbox import OutboxDispatcher, open_outbox
from flnotify.transports import HttpResponse, HttpxTransport

MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
TRAINING = uuid.UUID("5b1dabcd-ef01-4a23-8b45-6789abcdef01")


def receiver_url(base: str, index: int, delay: float) -> str:
    return f"{base}/slow-headers/{delay}/200?r={index}"


class ThreadedHttpx:
    """HttpxTransport's blocking ``post`` only, so the Notifier runs it in worker threads.

    On loopback this fan-out goes several times faster than httpx's AsyncClient pool
    (see DESIGN §5), which keeps the test short; the outbox does not care which it gets.
    """

    def __init__(self) -> None:
        self._transport = HttpxTransport()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        return self._transport.post(url, body, headers)

    def close(self) -> None:
        self._transport.close()


class LogCallbacks:
    """Appends one line per callback call to a file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def on_success(self, delivery: flnotify.Delivery, /) -> None:
        self._write(delivery)

    def on_error(self, delivery: flnotify.Delivery, /) -> None:
        self._write(delivery)

    def _write(self, delivery: flnotify.Delivery) -> None:
        line = f"{delivery.message_id} {delivery.outcome.value} {os.getpid()}\n"
        os.write(self.fd, line.encode())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--put", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.005)
    parser.add_argument("--lease", type=float, default=1.5)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--wait-go", action="store_true")
    args = parser.parse_args(argv)

    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        with open_outbox(args.db) as outbox:
            if args.put:
                receivers = [
                    flnotify.Receiver(uuid.UUID(int=i + 1), receiver_url(args.base, i, args.delay))
                    for i in range(args.put)
                ]
                outbox.put(
                    flnotify.TrainingStartNotification(
                        receivers=receivers,
                        body=flnotify.GlobalModelBody(global_model_uuid=MODEL),
                        training_uuid=TRAINING,
                    )
                )
            if args.wait_go:
                print("ready", flush=True)
                sys.stdin.readline()
            with flnotify.Notifier(
                transport=ThreadedHttpx(), concurrency=args.concurrency
            ) as notifier:
                OutboxDispatcher(
                    outbox,
                    notifier,
                    callbacks=LogCallbacks(fd),
                    lease_seconds=args.lease,
                    batch_size=args.batch,
                    poll_interval=0.1,
                ).run()
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
