"""Mailbox benchmark: clients behind NAT that long-poll the server instead of being pushed to.

Usage (from the project root, with the bench and test extras installed)::

    python bench/mailbox.py                        # 1,000 clients, 200 latency sends, 3 reps
    python bench/mailbox.py --quick                # small and short (< 1 min), docs left alone
    python bench/mailbox.py --clients 500 --latency-count 100 --reps 5
    python bench/mailbox.py --profile              # where a send to all clients spends its time
    python bench/mailbox.py --no-write             # print the tables, leave docs/ alone
    python bench/mailbox.py --postgres             # a PostgresMailbox (a throwaway server)

Three kinds of process, all on 127.0.0.1:

* the server: uvicorn (one worker, asyncio loop, httptools) serving
  ``MailboxApp(...).asgi_app()`` over an SQLite ``Mailbox`` in a temporary directory, and a
  ``Notifier(mailbox=..., signer=...)`` in the same process, driven by JSON commands on its
  standard input (it sends; it never receives);
* the polling clients: one asyncio process, each client a kept-alive raw HTTP/1.1
  connection that long-polls ``/fetch`` (wait 25 s), verifies and dispatches each message
  with its own ``NotificationRouter`` and acknowledges it with the router's status;
* the push receivers (the baseline): one uvicorn process serving one ``NotificationRouter``
  per receiver (each with the receiver's own secret) on 100 loopback ports; and, for the
  fan-out, the nginx sink of ``bench/fanout.py`` (answers 202, verifies nothing).

Clients run in their own processes so that their CPU is not the server's; they still share
the machine's cores with it. Timestamps of different processes are compared on
``time.perf_counter`` (CLOCK_MONOTONIC, one clock for the whole machine).

Measured:

1. latency of one notification to one client, sent one after another (pull and push
   alternating, each started when the client is waiting: pull when its long poll is open):
   send called -> handler ran (in the client process) -> send returned (ack judged);
2. with N clients holding a long poll open at once: the server's open sockets, RSS and CPU
   while idle (against none), the time and CPU to open the polls, and one send to all N
   (median of ``--reps``), against a push of the same size; with ``--postgres`` also the
   CPU of the database server's processes during the send (SQLite's is the server's own).

The tables go to stdout and into docs/benchmarks.md between the ``mailbox:begin`` /
``mailbox:end`` markers (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import charts  # noqa: E402 - the SVG charts of the tables' ratios
import fanout  # noqa: E402 - the nginx sink, ports and formatting are shared with fanout.py

HOST = fanout.HOST
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- mailbox:begin -->", "<!-- mailbox:end -->"
BEGIN_PG, END_PG = "<!-- mailbox-postgres:begin -->", "<!-- mailbox-postgres:end -->"
SECTION = "## Clients behind NAT (mailbox)"
BASE = "/mailbox"
WAIT = 25.0  # the clients' long poll (the app's default max_wait)
ACK_REQUESTS = False  # clients acknowledge with /ack, as older clients do
PUSH_ORIGINS = 100


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# -- /proc -------------------------------------------------------------------------------------


def thread_cpu(task: int) -> float:
    """CPU seconds of one thread of this process (schedstat: ns resolution)."""
    return int(Path(f"/proc/self/task/{task}/schedstat").read_text().split()[0]) / 1e9


def database_pids(port: int | None) -> list[int]:
    """The processes of the PostgreSQL server listening on ``port``: its postmaster and
    every child (backends, WAL writer, checkpointer, ...); none for SQLite (``None``)."""
    if port is None:
        return []
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stats[int(entry)] = Path(f"/proc/{entry}/stat").read_text()
    masters = []
    for pid in stats:
        line = _cmdline(pid)
        if f" -p {port} " in line and line.split(" ", 1)[0].endswith("/postgres"):
            masters.append(pid)
    ppid = {pid: int(stat.rsplit(")", 1)[1].split()[1]) for pid, stat in stats.items()}
    return masters + [pid for pid, parent in ppid.items() if parent in masters]


def _cmdline(pid: int) -> str:
    try:
        line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return ""
    return line.decode(errors="replace") + " "


def database_cpu(port: int | None) -> float:
    """CPU seconds of the PostgreSQL server's live processes (0 for SQLite)."""
    total = 0.0
    for pid in database_pids(port):
        with contextlib.suppress(OSError):
            total += proc_cpu_ns(pid)
    return total


def proc_cpu_ns(pid: int) -> float:
    """CPU seconds of a process's live threads, from schedstat (ns resolution, not ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_sockets(pid: int) -> int:
    """How many of the process's file descriptors are sockets."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return n


