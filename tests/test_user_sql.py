"""The read-only boundary for user SQL (curation/user_sql.py, migration 0012): hostile queries and
predicates are refused before they run, and the reader role cannot write even when the checks are
bypassed. Every hostile case leaves the database as it was (table list and row counts compared)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from curation.export import ExportError, export_slice
from curation.query import QueryError, run_query
from curation.spec import SpecError, parse_spec
from curation.user_sql import READER_ROLE, UnsafeSQL, check_predicate, check_query, reader_engine
from tests.helpers import submit_spec

PWNED = Path("/tmp/curation-pwned-by-copy")

HOSTILE_QUERIES = [
    "SELECT 1; COMMIT; DROP TABLE jobs CASCADE",
    "SELECT 1; COMMIT; DELETE FROM assets",
    "COMMIT; DROP TABLE jobs CASCADE",
    "DROP TABLE jobs CASCADE",
    "DELETE FROM assets",
    "UPDATE jobs SET status = 'done'",
    "TRUNCATE assets CASCADE",
    f"COPY (SELECT 1) TO PROGRAM 'touch {PWNED}'",
    f"SELECT 1; COPY (SELECT 1) TO PROGRAM 'touch {PWNED}'",
    "SET statement_timeout = 0",
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
    "SELECT * FROM dblink('dbname=postgres', 'DROP TABLE jobs') AS t(x text)",
    "WITH gone AS (DELETE FROM assets RETURNING *) SELECT count(*) FROM gone",
    "SELECT * INTO stolen FROM assets",
    "SELECT * FROM assets FOR UPDATE",
    "SELECT pg_advisory_lock(4242001)",
    "CREATE TABLE x (i int)",
    "ALTER ROLE curation_reader SUPERUSER",
    "RESET ROLE",
    "",
]

HOSTILE_PREDICATES = [
    "is_unique; DROP TABLE jobs",
    "is_unique --",
    "is_unique -- AND bucket = 256",
    "is_unique /* */",
    "true) UNION SELECT * FROM assets WHERE (true",
    "true)) OR ((true",
    "(true",
    "1=1) ; COMMIT; DELETE FROM assets; SELECT (1",
    "EXISTS (SELECT 1 FROM pg_terminate_backend(1))",
    "set_config('role', 'postgres', false) IS NOT NULL",
    "true GROUP BY 1",
    "true LIMIT 1",
    "",
]


def snapshot(engine) -> dict[str, int]:
    with engine.connect() as conn:
        tables = conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")).scalars().all()
        return {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables}


@pytest.mark.parametrize("sql", HOSTILE_QUERIES)
def test_hostile_query_is_refused_before_it_runs(sql):
    with pytest.raises(UnsafeSQL):
        check_query(sql)


@pytest.mark.parametrize("predicate", HOSTILE_PREDICATES)
def test_hostile_predicate_is_refused(predicate):
    with pytest.raises(UnsafeSQL):
        check_predicate(predicate)


@pytest.mark.parametrize("sql", [
    "SELECT 7 % 3", "SELECT '50%' LIKE '%'", "WITH t AS (SELECT 1 AS x) SELECT x FROM t", "VALUES (1), (2)",
    "TABLE curated_images", "SELECT 1;", "SELECT ';' AS semicolon, '--' AS dashes",
])
def test_ordinary_reads_pass_the_check(sql):
    check_query(sql)


@pytest.mark.parametrize("predicate", [
    "is_unique AND bucket IS NOT NULL", "source LIKE 'batch%'", "uri NOT LIKE '%;%'",
    "(width > 256 OR height > 256) AND edge_density > 0.02",
    "asset_id IN (SELECT asset_id FROM assets WHERE kind = 'image')", "source = 'a--b' AND uri LIKE '%/*%'",
])
def test_ordinary_predicates_pass(predicate):
    check_predicate(predicate)  # '--' and '/*' inside a string literal are text, not comments


def test_hostile_queries_leave_the_database_intact(engine, db_url, photo_dir):
    submit_spec(engine, {"name": "victim", "modality": "image", "source": {"uri": str(photo_dir)},
                         "stages": [{"name": "probe"}]})
    before = snapshot(engine)
    PWNED.unlink(missing_ok=True)
    for sql in HOSTILE_QUERIES:
        with pytest.raises(QueryError):
            run_query(engine, sql, timeout_s=5)
    assert snapshot(engine) == before
    assert not PWNED.exists()
    assert run_query(engine, "SELECT 7 % 3 AS r").rows == [(1,)]


@pytest.mark.parametrize("sql", [
    "DELETE FROM assets",
    "INSERT INTO jobs (name, modality, spec, stages) VALUES ('x', 'image', '{}', '{}')",
    "SET default_transaction_read_only = off; SET transaction_read_only = off; DELETE FROM job_assets",
    "COMMIT; DROP TABLE jobs CASCADE",
    f"COPY (SELECT 1) TO PROGRAM 'touch {PWNED}'",
    "SELECT * FROM tasks",
    "SELECT * FROM task_attempts",
    "SELECT pg_read_file('/etc/passwd')",
    "CREATE TABLE x (i int)",
    "SET ROLE postgres",
    "SELECT nextval('jobs_job_id_seq')",
])
def test_the_reader_role_cannot_write_even_past_the_checks(engine, db_url, photo_dir, sql):
    """The second layer: SQL sent straight to the reader's connection (no check) still cannot write,
    read the broker or reach the server's files and programs."""
    submit_spec(engine, {"name": "victim", "modality": "image", "source": {"uri": str(photo_dir)},
                         "stages": [{"name": "probe"}]})
    before = snapshot(engine)
    PWNED.unlink(missing_ok=True)
    reader = reader_engine(db_url, timeout_s=5)
    try:
        with reader.connect() as conn:
            with pytest.raises(Exception) as info:
                conn.connection.driver_connection.cursor().execute(sql)
        assert any(word in str(info.value) for word in ("permission denied", "read-only", "must be", "not allowed",
                                                        "cannot")), info.value
    finally:
        reader.dispose()
    assert snapshot(engine) == before
    assert not PWNED.exists()


