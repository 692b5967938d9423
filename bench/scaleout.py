"""Scale-out benchmark: the in-process Notifier against the outbox stores and Celery workers.

Usage (from the project root, with the bench and test extras installed)::

    python bench/scaleout.py                       # 1,000 and 10,000 receivers, 3 repetitions
    python bench/scaleout.py --sizes 10000 --reps 5 --rows notifier-fast,outbox-sqlite
    python bench/scaleout.py --no-write            # print the table, leave docs/ alone
    python bench/scaleout.py --profile outbox-sqlite --size 10000   # pyinstrument report

One run starts everything it measures against on 127.0.0.1: the nginx sink of
``bench/fanout.py`` (100 loopback origins answering 202), a PostgreSQL server (Debian's
``postgresql``, fsync on, from a temporary directory), and redis-server as the Celery
broker. Each measurement runs in fresh processes; rows alternate within each repetition
and the table reports medians and ratios to in-process Notifier + StreamTransport.

Rows: the Notifier with its default transport and with ``StreamTransport``; the SQLite and
PostgreSQL outbox (``put`` + ``OutboxDispatcher.run``, both timed); ``CeleryDelivery`` with
1 and 2 prefork worker processes (timed from the first ``enqueue`` to the last task's end);
and the original's way on Celery (one task per receiver, ``requests.post``), the baseline.
A plain ``httpx.Client`` loop is measured too, the reference of the default transport, and
the bare-asyncio ceiling of ``bench/fanout.py`` (pre-built requests, one connection per
origin), which every row is also compared against under its table.

The table goes to stdout and into docs/benchmarks.md between the ``scaleout:begin`` /
``scaleout:end`` markers (appended as a section at the end of the file on the first run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import charts  # noqa: E402 - the SVG charts of the tables' ratios
import fanout  # noqa: E402 - the sink, the ports and the payload are shared with fanout.py

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- scaleout:begin -->", "<!-- scaleout:end -->"
SECTION = "## Scaling out (bench/scaleout.py)"
CONCURRENCY = 100
DONE_KEY = "flnotify-bench-done"
READY_KEY = "flnotify-bench-ready"


# -- the Celery app (imported by the worker processes as ``scaleout``) -------------------------


@functools.cache
def redis_client(url: str) -> Any:
    """This process's client of the benchmark's Redis.

    Its reads wait as long as a blocking pop asks: redis-py 8 gives up reading after 5 s
    by default (``socket_timeout``), which ended the 60 s and 300 s ``BLPOP`` waits below
    with a read timeout whenever tasks took a 5 s pause (the task-per-receiver row on a
    loaded machine, every time).
    """
    import redis

    return redis.Redis.from_url(url, socket_timeout=None)


def make_app() -> Any:
    """The benchmark's Celery app; the worker builds the same from the environment."""
    from celery import Celery
    from celery.signals import task_postrun, worker_ready

    import flnotify
    from flnotify.contrib.celery import CeleryDelivery
    from flnotify.transports import StreamTransport

    broker = os.environ["FLNOTIFY_BENCH_REDIS"]
    app = Celery("flnotify-bench", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=int(os.environ.get("FLNOTIFY_BENCH_PREFETCH", "4")),
        broker_connection_retry_on_startup=True,
    )
    chunk = int(os.environ.get("FLNOTIFY_BENCH_CHUNK", "0")) or None
    options: dict[str, Any] = {} if chunk is None else {"chunk_size": chunk}
    delivery = CeleryDelivery(
        app,
        transport_factory=StreamTransport,
        retry=flnotify.RetryPolicy.no_retries(),
        **options,
    )

    @app.task(name="bench.original", serializer="json", acks_late=True)
    def original(url: str) -> bool:
        import requests

        response = requests.post(url, json=fanout.PAYLOAD, timeout=10)
        return bool(200 <= response.status_code < 300)

    @task_postrun.connect(weak=False)
    def done(sender: Any = None, **_: Any) -> None:
        redis_client(broker).rpush(DONE_KEY, "1")

    @worker_ready.connect(weak=False)
    def ready(**_: Any) -> None:
        redis_client(broker).rpush(READY_KEY, "1")

    app.flnotify_delivery = delivery
    app.flnotify_original = original
    return app


