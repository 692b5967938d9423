"""bench/scaleout.py's Redis waits: a blocking pop waits as long as it asks for."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _scaleout() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scaleout", ROOT / "bench" / "scaleout.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_client_never_cuts_a_blocking_pop_short(redis_url: str) -> None:
    """redis-py 8 reads with a 5 s socket timeout by default: the bench's BLPOP waits for
    the Celery workers (60 s, 300 s) ended in a read timeout after any 5 s pause."""
    client = _scaleout().redis_client(redis_url)
    assert client.connection_pool.connection_kwargs["socket_timeout"] is None
    client.rpush("flnotify-bench-done", "1")
    assert client.blpop(["flnotify-bench-done"], timeout=300) == (b"flnotify-bench-done", b"1")
