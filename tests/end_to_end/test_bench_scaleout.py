"""bench/scaleout.py's Redis waits: a blocking pop waits as long as it asks for."""

from __future__ import annotations

from helpers.bench import bench_module


def test_the_benchmark_client_never_cuts_a_blocking_pop_short(redis_url: str) -> None:
    """redis-py 8 reads with a 5 s socket timeout by default: the bench's BLPOP waits for
    the Celery workers (60 s, 300 s) ended in a read timeout after any 5 s pause."""
    client = bench_module("scaleout").redis_client(redis_url)
    assert client.connection_pool.connection_kwargs["socket_timeout"] is None
    client.rpush("flnotify-bench-done", "1")
    assert client.blpop(["flnotify-bench-done"], timeout=300) == (b"flnotify-bench-done", b"1")
