"""Fan-out benchmark: one small JSON POST to N receivers over 100 loopback origins.

Usage (from the project root, with the bench extras installed)::

    python bench/fanout.py                       # sizes 1,000 and 10,000, 3 repetitions
    python bench/fanout.py --sizes 1000 --reps 5
    python bench/fanout.py --huge                # adds 100,000 receivers
    python bench/fanout.py --no-write            # print the tables, leave docs/ alone
    python bench/fanout.py --profile stream-workers --size 10000   # pyinstrument report

The sink is nginx (Debian's ``nginx-light``) answering ``202`` on 100 loopback ports, started
from a temporary configuration; without nginx a pure-Python asyncio sink is used instead and
the output says so. Every measurement runs in a fresh subprocess (honest peak RSS, no warm
caches), peers alternate within each repetition, and the tables report medians. The same
run measures a faulty-receiver scenario: 1,000 receivers of which 50 accept the connection
and never answer, one attempt, 1 s read timeout; the wall time of the whole send is reported.

Results go to stdout and into docs/benchmarks.md between the ``bench:begin``/``bench:end``
markers (the rest of that file, e.g. profiling notes, is left as it is). Only 127.0.0.1 is
ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import charts  # the SVG charts of the tables' ratios (bench/charts.py)

HOST = "127.0.0.1"
ORIGINS = 100
CONCURRENCY = 100
HOLD_RECEIVERS = 50
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

PAYLOAD: dict[str, Any] = {
    "notification_type": "UPDATE_ROUND_START",
    "body": {"round": 3, "global_model_uuid": "8c0e7f8e-3b0a-4c47-9c1e-6d1f0c2b9a11"},
    "training_uuid": "5b1d2a3c-4d5e-4f60-8a7b-9c0d1e2f3a4b",
}
BODY = json.dumps(PAYLOAD).encode()
HEADERS = {"content-type": "application/json"}


# -- peers (each runs in its own subprocess) ---------------------------------------------------


def receiver_urls(n: int, ports: list[int]) -> list[str]:
    """N receiver URLs spread round-robin over the sink's origins, one path each."""
    return [f"http://{HOST}:{ports[i % len(ports)]}/fl/{i}/message" for i in range(n)]


def run_requests_loop(urls: list[str]) -> int:
    import requests

    ok = 0
    for url in urls:  # the original's way: a new connection per receiver, JSON encoded each time
        response = requests.post(url, json=PAYLOAD, timeout=10)
        ok += 200 <= response.status_code < 300
    return ok


def run_httpx_loop(urls: list[str]) -> int:
    import httpx

    ok = 0
    with httpx.Client() as client:
        for url in urls:
            response = client.post(url, content=BODY, headers=HEADERS)
            ok += 200 <= response.status_code < 300
    return ok


async def run_httpx_async(urls: list[str]) -> int:
    import httpx

    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient() as client:

        async def one(url: str) -> bool:
            async with sem:
                response = await client.post(url, content=BODY, headers=HEADERS)
                return 200 <= response.status_code < 300

        return sum(await asyncio.gather(*(one(u) for u in urls)))


async def run_aiohttp(urls: list[str]) -> int:
    import aiohttp

    sem = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession() as session:

        async def one(url: str) -> bool:
            async with sem, session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                return 200 <= response.status < 300

        return sum(await asyncio.gather(*(one(u) for u in urls)))


def _stream_transport(**kwargs: Any) -> Any:
    from flnotify.transports._streams import StreamTransport

    return StreamTransport(**kwargs)


async def run_stream_gather(urls: list[str]) -> int:
    sem = asyncio.Semaphore(CONCURRENCY)
    async with _stream_transport() as transport:

        async def one(url: str) -> bool:
            async with sem:
                response = await transport.apost(url, BODY, HEADERS)
                return bool(200 <= response.status_code < 300)

        return sum(await asyncio.gather(*(one(u) for u in urls)))


async def _workers(transport: Any, urls: list[str], *, count: int = CONCURRENCY) -> int:
    """``count`` tasks take receivers from one iterator: bounded concurrency, no task each."""
    from flnotify.errors import TransportError

    it = iter(urls)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for url in it:
            try:
                response = await transport.apost(url, BODY, HEADERS)
            except TransportError:
                continue
            ok += 200 <= response.status_code < 300

    await asyncio.gather(*(worker() for _ in range(count)))
    return ok


