"""A throwaway PostgreSQL server on 127.0.0.1, started with Debian's initdb/pg_ctl.

Used by the tests (the ``postgres`` fixtures in ``conftest.py``) and by
``bench/scaleout.py``. ``initdb`` refuses to run as root, so under root the server runs as
the ``postgres`` system user the Debian package creates, in a temporary directory owned
by it; as any other user it runs as that user. Nothing here skips: a missing PostgreSQL
is an error that says what to install.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

INSTALL_HINT = "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql)"


class PostgresMissingError(RuntimeError):
    """No initdb/pg_ctl on this machine."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl (or PATH)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if (Path(bindir) / "initdb").exists() and (Path(bindir) / "pg_ctl").exists():
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).parent
    msg = f"initdb/pg_ctl not found under /usr/lib/postgresql/*/bin or on PATH: {INSTALL_HINT}"
    raise PostgresMissingError(msg)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> dict[str, Any]:
    """subprocess options to run the server unprivileged (root cannot run initdb)."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        msg = f"running as root and there is no 'postgres' user to run initdb as: {INSTALL_HINT}"
        raise PostgresMissingError(msg) from None
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[str]:
    """Run a server for the duration of the block; yields a URL to its ``postgres`` db.

    Args:
        durable: Keep ``fsync`` on (for benchmarks); tests turn it off for speed, which
            changes nothing they check (no test pulls the power).
    """
    bindir = find_bindir()
    options = _run_as()
    root = Path(tempfile.mkdtemp(prefix="flnotify-pg-"))
    data = root / "data"
    if options:
        os.chown(root, options["user"], options["group"])
    port = _free_port()
    log = root / "server.log"

    def run(*args: str) -> None:
        result = subprocess.run(  # noqa: S603 - fixed arguments
            args, capture_output=True, text=True, cwd=root, check=False, **options
        )
        if result.returncode != 0:
            msg = f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            raise RuntimeError(msg)

    started = False
    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "flnotify",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = [
            "-c listen_addresses=127.0.0.1",
            f"-p {port}",
            f"-k {root}",
            "-c max_connections=100",
            "-c shared_buffers=64MB",
        ]
        if not durable:
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(settings),
            "start",
        )
        started = True
        yield f"postgresql://flnotify@127.0.0.1:{port}/postgres"
    finally:
        try:
            if started:
                run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """Create an empty database on the server; its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name