def listener(port: int, *, nodelay: bool) -> socket.socket:
    """A listening TCP socket for uvicorn's ``sockets=``.

    Made with ``IPPROTO_TCP``, asyncio sets ``TCP_NODELAY`` on every accepted connection
    (as when uvicorn binds its own socket in one process). Made as ``socket.socket()`` makes
    it (protocol 0: what ``uvicorn --workers N`` does), asyncio leaves Nagle's algorithm on.
    """
    proto = socket.IPPROTO_TCP if nodelay else 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(4096)
    return sock


# -- the server process ------------------------------------------------------------------------


def load_clients(path: str) -> list[tuple[uuid.UUID, str]]:
    return [(uuid.UUID(c), s) for c, s in json.loads(Path(path).read_text())]


def round_notification(receivers: list[Any], round_no: int) -> Any:
    import flnotify

    return flnotify.TrainingRoundStartNotification(
        receivers=receivers,
        body=flnotify.RoundBody(round=round_no, global_model_uuid=uuid.uuid4()),
        training_uuid=uuid.uuid4(),
    )


class _StoreTimer:
    """Per store method: transactions, time waiting for the connection, time holding it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])

    @contextlib.contextmanager
    def timed(self, name: str, inner: Any) -> Iterator[Any]:
        t0 = time.perf_counter()
        with inner as conn:
            t1 = time.perf_counter()
            yield conn
        t2 = time.perf_counter()
        with self.lock:
            row = self.rows[name]
            row[0] += 1
            row[1] += t1 - t0
            row[2] += t2 - t1

    def take(self) -> dict[str, list[float]]:
        with self.lock:
            rows = dict(self.rows)
            self.rows.clear()
        return rows


def timed_mailbox(path: str, timer: _StoreTimer, **options: Any) -> Any:
    """A Mailbox whose transactions are timed (``--profile`` only: it wraps a private hook)."""
    from flnotify.mailbox import Mailbox

    class TimedMailbox(Mailbox):
        def _transaction(self, *, write: bool = True, light: bool = False) -> Any:
            caller = sys._getframe(1).f_code.co_name
            return timer.timed(caller, super()._transaction(write=write, light=light))

    return TimedMailbox(path, **options)


def server_main(config: str, db: str, profile: bool, nodelay: bool) -> None:
    """uvicorn + MailboxApp in a thread; commands (JSON lines) on stdin, answers on stdout."""
    raise_nofile()
    import uvicorn

    import flnotify
    from flnotify.mailbox import MAILBOX_ENDPOINT, Mailbox, MailboxApp, PostgresMailbox

    clients = load_clients(config)
    by_id = dict(clients)
    signer = flnotify.Signer(lookup=lambda receiver: by_id.get(receiver.id))
    timer = _StoreTimer()
    options: dict[str, Any] = {"ack_deadline": 120.0, "visibility": 30.0}
    if db.startswith("postgresql://"):
        store: Any = PostgresMailbox(db, **options)
    else:
        store = timed_mailbox(db, timer, **options) if profile else Mailbox(db, **options)
    app = MailboxApp(store, signer)
    notifier = flnotify.Notifier(mailbox=store, signer=signer)

    sock = listener(0, nodelay=nodelay)
    config_ = uvicorn.Config(
        app.asgi_app(),
        log_level="warning",
        lifespan="off",
        http="httptools",
        backlog=4096,
        timeout_keep_alive=60,
    )
    server = uvicorn.Server(config_)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(server.serve(sockets=[sock]),), daemon=True
    )
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def open_polls() -> int:
        return int(app._waiting.open)  # private: the bench waits until the polls are open

    def wait_polls(n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while open_polls() < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def send(receivers: list[Any], round_no: int) -> dict[str, Any]:
        notification = round_notification(receivers, round_no)
        cpu = time.process_time()
        called = time.perf_counter()
        report = notifier.send(notification)
        returned = time.perf_counter()
        return {
            "called": called,
            "returned": returned,
            "delivered": len(report.delivered),
            "cpu": time.process_time() - cpu,
        }

    profiler: Any = None
    out = sys.stdout
    print(json.dumps({"port": sock.getsockname()[1], "pid": os.getpid()}), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        answer: Any
        if op == "polls":
            answer = {"open": open_polls()}
        elif op == "wait_polls":
            answer = {"ok": wait_polls(cmd["n"], cmd["timeout"]), "open": open_polls()}
        elif op == "latency":
            # one client polling (client 0) and one push receiver (client 1), alternating
            pull = [flnotify.Receiver(clients[0][0], MAILBOX_ENDPOINT)]
            push = [flnotify.Receiver(clients[1][0], cmd["url"])]
            answer = {"pull": [], "push": []}
            for i in range(cmd["count"]):
                for kind, receivers, round_no in (("pull", pull, 2 * i), ("push", push, 2 * i + 1)):
                    if kind == "pull":
                        wait_polls(1, 30)
                    time.sleep(cmd["gap"])
                    result = send(receivers, round_no)
                    result["round"] = round_no
                    answer[kind].append(result)
        elif op == "send":
            if cmd["kind"] == "pull":
                receivers = [flnotify.Receiver(c, MAILBOX_ENDPOINT) for c, _ in clients[: cmd["n"]]]
            else:
                urls = cmd["urls"]
                receivers = [
                    flnotify.Receiver(c, urls[i % len(urls)].format(i=i))
                    for i, (c, _) in enumerate(clients[: cmd["n"]])
                ]
            answer = send(receivers, cmd["round"])
        elif op == "threads":
            answer = {
                f"{t.name}:{t.native_id}": thread_cpu(t.native_id)
                for t in threading.enumerate()
                if t.native_id is not None
            }
        elif op == "timings":
            answer = timer.take()
        elif op == "profile_start":
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005, async_mode="disabled")
            loop.call_soon_threadsafe(profiler.start)  # the uvicorn loop's thread
            time.sleep(0.05)
            answer = {"ok": True}
        elif op == "profile_stop":
            done = threading.Event()

            def stop(profiler: Any = profiler, done: threading.Event = done) -> None:
                profiler.stop()
                done.set()

            loop.call_soon_threadsafe(stop)
            done.wait(10)
            Path(cmd["path"]).write_text(profiler.output_text(unicode=True, color=False))
            answer = {"ok": True}
        elif op == "quit":
            break
        else:
            answer = {"error": f"unknown op {op}"}
        print(json.dumps(answer), file=out, flush=True)
    server.should_exit = True
    thread.join(10)
    notifier.close()
    store.close()


# -- the polling clients -----------------------------------------------------------------------

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class _Connection:
    """One kept-alive HTTP/1.1 connection to the mailbox app (Content-Length answers only)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {BASE}{path} HTTP/1.1\r\nhost: {HOST}:{self.port}\r\n{head}"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        raw = await self.reader.readuntil(b"\r\n\r\n")
        match = _CONTENT_LENGTH.search(raw)
        data = await self.reader.readexactly(int(match.group(1))) if match else b""
        if b"\r\nconnection: close" in raw.lower():
            self.writer.close()
        return int(raw[9:12]), data