async def run_stream_workers(urls: list[str]) -> int:
    async with _stream_transport() as transport:
        return await _workers(transport, urls)


def _notification(urls: list[str]) -> Any:
    import uuid

    import flnotify

    return flnotify.TrainingRoundStartNotification(
        receivers=[flnotify.Receiver(uuid.uuid4(), url) for url in urls],
        body=flnotify.RoundBody(round=1, global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )


def notifier_available() -> bool:
    """Whether flnotify's Notifier exists yet (the Notifier rows are added only then)."""
    try:
        from flnotify._notifier import Notifier  # noqa: F401
    except ImportError:
        return False
    return True


async def _run_notifier(notification: Any, transport: Any, **kwargs: Any) -> int:
    from flnotify import Notifier

    async with Notifier(transport=transport, concurrency=CONCURRENCY, **kwargs) as notifier:
        report = await notifier.asend(notification)
    return len(report.delivered)


def _with_notification(fn: Callable[[Any], Any]) -> Callable[[list[str]], Any]:
    fn.prepare = _notification  # type: ignore[attr-defined]
    return fn


@_with_notification
async def run_notifier_stream(notification: Any) -> int:
    return await _run_notifier(notification, _stream_transport())


@_with_notification
async def run_notifier_httpx(notification: Any) -> int:
    from flnotify.transports import HttpxTransport

    return await _run_notifier(notification, HttpxTransport())


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def _prebuilt(urls: list[str]) -> dict[int, list[bytes]]:
    by_port: dict[int, list[bytes]] = defaultdict(list)
    for url in urls:
        rest = url.split("://", 1)[1]
        authority, _, path = rest.partition("/")
        port = int(authority.rsplit(":", 1)[1])
        by_port[port].append(
            b"POST /%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), authority.encode(), len(BODY), BODY)
        )
    return by_port


async def run_limit(by_port: dict[int, list[bytes]]) -> int:
    """The ceiling: asyncio streams, pre-built requests, one kept-alive connection per origin."""

    async def origin(port: int, requests: list[bytes]) -> int:
        reader, writer = await asyncio.open_connection(HOST, port)
        ok = 0
        for request in requests:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = _CONTENT_LENGTH.search(head)
            if match and int(match.group(1)):
                await reader.readexactly(int(match.group(1)))
            ok += head[9:10] == b"2"
        writer.close()
        await writer.wait_closed()
        return ok

    return sum(await asyncio.gather(*(origin(p, r) for p, r in by_port.items())))


run_limit.prepare = _prebuilt  # type: ignore[attr-defined]


def response_length(buf: bytes) -> int:
    """The length of the complete response ``buf`` starts with, or 0 if it is not complete.

    A bare client's reading: the head's end, then ``Content-Length`` bytes of body.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    match = _CONTENT_LENGTH.search(buf, 0, end + 2)
    total = end + 4 + (int(match.group(1)) if match else 0)
    return total if len(buf) >= total else 0


class _BareProtocol(asyncio.Protocol):
    """The ceiling on a Protocol: find the head's end, skip Content-Length bytes, resolve."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[bool] | None = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        total = response_length(buf)
        if not total:
            self.buf = buf
            return
        self.buf = buf[total:]
        if self.waiter is not None:
            self.waiter.set_result(buf[9:10] == b"2")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("lost"))


async def run_limit_protocol(by_port: dict[int, list[bytes]]) -> int:
    """The same ceiling with an asyncio.Protocol instead of streams."""
    loop = asyncio.get_running_loop()

    async def origin(port: int, requests: list[bytes]) -> int:
        transport, protocol = await loop.create_connection(_BareProtocol, HOST, port)
        ok = 0
        for request in requests:
            protocol.waiter = loop.create_future()
            transport.write(request)
            ok += await protocol.waiter
        transport.close()
        return ok

    return sum(await asyncio.gather(*(origin(p, r) for p, r in by_port.items())))


run_limit_protocol.prepare = _prebuilt  # type: ignore[attr-defined]


