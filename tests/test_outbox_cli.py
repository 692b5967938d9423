"""The operator's outbox command, driven through a parser built with add_arguments."""

from __future__ import annotations

import argparse
import io
import json
import uuid
from pathlib import Path

import pytest

import flnotify
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
        error = flnotify.ConnectError("connection refused", url=refused.receiver.message_endpoint)
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
        parser.parse_args(["status"])  # --db or --url is required
    with pytest.raises(SystemExit):
        parser.parse_args(["--db", "x", "prune", "--older-than", "soon"])
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 200)
    code, _, err = outbox("--db", str(junk), "status")
    assert code == 1
    assert "flnotify outbox status: cannot use outbox" in err


def test_flnotify_outbox_is_a_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flnotify import cli

    assert cli.main(["outbox", "--db", str(tmp_path / "o.db"), "--json", "status"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document == {"pending": 0, "claimed": 0, "done": 0, "failed": 0}