async def pull_clients(clients: list[tuple[uuid.UUID, str]], port: int) -> dict[str, Any]:
    import flnotify
    import flnotify.receiving
    from flnotify.mailbox._wire import Ack, ack_document, fetch_document, parse_answer

    handled: list[tuple[int, int, float]] = []  # client index, round, perf_counter
    errors: dict[str, int] = defaultdict(int)

    async def client(index: int, cid: uuid.UUID, secret: str) -> None:
        signer = flnotify.Signer(secret)
        router = flnotify.receiving.NotificationRouter(secrets=secret)

        async def on_round(note: Any) -> None:
            handled.append((index, note.body.round, time.perf_counter()))

        router.add_handler(flnotify.TrainingRoundStartNotification, on_round)
        conn = _Connection(port)
        carried: list[Ack] = []  # acknowledgements riding on the next fetch

        async def post(path: str, body: bytes) -> tuple[int, bytes]:
            nonce = "req_" + secrets.token_hex(16)
            return await conn.post(path, body, signer.headers(nonce, int(time.time()), body))

        while True:
            try:
                status, data = await post("/fetch", fetch_document(cid, WAIT, 100, carried))
                carried = []
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors[type(exc).__name__] += 1
                conn.writer = None
                await asyncio.sleep(0.5)
                continue
            if status != 200:
                errors[str(status)] += 1
                await asyncio.sleep(1.0)
                continue
            fetched = parse_answer(data, max_messages=100)
            if not fetched.messages:
                continue
            acks = []
            for message in fetched.messages:
                answer = await router.ahandle("POST", list(message.headers.items()), message.body)
                acks.append(Ack(message.id, answer.status))
            if fetched.takes_acks and not ACK_REQUESTS:
                carried = acks  # the next fetch follows at once
                continue
            status, _ = await post("/ack", ack_document(cid, acks))
            if status != 200:
                errors[f"ack {status}"] += 1

    tasks = [asyncio.create_task(client(i, c, s)) for i, (c, s) in enumerate(clients)]
    print(json.dumps({"ready": len(tasks)}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # until told to stop
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"handled": handled, "errors": dict(errors)}


async def push_receivers(
    clients: list[tuple[uuid.UUID, str]], ports: list[int], nodelay: bool
) -> dict[str, Any]:
    """One NotificationRouter per receiver (its own secret), at /fl/{i}/message, on ``ports``."""
    import uvicorn

    import flnotify
    import flnotify.receiving
    from flnotify.receiving import asgi_app

    handled: list[tuple[int, int, float]] = []

    def receiver_app(index: int, secret: str) -> Any:
        router = flnotify.receiving.NotificationRouter(secrets=secret)

        async def on_round(note: Any) -> None:
            handled.append((index, note.body.round, time.perf_counter()))

        router.add_handler(flnotify.TrainingRoundStartNotification, on_round)
        return asgi_app(router)

    apps = [receiver_app(index, secret) for index, (_, secret) in enumerate(clients)]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await apps[int(scope["path"].split("/")[2])](scope, receive, send)

    socks = [listener(port, nodelay=nodelay) for port in ports]
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", lifespan="off", http="httptools", timeout_keep_alive=60
        )
    )
    serving = asyncio.create_task(server.serve(sockets=socks))
    while not server.started:  # noqa: ASYNC110 - uvicorn only has the flag
        await asyncio.sleep(0.01)
    print(json.dumps({"ready": len(apps)}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    server.should_exit = True
    await serving
    return {"handled": handled, "errors": {}}


def client_main(
    kind: str, config: str, count: int, port: int, ports: list[int], nodelay: bool
) -> None:
    raise_nofile()
    clients = load_clients(config)
    if kind == "pull":
        result = asyncio.run(pull_clients(clients[:count], port))
    else:
        result = asyncio.run(push_receivers(clients[:count], ports, nodelay))
    print(json.dumps(result), flush=True)


# -- orchestration -----------------------------------------------------------------------------


class Child:
    """A subprocess of this script speaking JSON lines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self.first = self.read()

    def read(self) -> Any:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.proc.args!r} ended (exit {self.proc.wait()})")
        return json.loads(line)

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ask(self, **cmd: Any) -> Any:
        self.write(json.dumps(cmd))
        return self.read()

    def stop(self) -> Any:
        """Tell a client process to stop; what it recorded."""
        self.write("stop")
        result = self.read()
        self.proc.wait(30)
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.write(json.dumps({"op": "quit"}))
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def child(*args: str) -> Iterator[Child]:
    proc = Child(*args)
    try:
        yield proc
    finally:
        proc.close()


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def latency_run(
    args: argparse.Namespace, config: str, db: str, extra: tuple[str, ...]
) -> tuple[dict[str, dict[str, list[float]]], dict[str, int]]:
    """One server, one polling client, one push receiver; sends alternate pull and push."""
    [push_port] = fanout.free_ports(1)
    with (
        child("--serve", config, "--db", db, *extra) as server,
        child(
            "--client", "pull", config, "--count", "1", "--port", str(server.first["port"]), *extra
        ) as puller,
        child(
            "--client", "push", config, "--count", "2", "--ports", str(push_port), *extra
        ) as pusher,
    ):
        assert server.ask(op="wait_polls", n=1, timeout=30)["ok"]
        sends = server.ask(
            op="latency",
            count=args.latency_count,
            gap=0.02,
            url=f"http://{HOST}:{push_port}/fl/1/message",
        )
        pulled = puller.stop()
        pushed = pusher.stop()
    handled = {r: t for _, r, t in pulled["handled"] + pushed["handled"]}
    rows: dict[str, dict[str, list[float]]] = {}
    for kind in ("pull", "push"):
        good = [s for s in sends[kind] if s["delivered"] == 1 and s["round"] in handled]
        rows[kind] = {
            "handler": [handled[s["round"]] - s["called"] for s in good],
            "returned": [s["returned"] - s["called"] for s in good],
            "after": [s["returned"] - handled[s["round"]] for s in good],
        }
    return rows, {**pulled["errors"], **pushed["errors"]}


def latency(args: argparse.Namespace, config: str, tmp: str) -> str:
    n = args.latency_count
    print(f"latency: {n} sends each, pull and push alternating", file=sys.stderr)
    lines = [
        f"#### Latency of one notification ({n} sends per row, one after another)",
        "",
        "| server sockets | path | send → handler: median | p90 | p99 |"
        " send → send returned: median | p90 | p99 | handler → returned: median | ok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "pull": "mailbox: long poll (wait 25 s), fetch + verify + ack",
        "push": "push: Notifier POST to a loopback uvicorn NotificationRouter",
    }
    errors: dict[str, int] = {}
    runs = [("TCP_NODELAY", ()), ("no TCP_NODELAY (as `uvicorn --workers`)", ("--plain-socket",))]
    if args.quick:
        runs = runs[:1]
    for index, (sockets, extra) in enumerate(runs):
        rows, errs = latency_run(args, config, args.database(f"{tmp}/latency-{index}.db"), extra)
        errors.update(errs)
        for kind, row in rows.items():
            h, r, a = row["handler"], row["returned"], row["after"]
            if not h:
                lines.append(f"| {sockets} | {labels[kind]} | failed |" + " |" * 7)
                continue
            lines.append(
                f"| {sockets} | {labels[kind]} | {ms(statistics.median(h))} ms | {ms(pct(h, 90))}"
                f" | {ms(pct(h, 99))} | {ms(statistics.median(r))} ms | {ms(pct(r, 90))} |"
                f" {ms(pct(r, 99))} | {ms(statistics.median(a))} ms | {len(h)} |"
            )
        if not (rows["pull"]["handler"] and rows["push"]["handler"]):
            continue
        med = {
            key: statistics.median(rows["pull"][key]) / statistics.median(rows["push"][key])
            for key in ("handler", "returned", "after")
        }
        p90 = {
            key: pct(rows["pull"][key], 90) / pct(rows["push"][key], 90)
            for key in ("handler", "returned")
        }
        lines.append(
            f"| {sockets} | **pull / push** | {med['handler']:.1f}x | {p90['handler']:.1f}x | |"
            f" {med['returned']:.1f}x | {p90['returned']:.1f}x | | {med['after']:.1f}x | |"
        )
    if errors:
        lines += ["", f"Client errors: {errors}."]
    return "\n".join(lines)


def scale(args: argparse.Namespace, config: str, tmp: str, sink_ports: list[int]) -> str:
    n = args.clients
    print(f"scale: {n} clients polling at once, {args.reps} reps", file=sys.stderr)
    push_ports = fanout.free_ports(PUSH_ORIGINS)
    window = args.idle_window
    with child("--serve", config, "--db", args.database(f"{tmp}/scale.db")) as server:
        pid = server.pid
        time.sleep(1.0)
        none = {"sockets": proc_sockets(pid), "rss": proc_rss_mb(pid)}
        cpu0 = proc_cpu_ns(pid)
        time.sleep(window)
        none["cpu"] = (proc_cpu_ns(pid) - cpu0) / window
        print(f"  no polls: {none}", file=sys.stderr)

        with child(
            "--client", "push", config, "--count", str(n), "--ports", ",".join(map(str, push_ports))
        ) as pusher:
            cpu0 = proc_cpu_ns(pid)
            start = time.perf_counter()
            with child(
                "--client", "pull", config, "--count", str(n), "--port", str(server.first["port"])
            ) as puller:
                opened = server.ask(op="wait_polls", n=n, timeout=120)
                open_s = time.perf_counter() - start
                open_cpu = proc_cpu_ns(pid) - cpu0
                print(f"  {opened['open']} polls open in {open_s:.2f} s", file=sys.stderr)
                polling = {"sockets": proc_sockets(pid), "rss": proc_rss_mb(pid)}
                # the idle window must end before the first polls expire (WAIT after opening)
                idle = max(0.5, min(window, WAIT - open_s - 2.0))
                threads0 = server.ask(op="threads")
                cpu0 = proc_cpu_ns(pid)
                time.sleep(idle)
                polling["cpu"] = (proc_cpu_ns(pid) - cpu0) / idle
                threads1 = server.ask(op="threads")
                polling["still_open"] = server.ask(op="polls")["open"]
                watcher = (
                    sum(
                        threads1[k] - threads0.get(k, 0.0)
                        for k in threads1
                        if k.startswith("flnotify-mailbox-watch")
                    )
                    / idle
                )
                print(f"  {n} polls: {polling}, watcher {watcher:.4f}", file=sys.stderr)

                kinds = ["pull", "push-router"] + (["push-sink"] if sink_ports else [])
                results: dict[str, list[dict[str, Any]]] = defaultdict(list)
                round_no = 1000
                for rep in range(args.reps):
                    for kind in kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]:
                        round_no += 1
                        server.ask(op="wait_polls", n=n, timeout=60)
                        time.sleep(0.3)
                        client_pid = puller.pid if kind == "pull" else pusher.pid
                        ccpu = proc_cpu_ns(client_pid)
                        dbcpu = database_cpu(args.db_port)
                        if kind == "pull":
                            cmd: dict[str, Any] = {"kind": "pull"}
                        elif kind == "push-router":
                            cmd = {
                                "kind": "push",
                                "urls": [f"http://{HOST}:{p}/fl/{{i}}/message" for p in push_ports],
                            }
                        else:
                            cmd = {
                                "kind": "push",
                                "urls": [f"http://{HOST}:{p}/fl/{{i}}/message" for p in sink_ports],
                            }
                        result = server.ask(op="send", n=n, round=round_no, **cmd)
                        result["client_cpu"] = (
                            proc_cpu_ns(client_pid) - ccpu if kind != "push-sink" else None
                        )
                        result["db_cpu"] = database_cpu(args.db_port) - dbcpu
                        result["elapsed"] = result["returned"] - result["called"]
                        results[kind].append(result)
                        print(
                            f"  rep {rep + 1} {kind:<12} {n / result['elapsed']:,.0f}/s"
                            f" ok {result['delivered']} server cpu {result['cpu']:.2f} s"
                            f" database cpu {result['db_cpu']:.2f} s",
                            file=sys.stderr,
                        )
                pulled = puller.stop()
            pusher.stop()
    lines = [
        f"#### {n:,} clients polling at once (wait {WAIT:.0f} s, one kept-alive connection each)",
        "",
        f"| server process | no open polls | {n:,} open polls | per poll |",
        "|---|---|---|---|",
        f"| open sockets (`/proc/<pid>/fd`) | {none['sockets']} | {polling['sockets']:,} |"
        f" {(polling['sockets'] - none['sockets']) / n:.2f} |",
        f"| RSS (MB) | {none['rss']:.1f} | {polling['rss']:.1f} |"
        f" {(polling['rss'] - none['rss']) * 1024 / n:.1f} KB |",
        f"| CPU while idle (% of one core; {idle:.1f} s window) | {none['cpu'] * 100:.1f} % |"
        f" {polling['cpu'] * 100:.1f} % (mailbox watcher thread: {watcher * 100:.1f} %) | |",
        f"| opening the polls: wall time, server CPU | | {open_s:.2f} s, {open_cpu:.2f} s |"
        f" {open_cpu / n * 1e3:.2f} ms CPU |",
        "",
    ]
    if polling["still_open"] != n:
        lines += [f"Open polls at the end of the idle window: {polling['still_open']} of {n}.", ""]
    labels = {
        "pull": f"mailbox: {n:,} long-polling clients (fetch + verify + ack each)",
        "push-router": f"push: {n:,} NotificationRouter receivers (uvicorn, {PUSH_ORIGINS} ports)",
        "push-sink": f"push: nginx sink of bench/fanout.py ({len(sink_ports)} ports, 202,"
        " no verifying)",
    }
    db_head, db_rule = (
        (" database server CPU per delivery (µs) |", "---|") if args.db_port else ("", "")
    )
    lines += [
        f"#### One send to all {n:,} receivers ({args.reps} reps, median)",
        "",
        "| row | deliveries/s | spread | send → report (s) | x push to routers | server CPU per"
        f" delivery (µs) |{db_head} receiving process CPU per delivery (µs) | ok | runs |",
        "|---|---|---|---|---|---|---|---|---|" + db_rule,
    ]
    base = None
    if results.get("push-router"):
        base = statistics.median(n / r["elapsed"] for r in results["push-router"])
    for kind, runs in results.items():
        good = [r for r in runs if r["delivered"] == n] or runs
        rates = [n / r["elapsed"] for r in good]
        rate = statistics.median(rates)
        client_cpu = [r["client_cpu"] for r in good if r["client_cpu"] is not None]
        client_us = f"{statistics.median(client_cpu) / n * 1e6:.0f}" if client_cpu else "- (nginx)"
        lines.append(
            f"| {labels[kind]} | {fanout.fmt_rate(rate)} | {fanout.fmt_rate(min(rates))}-"
            f"{fanout.fmt_rate(max(rates))} | {statistics.median(r['elapsed'] for r in good):.2f} |"
            f" {fanout.fmt_ratio(rate / base) if base else '-'} |"
            f" {statistics.median(r['cpu'] for r in good) / n * 1e6:.0f} |"
            + (
                f" {statistics.median(r['db_cpu'] for r in good) / n * 1e6:.0f} |"
                if db_head
                else ""
            )
            + f" {client_us} |"
            f" {min(r['delivered'] for r in runs)} | {len(runs)} |"
        )
    if pulled["errors"]:
        lines += ["", f"Polling clients' errors (status or exception: count): {pulled['errors']}."]
    return "\n".join(lines)


def _thread_deltas(before: dict[str, float], after: dict[str, float]) -> str:
    by_name: dict[str, float] = defaultdict(float)
    for key, cpu in after.items():
        name = key.rsplit(":", 1)[0]
        name = "asyncio.to_thread workers" if name.startswith("asyncio_") else name
        by_name[name] += cpu - before.get(key, 0.0)
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]))


def profile(args: argparse.Namespace, config: str, tmp: str) -> str:
    """A send to all clients with the store's transactions timed; one with the loop profiled."""
    n = args.clients
    out = [f"#### Where one send to {n:,} polling clients spends its time", ""]
    dirs = [("the local disk", tmp)]
    if Path("/dev/shm").is_dir():
        dirs.append(("tmpfs (/dev/shm: fsync costs nothing)", tempfile.mkdtemp(dir="/dev/shm")))
    for label, where in dirs:
        with child("--serve", config, "--db", f"{where}/profile.db", "--profile") as server:
            port = str(server.first["port"])
            with child("--client", "pull", config, "--count", str(n), "--port", port) as puller:
                assert server.ask(op="wait_polls", n=n, timeout=120)["ok"]
                time.sleep(0.5)
                server.ask(op="timings")
                threads0 = server.ask(op="threads")
                result = server.ask(op="send", kind="pull", n=n, round=1)
                during = server.ask(op="timings")
                threads1 = server.ask(op="threads")
                server.ask(op="wait_polls", n=n, timeout=60)
                reopen = server.ask(op="timings")
                time.sleep(0.5)
                text = Path(tmp, f"profile-{len(out)}.txt")
                server.ask(op="profile_start")
                profiled = server.ask(op="send", kind="pull", n=n, round=2)
                server.ask(op="profile_stop", path=str(text))
                server.ask(op="wait_polls", n=n, timeout=60)
                puller.stop()
        elapsed = result["returned"] - result["called"]
        slow = profiled["returned"] - profiled["called"]
        print(
            f"  {label}: {n / elapsed:,.0f}/s; under pyinstrument {n / slow:,.0f}/s, profile of"
            f" the uvicorn loop's thread in {text}",
            file=sys.stderr,
        )
        held = sum(row[2] for row in during.values())
        out += [
            f"DB on {label}: send → report {elapsed:.2f} s ({n / elapsed:,.0f} deliveries/s)."
            f" The store's one SQLite connection was held {held:.2f} s of those"
            f" ({held / elapsed:.0%}). Server CPU by thread during the send (s):"
            f" {_thread_deltas(threads0, threads1)}.",
            "",
            "| store method | transactions during the send | per delivery | waiting for the"
            " connection (s, summed over threads) | holding it (s) | held per transaction (ms)"
            " | then, polls reopening: transactions, held (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in sorted(set(during) | set(reopen), key=lambda k: -during.get(k, [0, 0, 0])[2]):
            count, wait_s, held_s = during.get(name, [0, 0.0, 0.0])
            again = reopen.get(name, [0, 0.0, 0.0])
            per = f"{held_s / count * 1e3:.2f}" if count else "-"
            out.append(
                f"| `{name}` | {count:,.0f} | {count / n:.2f} | {wait_s:.2f} | {held_s:.2f} |"
                f" {per} | {again[0]:,.0f}, {again[2]:.2f} |"
            )
        out += [
            f"| all | {sum(r[0] for r in during.values()):,.0f} | | "
            f"{sum(r[1] for r in during.values()):.2f} | {held:.2f} | |"
            f" {sum(r[0] for r in reopen.values()):,.0f},"
            f" {sum(r[2] for r in reopen.values()):.2f} |",
            "",
        ]
        print(text.read_text()[:5000], file=sys.stderr)
    return "\n".join(out)


def measure(args: argparse.Namespace) -> None:
    args.db_port = None
    if not args.postgres:
        args.database = lambda path: path
        _measure(args)
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.pgserver import fresh_database, postgres_server

    with postgres_server(durable=True) as pg:
        args.database = lambda _: fresh_database(pg)
        args.db_port = int(pg.rsplit(":", 1)[1].split("/", 1)[0])
        _measure(args)


def _measure(args: argparse.Namespace) -> None:
    raise_nofile()
    info = fanout.machine()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="flnotify-bench-mailbox-", dir=args.db_dir) as tmp:
        config = str(Path(tmp, "clients.json"))
        clients = [(str(uuid.uuid4()), _secret()) for _ in range(max(args.clients, 2))]
        Path(config).write_text(json.dumps(clients))
        if args.profile:
            print(profile(args, config, tmp))
            return
        parts = []
        if args.latency_count:
            text = latency(args, config, tmp)
            parts.append(text)
            print(text + "\n")
        if args.clients:
            sink_ports = fanout.free_ports(fanout.ORIGINS)
            with contextlib.ExitStack() as stack:
                try:
                    info["sink"] = stack.enter_context(fanout.nginx_sink(sink_ports))
                except FileNotFoundError:
                    sink_ports = []
                    info["sink"] = "none (nginx not found)"
                text = scale(args, config, tmp, sink_ports)
            parts.append(text)
            print(text + "\n")
    load_after = os.getloadavg()
    import uvicorn

    head = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['python']}, {info['os']}."
        f" Load average (1 min) {load_before[0]:.2f} before the run, {load_after[0]:.2f} after"
        " (the machine is shared: other work may have competed for the 2 cores).",
        "",
        f"Server: uvicorn {uvicorn.__version__} (1 worker, asyncio loop, httptools), MailboxApp"
        " and a Notifier in one process, "
        + (
            "PostgresMailbox on a local PostgreSQL (loopback TCP, fsync on; posts and leases"
            " synchronous_commit on, fetches, acks, nonces and outcomes off)"
            if args.postgres
            else "SQLite Mailbox on the local disk (WAL; posts and leases synchronous=FULL,"
            " fetches, acks, nonces and outcomes NORMAL)"
        )
        + (
            "; clients acknowledge with /ack"
            if ACK_REQUESTS
            else "; clients carry acknowledgements in their next fetch"
        )
        + ", default"
        " `poll_interval` 0.5 s. Clients and receivers in their own"
        f" processes. Push sink: {info.get('sink', '-')}. Libraries: {info['libraries']}.",
        "",
        f"Command: `{' '.join(['python bench/mailbox.py', *args.argv])}` (--clients"
        f" {args.clients} --latency-count {args.latency_count} --reps {args.reps}).",
        "",
    ]
    text = "\n".join(head + [p + "\n" for p in parts]).rstrip() + "\n"
    if args.write:  # charts only with the tables they are drawn from (not with --no-write)
        # the PostgreSQL run's charts have files of their own (not the SQLite run's names)
        name = "mailbox-postgres" if args.postgres else "mailbox"
        text = charts.charted(text, name, "x push to routers")
        write_docs(text, postgres=args.postgres)
        print(f"written to {DOCS.relative_to(ROOT)}", file=sys.stderr)