if os.environ.get("FLNOTIFY_BENCH_WORKER"):
    app = make_app()


@contextlib.contextmanager
def celery_worker(redis_url: str, processes: int, chunk: int) -> Iterator[None]:
    """Prefork worker processes, started (and ready) before the clock starts."""
    client = redis_client(redis_url)
    client.flushall()
    env = {
        **os.environ,
        "FLNOTIFY_BENCH_WORKER": "1",
        "FLNOTIFY_BENCH_REDIS": redis_url,
        "FLNOTIFY_BENCH_CHUNK": str(chunk),
    }
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the worker
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "scaleout:app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(processes),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,  # a file: a pipe nobody reads would stop a worker that logs much
    )
    try:
        if client.blpop([READY_KEY], timeout=60) is None:
            raise RuntimeError("the Celery worker did not get ready in 60 s")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- rows (each runs in a fresh child process) ---------------------------------------------------


def _notification(urls: list[str]) -> Any:
    return fanout._notification(urls)


async def row_notifier_default(urls: list[str], env: dict[str, str]) -> int:
    import flnotify

    notification = _notification(urls)
    start = time.perf_counter()
    async with flnotify.Notifier(concurrency=CONCURRENCY) as notifier:
        report = await notifier.asend(notification)
    env["elapsed"] = str(time.perf_counter() - start)
    return len(report.delivered)


async def row_notifier_fast(urls: list[str], env: dict[str, str]) -> int:
    import flnotify
    from flnotify.transports import StreamTransport

    notification = _notification(urls)
    start = time.perf_counter()
    async with flnotify.Notifier(transport=StreamTransport(), concurrency=CONCURRENCY) as notifier:
        report = await notifier.asend(notification)
    env["elapsed"] = str(time.perf_counter() - start)
    return len(report.delivered)


async def row_limit(urls: list[str], env: dict[str, str]) -> int:
    by_port = fanout._prebuilt(urls)  # the requests are built before the clock starts
    start = time.perf_counter()
    ok = await fanout.run_limit(by_port)
    env["elapsed"] = str(time.perf_counter() - start)
    return int(ok)


def row_httpx_loop(urls: list[str], env: dict[str, str]) -> int:
    import httpx  # noqa: F401 - imported before the clock

    start = time.perf_counter()
    ok = fanout.run_httpx_loop(urls)
    env["elapsed"] = str(time.perf_counter() - start)
    return ok


def _outbox_row(store: Any, urls: list[str], env: dict[str, str]) -> int:
    import flnotify
    from flnotify.outbox import OutboxDispatcher, OutboxState
    from flnotify.transports import StreamTransport

    notification = _notification(urls)
    batch = int(env.get("batch") or 1000)
    with store, flnotify.Notifier(transport=StreamTransport(), concurrency=CONCURRENCY) as notifier:
        dispatcher = OutboxDispatcher(store, notifier, batch_size=batch)
        start = time.perf_counter()
        store.put(notification)
        dispatcher.run()
        env["elapsed"] = str(time.perf_counter() - start)
        done = store.counts()[OutboxState.DONE]
        delivered = sum(e.outcome is flnotify.Outcome.DELIVERED for e in store.entries())
    return min(done, delivered)


def row_outbox_sqlite(urls: list[str], env: dict[str, str]) -> int:
    from flnotify.outbox import Outbox

    with tempfile.TemporaryDirectory(prefix="flnotify-bench-") as tmp:
        return _outbox_row(Outbox(Path(tmp) / "outbox.db"), urls, env)


def row_outbox_postgres(urls: list[str], env: dict[str, str]) -> int:
    from flnotify.outbox import PostgresOutbox
    from helpers.pgserver import fresh_database

    return _outbox_row(PostgresOutbox(fresh_database(env["pg"])), urls, env)


def _celery_row(urls: list[str], env: dict[str, str], *, original: bool) -> int:
    os.environ["FLNOTIFY_BENCH_REDIS"] = env["redis"]
    os.environ["FLNOTIFY_BENCH_CHUNK"] = env.get("chunk", "0")
    app = make_app()
    client = redis_client(env["redis"])
    notification = _notification(urls)
    start = time.perf_counter()
    if original:
        for url in urls:
            app.flnotify_original.apply_async(args=(url,))
        tasks = len(urls)
    else:
        tasks = len(app.flnotify_delivery.enqueue(notification).results)
    for _ in range(tasks):
        if client.blpop([DONE_KEY], timeout=300) is None:
            raise RuntimeError("tasks did not finish in 300 s")
    env["elapsed"] = str(time.perf_counter() - start)
    return len(urls)  # every task ran; the sink answers 202 to each


