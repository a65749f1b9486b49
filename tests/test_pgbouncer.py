"""The platform behind a real PgBouncer in transaction mode (Debian's `pgbouncer`), as deploy/ runs it:
a job's workers, supervisor and submitter all go through it with fewer server connections than clients
(so server connections really change hands between transactions) and the job completes exactly once;
the reader role's startup options are refused there, which is why deploy/ sends user SQL to PostgreSQL
directly (deploy/README.md, "PgBouncer")."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.helpers import assert_exactly_one_outcome, run_until_done, submit_spec
from tests.missing import unavailable
from workers.probe import ProbeStage

pytestmark = pytest.mark.slow

SERVER_CONNECTIONS = 3  # per (database, user): fewer than the job's clients


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pgbouncer_url(db_url, tmp_path_factory):
    """PgBouncer on a free port in front of the embedded server, transaction pooling; yields the
    SQLAlchemy URL that reaches the same database through it."""
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(exe).exists():
        unavailable("pgbouncer is not installed (Debian package `pgbouncer`; scripts/bootstrap.sh installs it)")
    url = make_url(db_url)
    folder = tmp_path_factory.mktemp("pgbouncer")
    port = _free_port()
    (folder / "userlist.txt").write_text('"postgres" ""\n"curation_reader" ""\n')
    (folder / "pgbouncer.ini").write_text(f"""\
[databases]
{url.database} = host={url.host} port={url.port} dbname={url.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
pool_mode = transaction
auth_type = trust
auth_file = {folder}/userlist.txt
admin_users = postgres
max_client_conn = 200
default_pool_size = {SERVER_CONNECTIONS}
max_db_connections = {SERVER_CONNECTIONS}
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
""")
    argv = [exe, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer will not run as root
        shutil.chown(folder, "postgres")
        for f in folder.iterdir():
            shutil.chown(f, "postgres")
        argv[1:1] = ["-u", "postgres"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    bouncer = url.set(port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (folder / "pgbouncer.log").read_text() if (folder / "pgbouncer.log").exists() else ""
                pytest.fail(f"pgbouncer did not start (exit {proc.poll()}):\n{log[-3000:]}")
            time.sleep(0.1)
    yield bouncer.render_as_string(hide_password=False)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _show(url: str, what: str) -> list[dict]:
    """A row set from PgBouncer's admin console (SHOW POOLS, SHOW STATS); plain psycopg2, since the
    console answers only SHOW commands, not SQLAlchemy's start-up queries."""
    import psycopg2

    u = make_url(url)
    conn = psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname="pgbouncer")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"SHOW {what}")
            names = [c.name for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        conn.close()


def test_a_job_runs_through_pgbouncer_in_transaction_mode(engine, db_url, pgbouncer_url, ray_local, photo_dir):
    from curation.db import make_engine

    through = make_engine(pgbouncer_url, pool_size=5)
    try:
        job = submit_spec(through, {"name": "bounced", "modality": "image", "source": {"uri": str(photo_dir)},
                                    "stages": [{"name": "tests.stages:SlowProbe", "params": {"sleep_s": 0.2}},
                                               {"name": "resolution"}],
                                    "chunk_size": 2, "fuse_cpu_stages": False})
        # the supervisor hands this URL to every actor: their claims, heartbeats and commits all go through it
        run_until_done(through, pgbouncer_url, job, {"tests.stages:SlowProbe": 2, "resolution": 1})
    finally:
        through.dispose()
    outcome = assert_exactly_one_outcome(engine, job, "tests.stages:SlowProbe", "probe_results",
                                         ProbeStage.stage_version())
    assert set(outcome.values()) == {"ok"} and len(outcome) == len(list(photo_dir.iterdir()))
    assert_exactly_one_outcome(engine, job, "resolution", "resolution_results", "resolution@1")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id = :j"), {"j": job}).scalar_one() == "completed"
        assert conn.execute(text("SELECT count(*) FROM workers WHERE stopped_at IS NULL")).scalar_one() == 0
    stats = {r["database"]: r for r in _show(pgbouncer_url, "STATS")}
    db = make_url(db_url).database
    # every client went through the bouncer, over at most SERVER_CONNECTIONS server connections
    assert stats[db]["total_xact_count"] > 50, stats[db]
    assert all(r["sv_active"] + r["sv_idle"] + r["sv_used"] <= SERVER_CONNECTIONS
               for r in _show(pgbouncer_url, "POOLS") if r["database"] == db)


def test_the_reader_role_is_refused_through_pgbouncer(db_url, pgbouncer_url):
    """User SQL runs as the reader role with its read-only mode and statement timeout as startup
    options; PgBouncer refuses them (deploy/ does not list `options` in ignore_startup_parameters, so
    it is never silently dropped). Straight to PostgreSQL the same engine works and is read-only."""
    from curation.user_sql import reader_engine

    bounced = reader_engine(pgbouncer_url)
    with pytest.raises(OperationalError, match="unsupported startup parameter: options"), bounced.connect() as conn:
        conn.execute(text("SELECT 1"))
    direct = reader_engine(db_url, timeout_s=5)
    with direct.connect() as conn:
        assert conn.execute(text("SHOW default_transaction_read_only")).scalar_one() == "on"
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "5s"
