"""The operator's outbox command, driven through a parser built with add_arguments."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sqlite3
import uuid
from pathlib import Path

import pytest

import flnotify
import flnotify.errors
from flnotify import Outcome, Receiver
from flnotify._outbox_cli import add_arguments, run
from flnotify.outbox import OutboxState, open_outbox

MODEL = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """``--db FILE`` or ``--url postgresql://...``, holding 1 delivered and 2 failed rows."""
    if request.param == "sqlite":
        where = str(tmp_path / "outbox.db")
        option = ["--db", where]
    else:
        where = request.getfixturevalue("postgres_url")
        option = ["--url", where]
    receivers = [Receiver(uuid.UUID(int=i + 1), f"http://c{i}.test/m") for i in range(3)]
    notification = flnotify.TrainingStartNotification(
        receivers=receivers,
        body=flnotify.GlobalModelBody(global_model_uuid=MODEL),
        training_uuid=MODEL,
    )
    with open_outbox(where, clock=lambda: NOW) as outbox:
        outbox.put(notification, message_ids=["ok", "refused", "busy"])
        claim = outbox.claim(10, lease_seconds=30)
        ok, refused, busy = claim.entries
        error = flnotify.errors.ConnectError(
            "connection refused", url=refused.receiver.message_endpoint
        )
        outbox.record(
            claim,
            [
                flnotify.Delivery(ok.receiver, notification, Outcome.DELIVERED, "ok", 1, 0.1, 202),
                flnotify.Delivery(
                    refused.receiver, notification, Outcome.FAILED, "refused", 3, 2.0, None, error
                ),
                flnotify.Delivery(busy.receiver, notification, Outcome.FAILED, "busy", 3, 9.0, 503),
            ],
            done=True,
        )
    return option


def outbox(*argv: str, clock: float = NOW) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="flnotify outbox")
    add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = run(parser.parse_args(argv), out=out, err=err, clock=lambda: clock)
    return code, out.getvalue(), err.getvalue()


def test_status_counts_by_state_and_failed(target: list[str]) -> None:
    code, out, _ = outbox(*target, "--json", "status")
    assert code == 0
    assert json.loads(out) == {"pending": 0, "claimed": 0, "done": 3, "failed": 2}
    code, out, _ = outbox(*target, "status")
    assert out.split() == ["pending", "0", "claimed", "0", "done", "3", "failed", "2"]


def test_list_shows_the_failed_deliveries_with_their_last_error(target: list[str]) -> None:
    code, out, _ = outbox(*target, "--json", "list")
    assert code == 0
    rows = json.loads(out)
    assert [r["message_id"] for r in rows] == ["refused", "busy"]
    assert rows[0]["error"] == "connection refused"
    assert rows[0]["error_kind"] == "connect"
    assert (rows[1]["status_code"], rows[1]["attempts"]) == (503, 3)
    _, text, _ = outbox(*target, "list")
    assert "refused  http://c1.test/m  attempts 3: connection refused (connect)" in text
    assert "busy  http://c2.test/m  attempts 3: HTTP 503" in text
    _, limited, _ = outbox(*target, "--json", "list", "--limit", "1")
    assert len(json.loads(limited)) == 1


def test_retry_re_drives_failed_deliveries_with_the_same_id(target: list[str]) -> None:
    code, _, err = outbox(*target, "retry")
    assert code == 2
    assert "message ids or --all" in err
    code, out, _ = outbox(*target, "--json", "retry", "busy")
    assert (code, json.loads(out)) == (0, {"retried": 1})
    code, out, _ = outbox(*target, "retry", "--all")
    assert (code, out.strip()) == (0, "1 failed delivery(ies) pending again")
    where = target[1]
    with open_outbox(where) as store:
        entries = {e.message_id: e for e in store.entries()}
    assert entries["busy"].state is OutboxState.PENDING
    assert entries["refused"].state is OutboxState.PENDING
    assert (entries["ok"].state, entries["ok"].outcome) == (OutboxState.DONE, Outcome.DELIVERED)
    _, out, _ = outbox(*target, "--json", "list")
    assert json.loads(out) == []


def test_prune_deletes_done_deliveries_older_than_the_age(target: list[str]) -> None:
    code, out, _ = outbox(*target, "--json", "prune", "--older-than", "1h", clock=NOW + 60)
    assert (code, json.loads(out)) == (0, {"pruned": 0})
    code, out, _ = outbox(*target, "prune", "--older-than", "1h", clock=NOW + 3601)
    assert (code, out.strip()) == (0, "3 done delivery(ies) deleted")


def test_bad_arguments_and_a_bad_database_are_reported(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="flnotify outbox")
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--db", "x", "prune", "--older-than", "soon"])
    with pytest.raises(SystemExit):
        parser.parse_args(["status", "--db", "x", "--url", "postgresql://h/db"])
    code, _, err = outbox("status")
    assert (code, err.strip()) == (
        2,
        "flnotify outbox status: give one of --db PATH or --url postgresql://...",
    )
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 200)
    code, _, err = outbox("--db", str(junk), "status")
    assert code == 2
    assert f"flnotify outbox status: {junk} is not an SQLite database" in err


def test_options_go_before_or_after_the_subcommand(target: list[str]) -> None:
    before = outbox(*target, "--json", "status")
    assert outbox("status", *target, "--json") == before
    assert outbox("--json", "status", *target) == before
    assert before[0] == 0


@pytest.mark.parametrize("command", [["status"], ["list"], ["retry", "--all"]])
def test_a_missing_file_is_an_error_and_is_not_created(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "outbx.db"
    code, out, err = outbox(*command, "--db", str(typo))
    assert (code, out) == (2, "")
    assert f"no outbox at {typo}: no such file" in err
    assert not typo.exists()


def test_a_database_without_an_outbox_is_not_added_to(tmp_path: Path) -> None:
    app = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(app)) as db, db:
        db.execute("CREATE TABLE trainings (id TEXT PRIMARY KEY)")
    before = app.read_bytes()
    for command in (["status"], ["list"]):
        code, _, err = outbox("--db", str(app), *command)
        assert code == 2
        assert f"{app} holds no flnotify outbox (no table flnotify_outbox_meta" in err
    assert app.read_bytes() == before


def test_a_postgres_database_without_an_outbox_is_not_added_to(postgres_url: str) -> None:
    import psycopg

    code, _, err = outbox("status", "--url", postgres_url)
    assert code == 2
    assert "the PostgreSQL database at --url holds no flnotify outbox" in err
    with psycopg.connect(postgres_url) as db:
        found = db.execute("SELECT to_regclass('flnotify_outbox')").fetchone()
    assert found == (None,)


def test_flnotify_outbox_is_a_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flnotify import cli

    open_outbox(str(tmp_path / "o.db")).close()
    assert cli.main(["outbox", "status", "--db", str(tmp_path / "o.db"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document == {"pending": 0, "claimed": 0, "done": 0, "failed": 0}
