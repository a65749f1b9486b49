"""Partitioned broker tables (migration 0023) against a real PostgreSQL: ``tasks`` by stage, ``task_attempts``
by day, partitions created at run time (also by concurrent submitters, also for hostile stage names),
retention by dropping whole days, the planner pruning claims to their stage's partition, and the
migration's round trip with rows in the tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from curation.broker import (
    _CLAIM,
    _DELETE_LEASED,
    ATTEMPT_DAYS_AHEAD,
    ATTEMPTS_DEFAULT,
    TASKS_DEFAULT,
    Broker,
    Completion,
    day_partition_name,
    enqueue,
    ensure_attempt_partitions,
    ensure_stage_partitions,
    prune_attempts,
    stage_partition_name,
)
from curation.db import make_engine
from tests.test_broker import TIMING, make_job

HOSTILE = "x'); DROP TABLE tasks; --"


def partitions(conn, parent: str) -> set[str]:
    return set(conn.execute(text("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                 "WHERE i.inhparent = CAST(:p AS regclass)"), {"p": parent}).scalars())


def where(conn, table: str, column: str, value) -> list[str]:
    """The partitions holding the rows of ``table`` with ``column = value``."""
    return sorted(conn.execute(text(f"SELECT DISTINCT tableoid::regclass::text FROM {table} WHERE {column} = :v"),
                               {"v": value}).scalars())


def new_job(conn, stages: list[str]) -> int:
    return conn.execute(text("INSERT INTO jobs (name, modality, spec, stages) VALUES ('j', 'image', '{}', :s) "
                             "RETURNING job_id"), {"s": stages}).scalar_one()


def test_the_migrated_tables_are_partitioned(engine):
    with engine.connect() as conn:
        strategy = dict(conn.execute(text("SELECT partrelid::regclass::text, partstrat FROM pg_partitioned_table")).all())
        assert strategy["tasks"] == "l" and strategy["task_attempts"] == "r"
        assert TASKS_DEFAULT in partitions(conn, "tasks")
        today = conn.execute(text("SELECT CAST(now() AT TIME ZONE 'UTC' AS date)")).scalar_one()
        days = {day_partition_name(today + timedelta(days=i)) for i in range(ATTEMPT_DAYS_AHEAD + 1)}
        assert days | {ATTEMPTS_DEFAULT} <= partitions(conn, "task_attempts")
        # the hot queue's autovacuum settings are on every tasks partition
        for name in partitions(conn, "tasks"):
            opts = conn.execute(text("SELECT reloptions FROM pg_class WHERE relname = :n"), {"n": name}).scalar_one()
            assert "autovacuum_vacuum_scale_factor=0.01" in opts and "fillfactor=80" in opts, name
        # keys include the partition key; nothing references the broker tables by foreign key
        assert conn.execute(text("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid IN "
                                 "(CAST('tasks' AS regclass), CAST('task_attempts' AS regclass))")).scalar_one() == 0


def test_a_stage_unknown_at_migration_time_gets_its_partitions_at_submission(engine):
    stages = ["brand_new_stage", "its_next_stage"]
    with engine.begin() as conn:
        job = new_job(conn, stages)
        enqueue(conn, job_id=job, stage=stages[0], stage_version="v@1", chunks=[("c0", [1, 2])], max_attempts=3,
                max_runtime_s=60)
    with engine.connect() as conn:
        assert {stage_partition_name(s) for s in stages} <= partitions(conn, "tasks")  # the later stage's too
        assert where(conn, "tasks", "stage", stages[0]) == [stage_partition_name(stages[0])]
    # a worker's start makes sure of its stage's partition as well
    Broker(engine, TIMING).register_worker("a_worker_only_stage", "h", 1)
    with engine.connect() as conn:
        assert stage_partition_name("a_worker_only_stage") in partitions(conn, "tasks")


def test_tasks_queued_in_the_default_partition_move_to_their_stage_partition(engine):
    with engine.begin() as conn:
        job = new_job(conn, ["late"])
        conn.execute(text("INSERT INTO tasks (job_id, stage, stage_version, asset_ids, dedupe_key) "
                          "VALUES (:j, 'late_stage', 'v@1', '{1}', 'c0')"), {"j": job})
        assert where(conn, "tasks", "stage", "late_stage") == [TASKS_DEFAULT]
        assert ensure_stage_partitions(conn, ["late_stage"]) == [stage_partition_name("late_stage")]
        assert ensure_stage_partitions(conn, ["late_stage"]) == []  # idempotent
    with engine.connect() as conn:
        assert where(conn, "tasks", "stage", "late_stage") == [stage_partition_name("late_stage")]


def test_concurrent_submitters_of_a_new_stage(engine, db_url):
    """Eight submitters, each its own job and connection, enqueue tasks of the same new stage at once:
    all commit, one partition exists, every task is in it."""
    stage = "raced_stage"
    with engine.begin() as conn:
        jobs = [new_job(conn, [stage, "raced_next"]) for _ in range(8)]
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException] = []
    many = make_engine(db_url, pool_size=len(jobs))

    def submit(job: int) -> None:
        try:
            with many.begin() as conn:
                barrier.wait(30)
                enqueue(conn, job_id=job, stage=stage, stage_version="v@1", chunks=[(f"c{job}", [job])],
                        max_attempts=3, max_runtime_s=60)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    many.dispose()
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks WHERE stage = :s"), {"s": stage}).scalar_one() == 8
        assert where(conn, "tasks", "stage", stage) == [stage_partition_name(stage)]
        assert {stage_partition_name(stage), stage_partition_name("raced_next")} <= partitions(conn, "tasks")


@pytest.mark.parametrize("stage", [HOSTILE, 'a%s:b"c\\d %(x)s', "ÜBER-stage/0"])
def test_a_hostile_stage_name_is_only_data(engine, stage):
    """The spec refuses such names earlier; the partition helper must be safe on its own anyway."""
    name = stage_partition_name(stage)
    assert re.fullmatch(r"[a-z0-9_]{1,63}", name)
    with engine.begin() as conn:
        job = new_job(conn, [stage])
        assert ensure_stage_partitions(conn, [stage]) == [name]
        enqueue(conn, job_id=job, stage=stage, stage_version="v@1", chunks=[("c0", [7])], max_attempts=3,
                max_runtime_s=60)
        assert where(conn, "tasks", "stage", stage) == [name]  # the bound is the name, verbatim
    broker = Broker(engine, TIMING)
    wid = broker.register_worker(stage, "h", 1)
    (lease,) = broker.claim(wid, stage, 5)
    assert lease.stage == stage and lease.asset_ids == (7,)
    assert broker.complete(lease, wid, lambda conn: 1)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('tasks') IS NOT NULL")).scalar_one()
        assert conn.execute(text("SELECT outcome FROM task_attempts WHERE stage = :s"), {"s": stage}).scalar_one() == "ok"


def test_claim_complete_and_fail_are_pruned_to_their_stage_partition(engine):
    make_job(engine, 4, 1)
    with engine.begin() as conn:
        ensure_stage_partitions(conn, ["probe", "resolution", "phash"])
    with engine.connect() as conn:
        def plan(stmt, params) -> str:
            return "\n".join(conn.execute(text("EXPLAIN " + stmt.text), params).scalars())

        claim = plan(_CLAIM, {"stage": "probe", "n": 4, "worker": 1})
        part = stage_partition_name("probe")
        assert part in claim and TASKS_DEFAULT not in claim and stage_partition_name("phash") not in claim, claim
        # the pick scans the partition's copy of tasks_ready_idx (partial: state = 'ready')
        used = re.search(r"Index Scan using (\S+) on " + part + " tasks", claim).group(1)
        indexdef = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :i"), {"i": used}).scalar_one()
        assert "(stage, priority, task_id) WHERE (state = 'ready'" in indexdef, indexdef
        done = plan(_DELETE_LEASED, {"stage": "probe", "task_ids": [1], "lease_ids": ["00000000-0000-0000-0000-000000000000"]})
        assert part in done and TASKS_DEFAULT not in done, done


def test_prune_drops_whole_old_days_and_keeps_the_recent_ones(engine, db_url):
    make_job(engine, 4, 1)
    broker = Broker(engine, TIMING)
    wid = broker.register_worker("probe", "w", 1)
    leases = broker.claim(wid, "probe", 4)
    assert broker.complete_many([Completion(l, lambda conn: 1) for l in leases], wid) == [True] * 4
    with engine.begin() as conn:
        ensure_attempt_partitions(conn, days_back=45)
        # ages: 40 and 31 days (old days), 29 days and now (kept)
        for lease, age in zip(leases, ("40 days", "31 days", "29 days", "0 days")):
            conn.execute(text("UPDATE task_attempts SET ended_at = now() - CAST(:a AS interval) WHERE task_id = :t"),
                         {"a": age, "t": lease.task_id})
        # one stray row of 50 days ago, before any day partition: it sits in the DEFAULT partition
        conn.execute(text("INSERT INTO task_attempts (task_id, job_id, stage, attempt, outcome, ended_at) "
                          "VALUES (0, 0, 'probe', 1, 'ok', now() - interval '50 days')"))
        old_days = sorted(p for p in partitions(conn, "task_attempts") if p != ATTEMPTS_DEFAULT)
    report = prune_attempts(engine, 30 * 86400)
    dropped = dict(report.dropped)
    with engine.connect() as conn:
        left = partitions(conn, "task_attempts")
        kept = conn.execute(text("SELECT task_id FROM task_attempts ORDER BY task_id")).scalars().all()
        cutoff_day = conn.execute(text("SELECT CAST((now() - interval '30 days') AT TIME ZONE 'UTC' AS date)")).scalar_one()
    assert kept == sorted(l.task_id for l in leases[2:])
    assert report.deleted == 1 and report.busy == []
    assert sum(dropped.values()) == 2 and report.rows == 3
    # every day that ended before the cutoff is gone, the day holding the cutoff and later ones stay
    assert set(dropped) == {p for p in old_days if p < day_partition_name(cutoff_day)}
    assert day_partition_name(cutoff_day) in left and not set(dropped) & left
    assert ATTEMPTS_DEFAULT in left
    # the CLI says what it dropped
    env = dict(os.environ, CURATION_DATABASE_URL=db_url)
    with engine.begin() as conn:
        ensure_attempt_partitions(conn, days_back=35)
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "broker", "prune", "--older-than", "30d"],
                          check=False, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "0 attempt row(s)" in proc.stdout and "dropped partition task_attempts_d" in proc.stdout, proc.stdout


@pytest.fixture
def fresh_db(pg_server):
    admin = make_engine(pg_server.url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS partitions_rt"))
        conn.execute(text("CREATE DATABASE partitions_rt"))
    url = make_url(pg_server.url).set(database="partitions_rt").render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS partitions_rt WITH (FORCE)"))
    admin.dispose()


def test_migration_round_trip_keeps_rows_and_ids_and_prune_works_on_a_new_database(fresh_db):
    from alembic import command

    from curation.db import alembic_config

    engine = make_engine(fresh_db, pool_size=2)

    def migrate(target: str, down: bool = False) -> None:
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, target)

    def kinds(conn) -> dict[str, str]:
        return dict(conn.execute(text("SELECT relname, relkind::text FROM pg_class WHERE relname IN "
                                      "('tasks', 'task_attempts')")).all())

    try:
        # a new database: prune has nothing to drop and says so
        migrate("head")
        proc = subprocess.run([sys.executable, "-m", "curation.cli", "broker", "prune", "--older-than", "30d"],
                              check=False, capture_output=True, text=True,
                              env=dict(os.environ, CURATION_DATABASE_URL=fresh_db))
        assert proc.returncode == 0, proc.stderr
        assert "0 attempt row(s)" in proc.stdout

        migrate("0022", down=True)
        with engine.begin() as conn:
            assert kinds(conn) == {"tasks": "r", "task_attempts": "r"}
            job = new_job(conn, ["probe"])
            conn.execute(text("INSERT INTO tasks (job_id, stage, stage_version, asset_ids, dedupe_key) VALUES "
                              "(:j, 'probe', 'p@1', '{1}', 'a'), (:j, 'odd stage', 'o@1', '{2}', 'b')"), {"j": job})
            conn.execute(text("INSERT INTO dead_tasks (task_id, job_id, stage, stage_version, asset_ids, dedupe_key, "
                              "attempt, reason) VALUES (1000, :j, 'probe', 'p@1', '{3}', 'c', 5, 'gone')"), {"j": job})
            conn.execute(text("INSERT INTO task_attempts (task_id, job_id, stage, attempt, outcome, ended_at) VALUES "
                              "(1000, :j, 'probe', 5, 'dead', now() - interval '3 days'), (1, :j, 'probe', 1, 'ok', now())"),
                         {"j": job})
        migrate("head")
        with engine.begin() as conn:
            assert kinds(conn) == {"tasks": "p", "task_attempts": "p"}
            assert where(conn, "tasks", "stage", "odd stage") == [stage_partition_name("odd stage")]
            assert where(conn, "tasks", "stage", "probe") == [stage_partition_name("probe")]
            day = conn.execute(text("SELECT CAST((now() - interval '3 days') AT TIME ZONE 'UTC' AS date)")).scalar_one()
            assert where(conn, "task_attempts", "task_id", 1000) == [day_partition_name(day)]
            # ids continue after every id used, the dead letters' included
            enqueue(conn, job_id=job, stage="probe", stage_version="p@1", chunks=[("d", [4])], max_attempts=3,
                    max_runtime_s=60)
            assert conn.execute(text("SELECT task_id FROM tasks WHERE dedupe_key = 'd'")).scalar_one() > 1000
        migrate("0022", down=True)
        with engine.begin() as conn:
            assert kinds(conn) == {"tasks": "r", "task_attempts": "r"}
            assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 3
            assert conn.execute(text("SELECT count(*) FROM task_attempts")).scalar_one() == 2
            new_id = conn.execute(text("INSERT INTO tasks (job_id, stage, stage_version, asset_ids, dedupe_key) "
                                       "VALUES (:j, 'probe', 'p@1', '{5}', 'e') RETURNING task_id"), {"j": job}).scalar_one()
            assert new_id > 1001
        migrate("head")
        with engine.connect() as conn:
            assert kinds(conn) == {"tasks": "p", "task_attempts": "p"}
            assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 4
    finally:
        engine.dispose()