# label, function, largest size it is measured at (None: all sizes)
PEERS: dict[str, tuple[str, Callable[..., Any], int | None]] = {
    "requests": ("requests.post loop (new connection each)", run_requests_loop, 10_000),
    "httpx-loop": ("httpx.Client loop", run_httpx_loop, 10_000),
    "httpx-async": ("httpx.AsyncClient + gather (sem 100)", run_httpx_async, 10_000),
    "aiohttp": ("aiohttp.ClientSession + gather (sem 100)", run_aiohttp, None),
    "stream-gather": ("flnotify StreamTransport raw, gather (sem 100)", run_stream_gather, None),
    "stream-workers": ("flnotify StreamTransport raw, 100 workers", run_stream_workers, None),
    "limit": ("limit: bare asyncio streams, 1 conn/origin", run_limit, None),
    "limit-protocol": ("bare asyncio.Protocol, 1 conn/origin", run_limit_protocol, None),
}
NOTIFIER_PEERS: dict[str, tuple[str, Callable[..., Any], int | None]] = {
    "notifier-stream": ("flnotify Notifier + StreamTransport", run_notifier_stream, None),
    "notifier-httpx": ("flnotify Notifier + HttpxTransport", run_notifier_httpx, 10_000),
}


def add_notifier_rows(peers: dict[str, tuple[str, Callable[..., Any], int | None]]) -> None:
    """NOTIFIER ROWS: measured when flnotify._notifier.Notifier exists (skipped before)."""
    if notifier_available():
        peers.update(NOTIFIER_PEERS)


def all_peers() -> dict[str, tuple[str, Callable[..., Any], int | None]]:
    peers = dict(PEERS)
    add_notifier_rows(peers)
    return peers


_PEER_IMPORTS = {
    "requests": ["requests"],
    "httpx": ["httpx"],
    "aiohttp": ["aiohttp"],
    "stream": ["flnotify.transports._streams"],
    "notifier": ["flnotify", "flnotify.transports._streams"],
}


def preimport(peer: str) -> None:
    """Import what a peer needs before its clock starts: the time measured is the send."""
    for key, modules in _PEER_IMPORTS.items():
        if key in peer:
            for module in modules:
                importlib.import_module(module)


def worker_main(peer: str, size: int, ports: list[int]) -> None:
    """Run one peer once and print one JSON line: elapsed, delivered, peak RSS."""
    preimport(peer)
    _, fn, _ = all_peers()[peer]
    urls = receiver_urls(size, ports)
    prepare = getattr(fn, "prepare", None)
    arg = prepare(urls) if prepare is not None else urls
    if prepare is not None:
        del urls
    cpu = time.process_time()
    start = time.perf_counter()
    delivered = asyncio.run(fn(arg)) if asyncio.iscoroutinefunction(fn) else fn(arg)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "delivered": delivered, "rss_kb": rss_kb}))


# -- the faulty-receiver scenario --------------------------------------------------------------


def faulty_urls(ports: list[int], hold_ports: list[int], n: int = 1000) -> list[str]:
    """``n`` receivers; every (n / 50)-th is a client that accepts and never answers."""
    step = n // len(hold_ports)
    urls = []
    for i in range(n):
        if i % step == step - 1 and (i // step) < len(hold_ports):
            urls.append(f"http://{HOST}:{hold_ports[i // step]}/fl/{i}/message")
        else:
            urls.append(f"http://{HOST}:{ports[i % len(ports)]}/fl/{i}/message")
    return urls


async def faulty_stream(urls: list[str]) -> int:
    from flnotify import Timeouts

    transport = _stream_transport(timeouts=Timeouts(connect=1.0, read=1.0, write=1.0, pool=10.0))
    async with transport:
        return await _workers(transport, urls)


async def faulty_notifier(urls: list[str]) -> int:
    from flnotify import RetryPolicy, Timeouts

    transport = _stream_transport(timeouts=Timeouts(connect=1.0, read=1.0, write=1.0, pool=10.0))
    return await _run_notifier(_notification(urls), transport, retry=RetryPolicy.no_retries())


async def faulty_aiohttp(urls: list[str]) -> int:
    import aiohttp

    sem = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(sock_connect=1.0, sock_read=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(url: str) -> bool:
            async with sem:
                try:
                    async with session.post(url, data=BODY, headers=HEADERS) as response:
                        await response.read()
                        return 200 <= response.status < 300
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    return False

        return sum(await asyncio.gather(*(one(u) for u in urls)))


FAULTY: dict[str, tuple[str, Callable[[list[str]], Any]]] = {
    "faulty-stream": ("flnotify StreamTransport raw, 100 workers", faulty_stream),
    "faulty-notifier": ("flnotify Notifier + StreamTransport, no retries", faulty_notifier),
    "faulty-aiohttp": ("aiohttp + gather (sem 100), sock_read=1", faulty_aiohttp),
}


def faulty_worker_main(peer: str, ports: list[int], hold_ports: list[int]) -> None:
    preimport(peer)
    _, fn = FAULTY[peer]
    urls = faulty_urls(ports, hold_ports)
    start = time.perf_counter()
    delivered = asyncio.run(fn(urls))
    elapsed = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"elapsed": elapsed, "delivered": delivered, "rss_kb": rss_kb}))


