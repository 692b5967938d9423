"""The fan-out against its ceilings: bare clients, the feature-equivalent floor, uvloop.

Usage (from the project root, with the bench and uvloop extras installed)::

    python bench/ceiling.py                      # 10,000 receivers, 7 alternating runs
    python bench/ceiling.py --size 100000 --reps 3
    python bench/ceiling.py --no-write           # print the table, leave docs/ alone
    python bench/ceiling.py --no-io              # no I/O: each client's own work alone

Same sink as ``bench/fanout.py`` (nginx answering ``202`` on 100 loopback ports; a
pure-Python sink without nginx, and the output says so). Each measurement runs in a fresh
subprocess; peers alternate within each repetition. Rows:

* ``limit``: the ceiling, bare asyncio streams with pre-built requests, one kept-alive
  connection per origin (the same function as ``bench/fanout.py``'s);
* ``floor``: the feature-equivalent floor, the same bare client doing what a delivery
  needs: each request built for its receiver and signed (Standard Webhooks HMAC-SHA256,
  ``webhook-id``/``-timestamp``/``-signature``), a result object built per receiver;
* ``shape``: the prototype's shape, the floor's work done by the connection's protocol,
  which writes the next receiver's request when a response completes (no future,
  coroutine or task switch per request);
* ``notifier``: ``Notifier`` + ``StreamTransport`` + a shared-secret ``Signer``;
* ``callbacks``: the same with the default training callbacks on (a round start of a
  training whose participants are the receivers, in an in-memory repository);
* each again on uvloop (``-uvloop``).

The table shows each rate (median) as a ratio to the asyncio ceiling and to the floor of
the same loop, and the client's CPU time per delivery (lowest of the runs). Results go to
stdout and into docs/benchmarks.md between the ``ceiling:begin``/``ceiling:end`` markers.

With ``--no-io`` no sink runs: each connection answers every request with nginx's 202
from memory on the next loop iteration, so the CPU column is each client's own work
(Python and the event loop), without the kernel's share, which on a shared machine moves
with the load; its table goes between the ``ceiling-no-io`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fanout

HOST = fanout.HOST
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- ceiling:begin -->", "<!-- ceiling:end -->"
NO_IO_BEGIN, NO_IO_END = "<!-- ceiling-no-io:begin -->", "<!-- ceiling-no-io:end -->"
SECRET = "whsec_" + base64.b64encode(b"a shared secret of 32 bytes.....").decode()
KEY = base64.b64decode(SECRET.removeprefix("whsec_"))
BODY = fanout.BODY
_CONTENT_LENGTH = fanout._CONTENT_LENGTH


class Result:
    """What the floor and the shape build per receiver: a compact delivery record."""

    __slots__ = ("attempts", "index", "message_id", "status")

    def __init__(self, index: int, message_id: str, status: int) -> None:
        self.index = index
        self.message_id = message_id
        self.status = status
        self.attempts = 1


def _by_origin(urls: list[str]) -> dict[tuple[str, int], list[tuple[int, str]]]:
    """Receivers (index, request target) per origin; nothing is pre-built."""
    by_origin: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
    for index, url in enumerate(urls):
        authority, _, path = url.split("://", 1)[1].partition("/")
        host, _, port = authority.rpartition(":")
        by_origin[(host, int(port))].append((index, "/" + path))
    return by_origin


def _signed_request(target: str, authority: str, index: int, timestamp: str) -> tuple[str, bytes]:
    """One receiver's request: its id, and its head and body signed as Standard Webhooks."""
    message_id = f"msg_{index:08d}"
    signed = f"{message_id}.{timestamp}.".encode() + BODY
    signature = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n"
        f"webhook-id: {message_id}\r\nwebhook-timestamp: {timestamp}\r\n"
        f"webhook-signature: v1,{signature}\r\nContent-Length: {len(BODY)}\r\n\r\n"
    )
    return message_id, head.encode("latin-1") + BODY


async def run_floor(urls: list[str]) -> int:
    """The bare streams client doing a delivery's work: sign, send, read, record."""
    results: list[Result | None] = [None] * len(urls)
    timestamp = str(int(time.time()))

    async def origin(host: str, port: int, receivers: list[tuple[int, str]]) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        authority = f"{host}:{port}"
        for index, target in receivers:
            message_id, request = _signed_request(target, authority, index, timestamp)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = _CONTENT_LENGTH.search(head)
            if match and int(match.group(1)):
                await reader.readexactly(int(match.group(1)))
            results[index] = Result(index, message_id, int(head[9:12]))
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(origin(h, p, r) for (h, p), r in _by_origin(urls).items()))
    return sum(1 for r in results if r is not None and 200 <= r.status < 300)