def row_celery(urls: list[str], env: dict[str, str]) -> int:
    return _celery_row(urls, env, original=False)


def row_celery_original(urls: list[str], env: dict[str, str]) -> int:
    return _celery_row(urls, env, original=True)


# key: (label, function, worker processes or None, largest size or None)
ROWS: dict[str, tuple[str, Callable[..., Any], int | None, int | None]] = {
    "limit": (
        "ceiling: bare asyncio streams, 1 conn/origin (bench/fanout.py)",
        row_limit,
        None,
        None,
    ),
    "notifier-fast": ("in-process Notifier + StreamTransport", row_notifier_fast, None, None),
    "notifier-default": (
        "in-process Notifier, default transport",
        row_notifier_default,
        None,
        None,
    ),
    "httpx-loop": ("plain httpx.Client loop (reference)", row_httpx_loop, None, 1000),
    "outbox-sqlite": ("SQLite outbox (put + dispatch)", row_outbox_sqlite, None, None),
    "outbox-postgres": ("PostgreSQL outbox (put + dispatch)", row_outbox_postgres, None, None),
    "celery-1": ("Celery, 1 worker process", row_celery, 1, None),
    "celery-2": ("Celery, 2 worker processes", row_celery, 2, None),
    "celery-original": (
        "original's way on Celery: task per receiver, requests.post, 2 processes",
        row_celery_original,
        2,
        1000,
    ),
}
BASE = "notifier-fast"
CEILING = "limit"


def child_main(row: str, size: int, ports: list[int], env: dict[str, str]) -> None:
    if row == "notifier-default":
        sys.modules["httptools"] = None  # type: ignore[assignment]  # what a plain install has
    _, fn, _, _ = ROWS[row]
    urls = fanout.receiver_urls(size, ports)
    run = asyncio.run(fn(urls, env)) if asyncio.iscoroutinefunction(fn) else None
    delivered = run if run is not None else fn(urls, env)
    print(json.dumps({"elapsed": float(env["elapsed"]), "delivered": delivered}))


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    return fanout.run_child(args, timeout, __file__)


# -- services -------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    import redis

    port = fanout.free_ports(1)[0]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        fanout.wait_listening([port])
        with redis.Redis.from_url(url) as client:
            client.ping()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


# -- orchestration -------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> None:
    from helpers.pgserver import postgres_server

    rows = dict(ROWS)
    if args.rows:
        rows = {k: v for k, v in rows.items() if k in args.rows.split(",")}
    sizes = [int(s) for s in args.sizes.split(",")]
    ports = fanout.free_ports(fanout.ORIGINS)
    info = fanout.machine()
    load_before = os.getloadavg()
    results: dict[int, dict[str, list[dict[str, Any]]]] = {s: defaultdict(list) for s in sizes}
    with (
        fanout.sink(args.sink, ports) as sink_description,
        postgres_server(durable=True) as pg,
        redis_server() as redis_url,
    ):
        env = {"pg": pg, "redis": redis_url, "chunk": str(args.chunk), "batch": str(args.batch)}
        print(f"sink: {sink_description}", file=sys.stderr)
        for size in sizes:
            names = [k for k, (_, _, _, cap) in rows.items() if cap is None or size <= cap]
            for rep in range(args.reps):
                order = names[rep % len(names) :] + names[: rep % len(names)]  # alternate
                for row in order:
                    processes = rows[row][2]
                    child = [
                        "--child",
                        row,
                        "--size",
                        str(size),
                        "--ports",
                        ",".join(map(str, ports)),
                        "--env",
                        json.dumps(env),
                    ]
                    worker = (
                        celery_worker(redis_url, processes, args.chunk)
                        if processes is not None
                        else contextlib.nullcontext()
                    )
                    with worker:
                        result = run_child(child, timeout=args.child_timeout)
                    results[size][row].append(result)
                    shown = (
                        f"{size / result['elapsed']:,.0f}/s ok {result['delivered']}"
                        if "elapsed" in result
                        else result["error"]
                    )
                    print(f"  {size:>7,} rep {rep + 1} {row:<18} {shown}", file=sys.stderr)
    load_after = os.getloadavg()
    text = report(args, rows, sizes, results, info, sink_description, load_before, load_after)
    images = None if args.no_write else charts.IMAGES
    text = charts.charted(f"{text}\n{NOTES}\n", "scaleout", "x in-process fast", images)
    print(text)
    if not args.no_write:
        write_docs(text)
        print(f"written to {DOCS.relative_to(ROOT)}", file=sys.stderr)