def _secret() -> str:
    import flnotify

    return str(flnotify.generate_secret())


def write_docs(text: str, *, postgres: bool = False) -> None:
    """Replace the text between the markers; add the section at the end the first time."""
    begin, end = (BEGIN_PG, END_PG) if postgres else (BEGIN, END)
    block = f"{begin}\n{text}{end}"
    current = DOCS.read_text()
    if begin in current and end in current:
        before, rest = current.split(begin, 1)
        DOCS.write_text(before + block + rest.split(end, 1)[1])
        return
    if postgres and END in current:  # after the SQLite run's tables
        before, rest = current.split(END, 1)
        DOCS.write_text(f"{before}{END}\n\n{block}{rest}")
        return
    DOCS.write_text(current.rstrip() + f"\n\n{SECTION}\n\n{block}\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000, help="clients polling at once")
    parser.add_argument("--latency-count", type=int, default=200, help="sends per latency row")
    parser.add_argument("--reps", type=int, default=3, help="sends to all clients per row")
    parser.add_argument("--idle-window", type=float, default=5.0, help="seconds of idle CPU")
    parser.add_argument("--quick", action="store_true", help="100 clients, 30 sends, 1 rep")
    parser.add_argument("--plain-socket", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db-dir", help="where the SQLite file goes (default: a temporary dir)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--profile", action="store_true", help="time the store, profile the loop")
    parser.add_argument("--postgres", action="store_true", help="a PostgresMailbox, not SQLite")
    parser.add_argument(
        "--ack-requests", action="store_true", help="clients acknowledge with /ack (older clients)"
    )
    # internal modes
    parser.add_argument("--serve", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    global ACK_REQUESTS
    ACK_REQUESTS = args.ack_requests or os.environ.get("FLNOTIFY_BENCH_ACK_REQUESTS") == "1"
    if args.ack_requests:
        os.environ["FLNOTIFY_BENCH_ACK_REQUESTS"] = "1"  # for the client processes
    if args.serve:
        server_main(args.serve, args.db, args.profile, not args.plain_socket)
    elif args.client:
        ports = [int(p) for p in args.ports.split(",") if p]
        client_main(
            args.client[0], args.client[1], args.count, args.port, ports, not args.plain_socket
        )
    else:
        if args.quick:
            args.clients = min(args.clients, 100)
            args.latency_count = min(args.latency_count, 30)
            args.reps = 1
            args.idle_window = min(args.idle_window, 2.0)
        args.write = not (args.quick or args.no_write or args.profile)
        measure(args)


if __name__ == "__main__":
    main()