def test_reader_role_privileges(engine, db_url):
    with engine.connect() as conn:
        role = conn.execute(text(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles "
            "WHERE rolname = :r"), {"r": READER_ROLE}).one()
        assert not any(role)
        member_of = conn.execute(text(
            "SELECT b.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
            "JOIN pg_roles b ON b.oid = m.roleid WHERE r.rolname = :r"), {"r": READER_ROLE}).scalars().all()
        assert member_of == []
        grants = conn.execute(text(
            "SELECT DISTINCT privilege_type FROM information_schema.role_table_grants WHERE grantee = :r"),
            {"r": READER_ROLE}).scalars().all()
        assert grants == ["SELECT"]
        readable = set(conn.execute(text(
            "SELECT table_name FROM information_schema.role_table_grants WHERE grantee = :r"),
            {"r": READER_ROLE}).scalars())
        results = set(conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND (table_name LIKE '%\\_results' OR table_name LIKE 'curated\\_%')")).scalars())
    assert results <= readable, f"not readable by the reader: {sorted(results - readable)}"
    assert not readable & {"tasks", "task_attempts", "workers", "dead_tasks", "alembic_version"}


def test_statement_timeout_cannot_be_lifted(engine, db_url):
    with pytest.raises(QueryError, match="timeout"):
        run_query(engine, "SELECT pg_sleep(3)", timeout_s=0.5)
    reader = reader_engine(db_url, timeout_s=0.5)
    try:
        with reader.connect() as conn:
            cur = conn.connection.driver_connection.cursor()
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "500ms"
            cur.execute("SHOW default_transaction_read_only")
            assert cur.fetchone()[0] == "on"
    finally:
        reader.dispose()


def test_export_refuses_hostile_predicates(engine, db_url, photo_dir, tmp_path):
    submit_spec(engine, {"name": "victim", "modality": "image", "source": {"uri": str(photo_dir)},
                         "stages": [{"name": "probe"}]})
    before = snapshot(engine)
    for predicate in HOSTILE_PREDICATES:
        with pytest.raises(ExportError):
            export_slice(engine, predicate=predicate, output=str(tmp_path / "out"))
    assert snapshot(engine) == before
    assert not (tmp_path / "out").exists()


def test_spec_refuses_hostile_export_predicates_and_source_names(photo_dir):
    base = {"name": "j", "modality": "image", "source": {"uri": str(photo_dir)}, "stages": [{"name": "probe"}]}
    for predicate in ("is_unique --", "is_unique; DROP TABLE jobs", "true) UNION SELECT 1 WHERE (true"):
        with pytest.raises(SpecError, match="export.where"):
            parse_spec({**base, "export": {"where": predicate, "output": "/tmp/x"}})
    for name in ("..", "../etc", "a/b", "..hidden", ".", "a..b", "x[/]"):
        with pytest.raises(SpecError, match="source.name"):
            parse_spec({**base, "source": {"uri": str(photo_dir), "name": name}})
    derived = parse_spec({**base, "source": {"uri": str(photo_dir / "..")}}).source.source_name()
    assert derived == "source" and ".." not in derived


def test_spec_names_top_level_and_stage_errors_together(photo_dir):
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "j", "modality": "image", "source": {"uri": str(photo_dir)}, "chunk_size": 0,
                    "stages": [{"name": "probe"}, {"name": "resolution", "params": {"min_side": "big"}},
                               {"name": "nope"}]})
    message = str(info.value)
    assert "chunk_size" in message
    assert "stages[1].params.min_side" in message
    assert "stages[2].name" in message