def report(
    args: argparse.Namespace,
    rows: dict[str, tuple[str, Callable[..., Any], int | None, int | None]],
    sizes: list[int],
    results: dict[int, dict[str, list[dict[str, Any]]]],
    info: dict[str, str],
    sink_description: str,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    out = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['python']}, {info['os']}."
        f" Load average (1 min) {load_before[0]:.2f} before the run, {load_after[0]:.2f} after"
        " (the machine is shared: other work may have competed for the 2 cores).",
        "",
        f"Sink: {sink_description}, {fanout.ORIGINS} loopback origins. PostgreSQL from Debian's"
        " `postgresql` (fsync on, loopback TCP), redis-server as the Celery broker.",
        "",
        f"Command: `python bench/scaleout.py {' '.join(args.argv)}`".rstrip()
        + f" — {args.reps} repetitions per row, rows alternating, each in fresh processes;"
        " medians shown, with the spread (lowest-highest rate) of the repetitions.",
        "",
        f"Settings: Notifier concurrency {CONCURRENCY}; outbox `batch_size` {args.batch};"
        f" Celery `chunk_size` {args.chunk or 'default'}, StreamTransport on the workers,"
        " no retries, prefork pool, prefetch 4. Ratios are to the in-process Notifier +"
        " StreamTransport of the same size in the same run.",
        "",
    ]
    capped = {k: cap for k, (_, _, _, cap) in rows.items() if cap is not None}
    if capped:
        out.append(
            "Measured up to their cap only (they take too long): "
            + ", ".join(f"{rows[k][0]} (≤ {cap:,})" for k, cap in capped.items())
            + "."
        )
        out.append("")
    for size in sizes:
        lines = [
            f"#### {size:,} receivers",
            "",
            "| row | deliveries/s (median) | spread | x in-process fast | runs |",
            "|---|---|---|---|---|",
        ]
        rates: dict[str, list[float]] = {}
        for row in rows:
            runs = results[size].get(row)
            if not runs:
                continue
            good = [r for r in runs if "elapsed" in r and r["delivered"] == size]
            if not good:
                bad = runs[0]
                note = bad.get("error") or f"delivered {bad.get('delivered')} of {size}"
                lines.append(f"| {rows[row][0]} | failed: {note[:100]} | | | |")
                continue
            rates[row] = [size / r["elapsed"] for r in good]
        base = statistics.median(rates[BASE]) if BASE in rates else None
        for row, values in rates.items():
            median = statistics.median(values)
            ratio = "-" if base is None else f"{median / base:.2f}x"
            lines.append(
                f"| {rows[row][0]} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} |"
                f" {ratio} | {len(values)} |"
            )
        if CEILING in rates:
            ceiling = statistics.median(rates[CEILING])
            against = ", ".join(
                f"{rows[row][0]} {statistics.median(values) / ceiling:.2f}x"
                for row, values in rates.items()
                if row != CEILING
            )
            lines += ["", f"Against the bare-asyncio ceiling of the same run: {against}."]
        out += [*lines, ""]
    return "\n".join(out)