# -- sinks -------------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind((HOST, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_listening(ports: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1.0).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sink port {port} is not listening") from None
                time.sleep(0.05)


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log error;
worker_rlimit_nofile 65536;
events {{ worker_connections 32768; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    client_body_temp_path {tmp}/body;
    client_body_buffer_size 16k;
    server {{
{listens}
        # return discards (reads) the request body, so the connection stays usable
        location / {{ return 202; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_sink(ports: list[int]) -> Iterator[str]:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        raise FileNotFoundError("nginx")
    with tempfile.TemporaryDirectory(prefix="flnotify-bench-nginx-") as tmp:
        listens = "\n".join(f"        listen {HOST}:{p} backlog=4096;" for p in ports)
        conf = Path(tmp, "nginx.conf")
        conf.write_text(NGINX_CONF.format(tmp=tmp, listens=listens))
        proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", tmp, "-e", f"{tmp}/error.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_listening(ports)
            version = subprocess.run(
                [nginx, "-v"], capture_output=True, text=True, check=False
            ).stderr.strip()
            yield f"{version.replace('nginx version: ', '')} (nginx-light), worker_processes 1"
        finally:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_SINK_RESPONSE = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


class _SinkProtocol(asyncio.Protocol):
    """Answers 202 to each complete request (Content-Length bodies), keep-alive."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        answers = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            match = _CONTENT_LENGTH.search(buf, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(buf) < total:
                break
            buf = buf[total:]
            answers += 1
        self.buf = buf
        if answers:
            self.transport.write(_SINK_RESPONSE * answers)


class _HoldProtocol(asyncio.Protocol):
    """Accepts, reads and never answers."""


def serve_main(kind: str, ports: list[int]) -> None:
    factory = _SinkProtocol if kind == "sink" else _HoldProtocol

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(factory, HOST, p, backlog=4096) for p in ports]
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        for server in servers:
            server.close()

    asyncio.run(main())


@contextlib.contextmanager
def python_server(kind: str, ports: list[int]) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--ports", ",".join(map(str, ports))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        wait_listening(ports)
        yield f"pure-Python asyncio sink (Python {platform.python_version()}), 1 process"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def sink(kind: str, ports: list[int]) -> Iterator[str]:
    if kind in ("auto", "nginx"):
        try:
            with nginx_sink(ports) as description:
                yield description
            return
        except FileNotFoundError:
            if kind == "nginx":
                raise
            print("nginx not found: using the pure-Python fallback sink", file=sys.stderr)
    with python_server("sink", ports) as description:
        yield "FALLBACK " + description


# -- orchestration -----------------------------------------------------------------------------


def run_child(args: list[str], timeout: float, script: str = __file__) -> dict[str, Any]:
    """Run ``script`` (a bench script, this one by default) with ``args`` in a fresh process.

    Returns the JSON of its last output line, or ``{"error": ...}``: its last lines of
    stderr when it failed, or that it gave no result within ``timeout`` seconds (a row
    that hangs fails; the others still run).
    """
    try:
        proc = subprocess.run(
            [sys.executable, script, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result in {timeout:g} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for name in ("httptools", "aiohttp", "httpx", "requests"):
        with contextlib.suppress(Exception):
            from importlib import metadata

            versions.append(f"{name} {metadata.version(name)}")
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "libraries": ", ".join(versions),
    }


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


KEY_PEERS = [
    ("requests", "requests"),
    ("httpx-loop", "httpx loop"),
    ("aiohttp", "aiohttp"),
    ("limit", "limit"),
]


def table(size: int, rows: dict[str, dict[str, Any]], labels: dict[str, str]) -> str:
    rates = {p: r["rate"] for p, r in rows.items() if "rate" in r}
    head = (
        "| peer | deliveries/s (median) | "
        + " | ".join(f"x {name}" for _, name in KEY_PEERS)
        + " | client CPU µs/delivery | peak RSS (MB) | runs |"
    )
    sep = "|" + "---|" * (5 + len(KEY_PEERS))
    lines = [f"#### {size:,} receivers", "", head, sep]
    for peer, row in rows.items():
        if "rate" not in row:
            lines.append(
                f"| {labels[peer]} | {row.get('note', 'failed')} |" + " |" * (3 + len(KEY_PEERS))
            )
            continue
        ratios = [
            fmt_ratio(row["rate"] / rates[key]) if key in rates and key != peer else "-"
            for key, _ in KEY_PEERS
        ]
        lines.append(
            f"| {labels[peer]} | {fmt_rate(row['rate'])} | "
            + " | ".join(ratios)
            + f" | {row['cpu_us']:.0f} | {row['rss_mb']:.0f} | {row['runs']} |"
        )
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> None:
    peers = all_peers()
    if args.peers:
        peers = {k: v for k, v in peers.items() if k in args.peers.split(",")}
    labels = {k: v[0] for k, v in peers.items()}
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.huge and 100_000 not in sizes:
        sizes.append(100_000)
    ports = free_ports(ORIGINS)
    hold_ports = free_ports(HOLD_RECEIVERS)
    info = machine()
    load_before = os.getloadavg()
    results: dict[int, dict[str, list[dict[str, Any]]]] = {s: defaultdict(list) for s in sizes}
    faulty: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with sink(args.sink, ports) as sink_description:
        info["sink"] = sink_description
        print(f"sink: {sink_description}", file=sys.stderr)
        for size in sizes:
            names = [p for p, (_, _, cap) in peers.items() if cap is None or size <= cap]
            for rep in range(args.reps):
                order = names[rep % len(names) :] + names[: rep % len(names)]  # alternate
                for peer in order:
                    result = run_child(
                        [
                            "--worker",
                            peer,
                            "--size",
                            str(size),
                            "--ports",
                            ",".join(map(str, ports)),
                        ],
                        timeout=args.child_timeout,
                    )
                    results[size][peer].append(result)
                    shown = (
                        f"{size / result['elapsed']:,.0f}/s rss {result['rss_kb'] / 1024:.0f} MB"
                        f" ok {result['delivered']}"
                        if "elapsed" in result
                        else result["error"]
                    )
                    print(f"  {size:>7,} rep {rep + 1} {peer:<16} {shown}", file=sys.stderr)
        if not args.skip_faulty:
            hold = [p for p in FAULTY if p != "faulty-notifier" or notifier_available()]
            with python_server("hold", hold_ports):
                for rep in range(args.reps):
                    for peer in hold[rep % len(hold) :] + hold[: rep % len(hold)]:
                        result = run_child(
                            [
                                "--faulty",
                                peer,
                                "--ports",
                                ",".join(map(str, ports)),
                                "--hold-ports",
                                ",".join(map(str, hold_ports)),
                            ],
                            timeout=120,
                        )
                        faulty[peer].append(result)
                        print(f"  faulty rep {rep + 1} {peer:<16} {result}", file=sys.stderr)

    load_after = os.getloadavg()
    out = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['python']}, {info['os']}."
        f" Load average (1 min) {load_before[0]:.2f} before the run, {load_after[0]:.2f} after"
        " (the machine is shared: other work may have competed for the 2 cores).",
        "",
        f"Sink: {info['sink']}, {ORIGINS} loopback origins. Libraries: {info['libraries']}.",
        "",
        f"Command: `python bench/fanout.py {' '.join(args.argv)}`".rstrip()
        + f" — {args.reps} repetitions"
        " per row, peers alternating, each run in a fresh subprocess; medians shown.",
        "",
        "Ratios are this row's rate divided by the named peer's rate in the same run. Client CPU is"
        " user+system time of the sending process per delivery (less sensitive to other load"
        " than wall time; the sink's CPU is not included). Peak RSS is the sending process's"
        " `ru_maxrss` (interpreter, imports and the receiver list included).",
        "",
    ]
    skipped = {
        p: cap
        for p, (_, _, cap) in peers.items()
        if cap is not None and any(s > cap for s in sizes)
    }
    if skipped:
        out.append(
            "Not measured above their cap (they take too long): "
            + ", ".join(f"{labels[p]} (≤ {cap:,})" for p, cap in skipped.items())
            + "."
        )
        out.append("")
    if not notifier_available():
        out.append(
            "flnotify's Notifier does not exist yet: its rows are missing (see add_notifier_rows)."
        )
        out.append("")
    for size in sizes:
        rows: dict[str, dict[str, Any]] = {}
        for peer in peers:
            runs = results[size].get(peer)
            if not runs:
                continue
            good = [r for r in runs if "elapsed" in r and r["delivered"] == size]
            if not good:
                bad = runs[0]
                note = bad.get("error") or f"delivered {bad.get('delivered')} of {size}"
                rows[peer] = {"note": f"failed: {note}"[:120]}
                continue
            rows[peer] = {
                "rate": statistics.median(size / r["elapsed"] for r in good),
                "rss_mb": statistics.median(r["rss_kb"] for r in good) / 1024,
                "cpu_us": statistics.median(r["cpu"] / size * 1e6 for r in good),
                "runs": len(good),
            }
        out.append(table(size, rows, labels))
        out.append("")
    if faulty:
        out += [
            "#### Faulty receivers: 1,000 receivers, 50 accept and never answer",
            "",
            "One attempt, 1 s read timeout; each of the 50 silent clients is its own origin."
            " Target: the whole send within 1.5 s.",
            "",
            "| peer | wall time of the send (median, s) | delivered | peak RSS (MB) |",
            "|---|---|---|---|",
        ]
        for peer, runs in faulty.items():
            good = [r for r in runs if "elapsed" in r]
            if not good:
                out.append(f"| {FAULTY[peer][0]} | failed: {runs[0].get('error', '')[:100]} | | |")
                continue
            out.append(
                f"| {FAULTY[peer][0]} | {statistics.median(r['elapsed'] for r in good):.2f} | "
                f"{statistics.median(r['delivered'] for r in good):.0f} | "
                f"{statistics.median(r['rss_kb'] for r in good) / 1024:.0f} |"
            )
        out.append("")
    images = None if args.no_write else charts.IMAGES
    text = charts.charted("\n".join(out), "fanout", "x limit", images)
    print(text)
    if not args.no_write:
        write_docs(text)
        print(f"written to {DOCS.relative_to(ROOT)}", file=sys.stderr)


def write_docs(text: str) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    if DOCS.exists():
        current = DOCS.read_text()
        if BEGIN in current and END in current:
            before, rest = current.split(BEGIN, 1)
            after = rest.split(END, 1)[1]
            DOCS.write_text(before + block + after)
            return
        DOCS.write_text(current.rstrip() + "\n\n" + block + "\n")
        return
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(f"# Benchmarks\n\n## Fan-out (bench/fanout.py)\n\n{block}\n")


def profile(args: argparse.Namespace) -> None:
    """Run one peer in-process under pyinstrument against a fresh sink and print the report."""
    from pyinstrument import Profiler

    ports = free_ports(ORIGINS)
    _, fn, _ = all_peers()[args.profile]
    with sink(args.sink, ports) as description:
        print(f"sink: {description}", file=sys.stderr)
        urls = receiver_urls(args.size, ports)
        prepare = getattr(fn, "prepare", None)
        arg = prepare(urls) if prepare is not None else urls
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler.start()
        start = time.perf_counter()
        delivered = asyncio.run(fn(arg)) if asyncio.iscoroutinefunction(fn) else fn(arg)
        elapsed = time.perf_counter() - start
        profiler.stop()
    print(f"{args.profile}: {delivered} delivered, {args.size / elapsed:,.0f}/s under the profiler")
    print(profiler.output_text(unicode=True, color=False, show_all=args.show_all))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000", help="receiver counts, comma-separated")
    parser.add_argument("--huge", action="store_true", help="also 100,000 receivers")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per row (median)")
    parser.add_argument("--peers", default="", help="only these peers (comma-separated keys)")
    parser.add_argument("--sink", choices=["auto", "nginx", "python"], default="auto")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--skip-faulty", action="store_true", help="skip the faulty-receiver run")
    parser.add_argument("--child-timeout", type=float, default=600.0)
    parser.add_argument("--profile", metavar="PEER", help="profile one peer with pyinstrument")
    parser.add_argument("--size", type=int, default=10_000, help="receivers for --profile")
    parser.add_argument("--show-all", action="store_true", help="pyinstrument: show all frames")
    # internal modes
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--faulty", help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=["sink", "hold"], help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--hold-ports", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    if args.serve:
        serve_main(args.serve, [int(p) for p in args.ports.split(",")])
    elif args.worker:
        worker_main(args.worker, args.size, [int(p) for p in args.ports.split(",")])
    elif args.faulty:
        faulty_worker_main(
            args.faulty,
            [int(p) for p in args.ports.split(",")],
            [int(p) for p in args.hold_ports.split(",")],
        )
    elif args.profile:
        profile(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