class _Puller(asyncio.Protocol):
    """The prototype's shape: a completed response makes the protocol send the next one."""

    def __init__(
        self,
        receivers: list[tuple[int, str]],
        authority: str,
        results: list[Result | None],
        done: asyncio.Future[None],
    ) -> None:
        self.receivers = iter(receivers)
        self.authority = authority
        self.results = results
        self.done = done
        self.timestamp = str(int(time.time()))
        self.buf = b""
        self.current: tuple[int, str] = (-1, "")
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.next()

    def next(self) -> None:
        receiver = next(self.receivers, None)
        if receiver is None:
            assert self.transport is not None
            self.transport.close()
            self.done.set_result(None)
            return
        index, target = receiver
        message_id, request = _signed_request(target, self.authority, index, self.timestamp)
        self.current = (index, message_id)
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        total = fanout.response_length(buf)
        if not total:
            self.buf = buf
            return
        self.buf = buf[total:]
        index, message_id = self.current
        self.results[index] = Result(index, message_id, int(buf[9:12]))
        self.next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("lost"))


async def run_shape(urls: list[str]) -> int:
    loop = asyncio.get_running_loop()
    results: list[Result | None] = [None] * len(urls)
    waits = []
    for (host, port), receivers in _by_origin(urls).items():
        done: asyncio.Future[None] = loop.create_future()
        authority = f"{host}:{port}"
        await loop.create_connection(
            lambda r=receivers, a=authority, d=done: _Puller(r, a, results, d), host, port
        )
        waits.append(done)
    await asyncio.gather(*waits)
    return sum(1 for r in results if r is not None and 200 <= r.status < 300)


async def run_notifier(notification: Any) -> int:
    from flnotify import Signer

    transport = fanout._stream_transport()
    return await fanout._run_notifier(notification, transport, signer=Signer(SECRET))


run_notifier.prepare = fanout._notification  # type: ignore[attr-defined]


def _training_notification(urls: list[str]) -> Any:
    """A round start of a training whose participants are the receivers, and its repository."""
    import uuid

    import flnotify

    repository = flnotify.InMemoryTrainingRepository()
    receivers = [flnotify.Receiver(uuid.uuid4(), url) for url in urls]
    training = repository.create_training(
        actor=receivers[0], participants=receivers, model_id=uuid.uuid4()
    )
    return flnotify.TrainingRoundStartNotification.from_training(training), repository


async def run_notifier_callbacks(prepared: Any) -> int:
    """The notifier row with the default training callbacks on (what a training send runs)."""
    from flnotify import Signer

    notification, repository = prepared
    transport = fanout._stream_transport()
    return await fanout._run_notifier(
        notification, transport, signer=Signer(SECRET), repository=repository
    )


run_notifier_callbacks.prepare = _training_notification  # type: ignore[attr-defined]

BASE: dict[str, tuple[str, Callable[..., Any]]] = {
    "limit": ("bare asyncio streams, pre-built requests (the ceiling)", fanout.run_limit),
    "floor": ("feature-equivalent floor: bare streams, signs, a result each", run_floor),
    "shape": ("prototype's shape: the protocol pulls the next receiver", run_shape),
    "notifier": ("Notifier + StreamTransport + Signer", run_notifier),
    "callbacks": ("Notifier + Signer + default training callbacks", run_notifier_callbacks),
}
PEERS = {
    f"{name}{loop}": (f"{label}{' on uvloop' if loop else ''}", fn)
    for loop in ("", "-uvloop")
    for name, (label, fn) in BASE.items()
}


# -- no I/O: the client's own work alone ------------------------------------------------------

NGINX_202 = (
    b"HTTP/1.1 202 Accepted\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 06:40:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
)