def _cli(db_url, *args, cwd=None):
    env = dict(os.environ, CURATION_DATABASE_URL=db_url, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "curation.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


def test_markup_in_a_job_name_is_shown_as_typed(engine, db_url, photo_dir, tmp_path):
    spec = {"name": "[/] [bold]x[/bold] [link=file:///etc]y", "modality": "image",
            "source": {"uri": str(photo_dir)}, "stages": [{"name": "probe"}]}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    submitted = _cli(db_url, "submit", str(path))
    assert submitted.returncode == 0, submitted.stderr
    assert "[/] [bold]x[/bold]" in submitted.stdout
    listed = _cli(db_url, "status")
    assert listed.returncode == 0, listed.stderr
    one = _cli(db_url, "status", "1")
    assert one.returncode == 0, one.stderr
    assert "[/]" in one.stdout
    query = _cli(db_url, "query", "SELECT '[/]' AS x, 7 % 3 AS r")
    assert query.returncode == 0 and "[/]" in query.stdout, query.stderr


def test_cli_query_refuses_several_statements(engine, db_url):
    before = snapshot(engine)
    proc = _cli(db_url, "query", "SELECT 1; COMMIT; DROP TABLE jobs CASCADE")
    assert proc.returncode != 0 and "exactly one statement" in proc.stderr
    proc = _cli(db_url, "encode", "--output", "/tmp/never", "--vae", "tiny", "--where", "is_unique --")
    assert proc.returncode != 0 and "comments" in proc.stderr
    assert snapshot(engine) == before


def test_s3_source_without_credentials_says_so(engine, monkeypatch):
    from curation import storage
    from curation.planner import submit

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata address
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage.reset_s3_client()
    try:
        spec = parse_spec({"name": "j", "modality": "image", "source": {"uri": "s3://raw/photos/"},
                           "stages": [{"name": "probe"}]})
        with pytest.raises(SpecError, match="credentials"):
            submit(engine, spec)
    finally:
        monkeypatch.undo()
        storage.reset_s3_client()

