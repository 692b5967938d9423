"""PostgresMailbox's batch statements stay linear in their batch under any plan.

Its statements are prepared, so after a few runs PostgreSQL may use a generic plan, made
without the parameters: it guesses every bound array at ten rows. A join of the array
with the table may then read the whole array again for each row of the table it finds:
a batch of 1,000 acknowledgements cost ~100x what 100 cost. These tests force generic
plans and run each statement as the store runs it; no function scan of a bound array
may run more than once. The statements lock what they look up: batches that race for the
same messages still take each answer once, and never wait for each other in a circle.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import pytest

from flnotify.mailbox import PostgresMailbox
from flnotify.mailbox import _postgres as store_sql

BATCH = 40


def _numbered(sql: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """``sql`` with ``$1 ...`` for its ``%(name)s`` / ``%(name)b`` placeholders."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)[sb]", number, sql)
    return text, [params[name] for name in order]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _rescans(url: str, sql: str, params: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """The steps of ``sql``'s generic plan that repeat work per row: (type, alias, rows).

    Any step run more than once per row of the batch, or a scan of a bound array or of a
    CTE that made more than a few rows per row of the batch, in all its runs.
    """
    text, values = _numbered(sql, params)
    with psycopg.connect(url) as conn:  # rolled back: the statement changes nothing
        conn.execute("SET plan_cache_mode = force_generic_plan")
        types = ", ".join(_type(v) for v in values)
        conn.execute(f"PREPARE batch ({types}) AS {text}")
        marks = ", ".join(f"%s::{_type(v)}" for v in values)
        with psycopg.ClientCursor(conn) as cur:  # a utility statement takes no parameters
            cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE batch({marks})", values)
            (plan,) = cur.fetchone() or (None,)
        conn.rollback()
    found = json.loads(plan) if isinstance(plan, str) else plan
    return [
        (node["Node Type"], node.get("Alias", ""), node["Actual Rows"] * node["Actual Loops"])
        for node in _nodes(found[0]["Plan"])
        if node["Actual Loops"] > BATCH
        or (
            node["Node Type"] in {"Function Scan", "CTE Scan"}
            and node["Actual Rows"] * node["Actual Loops"] > 2 * BATCH
        )
    ]


def _type(value: object) -> str:
    if value is None or isinstance(value, float):
        return "double precision"
    if isinstance(value, list):
        first = value[0]
        kind = {uuid.UUID: "uuid", str: "text", int: "integer", float: "double precision"}
        return f"{kind[type(first)]}[]"
    return "text"


Letters = list[tuple[uuid.UUID, str]]


@pytest.fixture
def mailbox(postgres_url: str) -> Iterator[tuple[PostgresMailbox, Letters]]:
    """A mailbox with letters for many clients, the first batch of them offered."""
    with PostgresMailbox(postgres_url) as store:
        letters = [(uuid.uuid4(), f"msg_{i}") for i in range(4 * BATCH)]
        store.post("snd_1", len(letters), b"{}", letters, owner="judge", lease_seconds=60)
        store.fetch_many(dict.fromkeys((c for c, _ in letters[:BATCH]), 1))
        yield store, letters


def _statement(kind: str, store: PostgresMailbox, letters: Letters) -> tuple[str, dict[str, Any]]:
    """A batch statement of the store, with its parameters for a batch of ``letters``."""
    offered, waiting = letters[:BATCH], letters[BATCH : 2 * BATCH]
    if kind == "fetch":
        clients = [c for c, _ in waiting]
        return store_sql._FETCH, {"clients": clients, "limits": [10] * BATCH, "visibility": 30.0}
    ids = [m for _, m in offered]
    if kind == "ack":
        statuses = [200 + i for i in range(BATCH)]
        return store_sql._ACK, {
            "clients": [c for c, _ in offered],
            "ids": ids,
            "statuses": statuses,
        }
    store.ack_many([(c, [(m, 503)]) for c, m in offered])  # answered: a requeue takes them
    delays = [float(i) for i in range(BATCH)]
    return store_sql._REQUEUE, {"owner": "judge", "ids": ids, "delays": delays}


@pytest.mark.parametrize("kind", ["fetch", "ack", "requeue"])
def test_a_batch_is_read_once(
    postgres_url: str, mailbox: tuple[PostgresMailbox, Letters], kind: str
) -> None:
    sql, params = _statement(kind, *mailbox)
    assert _rescans(postgres_url, sql, {"now": None, **params}) == []


def test_racing_acknowledgement_batches_take_each_answer_once(postgres_url: str) -> None:
    """Three app processes acknowledge the same messages at once, in different orders."""
    stores = [PostgresMailbox(postgres_url) for _ in range(3)]
    try:
        for round_no in range(5):
            letters = [(uuid.uuid4(), f"msg_{round_no}_{i}") for i in range(4 * BATCH)]
            stores[0].post(
                f"snd_{round_no}", len(letters), b"{}", letters, owner="judge", lease_seconds=60
            )
            stores[0].fetch_many(dict.fromkeys((c for c, _ in letters), 1))
            orders = [letters, letters[::-1], letters[1::2] + letters[::2]]
            taken = [0] * len(stores)

            threads = [
                threading.Thread(target=_ack, args=(stores[i], order, 200 + i, taken, i))
                for i, order in enumerate(orders)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sum(taken) == len(letters)
        assert stores[0].counts()["answered"] == 5 * 4 * BATCH
    finally:
        for store in stores:
            store.close()


def _ack(store: PostgresMailbox, order: Letters, status: int, taken: list[int], i: int) -> None:
    taken[i] = sum(store.ack_many([(c, [(m, status)]) for c, m in order]))