class _MemoryConnection(asyncio.Transport):
    """A connection that answers each request with nginx's 202 on the next loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._loop.call_soon(self._protocol.data_received, NGINX_202)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _in_memory(loop: Any) -> Any:
    """``loop`` with ``create_connection`` answering from memory (any loop class)."""

    async def create_connection(factory: Callable[[], Any], *_: Any, **__: Any) -> Any:
        protocol = factory()
        transport = _MemoryConnection(loop, protocol)
        protocol.connection_made(transport)
        return transport, protocol

    loop.create_connection = create_connection
    return loop


def worker_main(peer: str, size: int, ports: list[int], no_io: bool = False) -> None:
    """Run one peer once; print elapsed, CPU, delivered and peak RSS as one JSON line."""
    fanout.preimport("notifier")
    fn = PEERS[peer][1]
    urls = fanout.receiver_urls(size, ports)
    prepare = getattr(fn, "prepare", None)
    arg = prepare(urls) if prepare is not None else urls
    if peer.endswith("-uvloop"):
        import uvloop

        new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        new_loop = asyncio.new_event_loop

    def runner(coroutine: Any) -> int:
        loop = _in_memory(new_loop()) if no_io else new_loop()
        asyncio.set_event_loop(loop)
        try:
            return int(loop.run_until_complete(coroutine))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    cpu = time.process_time()
    start = time.perf_counter()
    delivered = runner(fn(arg))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "delivered": delivered, "rss_kb": rss_kb}))


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    return fanout.run_child(args, timeout, __file__)


def measure(args: argparse.Namespace) -> str:
    ports = fanout.free_ports(fanout.ORIGINS)
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    sink = contextlib.nullcontext(NO_IO) if args.no_io else fanout.sink(args.sink, ports)
    with sink as description:
        if not args.no_io:
            fanout.wait_listening(ports)
        for rep in range(args.reps):
            order = list(PEERS) if rep % 2 == 0 else list(reversed(PEERS))  # alternate
            for peer in order:
                worker = ["--worker", peer, "--size", str(args.size), "--ports", json.dumps(ports)]
                result = run_child(worker + (["--no-io"] if args.no_io else []), timeout=600)
                runs[peer].append(result)
                print(f"  {peer:16} {result}", file=sys.stderr)
    return table(args, description, runs)


NO_IO = (
    "none: no I/O, every request answered with nginx's 202 from memory on the next loop "
    "iteration, so the CPU column is the client's own work (Python and the event loop)"
)


def table(args: argparse.Namespace, sink: str, runs: dict[str, list[dict[str, Any]]]) -> str:
    rate: dict[str, float] = {}
    cpu: dict[str, float] = {}
    rss: dict[str, float] = {}
    errors: dict[str, str] = {}
    for peer, results in runs.items():
        good = [r for r in results if "error" not in r and r["delivered"] == args.size]
        if not good:
            errors[peer] = next((r.get("error", "") for r in results), "") or "incomplete"
            continue
        rate[peer] = statistics.median(args.size / r["elapsed"] for r in good)
        cpu[peer] = min(r["cpu"] for r in good) / args.size * 1e6
        rss[peer] = max(r["rss_kb"] for r in good) / 1024
    ceiling = rate.get("limit")
    lines = [
        f"{args.size:,} receivers over {fanout.ORIGINS} origins, sink: {sink}; "
        f"{args.reps} alternating runs, rate = median, CPU = lowest",
        "",
        "| client | deliveries/s | x ceiling (asyncio) | x floor (same loop) "
        "| CPU µs/delivery | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for peer, (label, _) in PEERS.items():
        if peer in errors:
            lines.append(f"| {label} | failed: {errors[peer]} | | | | |")
            continue
        floor = rate.get("floor-uvloop" if peer.endswith("-uvloop") else "floor")
        x_ceiling = f"{rate[peer] / ceiling:.2f}" if ceiling else "-"
        x_floor = f"{rate[peer] / floor:.2f}" if floor else "-"
        lines.append(
            f"| {label} | {rate[peer]:,.0f} | {x_ceiling} | {x_floor} "
            f"| {cpu[peer]:.1f} | {rss[peer]:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_docs(text: str, begin: str = BEGIN, end: str = END) -> None:
    doc = DOCS.read_text()
    block = f"{begin}\n{text}{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n## Against the ceiling and the floor\n\n" + block + "\n"
    DOCS.write_text(doc)


def main(argv: Iterator[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--sink", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--no-io", action="store_true", help="answer from memory: the client's own work alone"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.worker:
        worker_main(args.worker, args.size, json.loads(args.ports), args.no_io)
        return
    text = measure(args)
    print(text)
    if not args.no_write:
        write_docs(text, *((NO_IO_BEGIN, NO_IO_END) if args.no_io else (BEGIN, END)))


if __name__ == "__main__":
    main()