NOTES = """\
What the outbox rows cost, and what limits them (one dispatcher, 10,000 receivers, batch
1,000, on the same sink, the store calls timed with their thread's CPU):

- The serial start: `put` (SQLite ~60 ms: ~11 ms building the rows in Python, ~40 ms the
  INSERT of 10,000 rows with their indexes, one `FULL` commit; PostgreSQL ~100 ms, of which
  the per-row foreign-key check of `batch_id` is ~35 ms), then the first claim (~6 ms,
  ~15 ms) before the first POST. The in-process Notifier starts POSTing at once.
- A claim writes no delivery row (schema 4): one claim row per run of rows it takes.
  SQLite, per claim of 1,000: the take ~0.3 ms (it was ~3.8 ms when it marked each row),
  reading the rows as one JSON value ~1.2 ms, parsing ~0.8 ms, building the entries
  ~3.3 ms (Python, holding the GIL). Per outcome batch of 500: one UPDATE ~3 ms (~1.6 ms
  of it the writing of the rows), committed at `NORMAL`. PostgreSQL, per claim of 1,000:
  ~15 ms (it was ~23 ms), a few statements under an advisory lock; per outcome batch of
  500 ~10 ms, on its own connection, with `synchronous_commit` off.
- Timeline: the claims are taken ahead and the sends follow each other without a gap;
  what the outbox adds is CPU on the same 2 cores: ~200 ms of its store calls per 10,000
  deliveries on SQLite (put ~55, claims ~75, outcomes ~75), and the database server's
  work on PostgreSQL. The Notifier's run alone keeps both cores busy (its process and
  nginx), so each send of 1,000 takes ~1.5x the Notifier's time for 1,000.

What was changed after measuring (earlier): one statement per batch everywhere (a step per
row made the database thread queue for the GIL behind the loop once per row); the outcome
join driven by the message_id index; nested loops off on the PostgreSQL connections;
claims taken ahead and sent as soon as the previous claim's POSTs end; a plain `Receiver`
no longer pays the runtime Protocol check; the size of each send kept with its batch and
read with the claim; PostgreSQL outcomes on a second connection; SQLite claims, leases and
outcomes without callbacks committed at `NORMAL`. Then (this run's code): claims as runs
of rows (schema 4); PostgreSQL outcomes found by the claim's seq range, without JIT, and
with `synchronous_commit` off where SQLite commits at `NORMAL`; a claim's entries built
with every name bound once. Celery: chunks of 1000 by default and the fast lane on a
task's first execution (see below).

Not done: as the outbox is built for, a second dispatcher process on another core or
host."""


def write_docs(text: str) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if BEGIN in current and END in current:
        before, rest = current.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        DOCS.write_text(before + block + after)
        return
    DOCS.write_text(current.rstrip() + f"\n\n{SECTION}\n\n{block}\n")


def profile(args: argparse.Namespace) -> None:
    """Run one in-process row under pyinstrument against a fresh sink and print the report."""
    from pyinstrument import Profiler

    from helpers.pgserver import postgres_server

    ports = fanout.free_ports(fanout.ORIGINS)
    _, fn, processes, _ = ROWS[args.profile]
    if processes is not None:
        raise SystemExit("profile the Celery rows in their workers instead")
    with fanout.sink(args.sink, ports), postgres_server(durable=True) as pg:
        env = {"pg": pg, "batch": str(args.batch)}
        urls = fanout.receiver_urls(args.size, ports)
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler.start()
        delivered = asyncio.run(fn(urls, env)) if asyncio.iscoroutinefunction(fn) else fn(urls, env)
        profiler.stop()
    print(f"{args.profile}: {delivered} delivered, {args.size / float(env['elapsed']):,.0f}/s")
    print(profiler.output_text(unicode=True, color=False, show_all=args.show_all))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000", help="receiver counts, comma-separated")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per row (median)")
    parser.add_argument("--rows", default="", help="only these rows (comma-separated keys)")
    parser.add_argument("--chunk", type=int, default=0, help="Celery chunk_size (0: default)")
    parser.add_argument("--batch", type=int, default=1000, help="outbox batch_size")
    parser.add_argument("--sink", choices=["auto", "nginx", "python"], default="auto")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--child-timeout", type=float, default=600.0)
    parser.add_argument("--profile", metavar="ROW", help="profile one in-process row")
    parser.add_argument("--size", type=int, default=10_000, help="receivers for --profile")
    parser.add_argument("--show-all", action="store_true", help="pyinstrument: show all frames")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--env", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    if args.child:
        env = json.loads(args.env)
        child_main(args.child, args.size, [int(p) for p in args.ports.split(",")], env)
    elif args.profile:
        profile(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
