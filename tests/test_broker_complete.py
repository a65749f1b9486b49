"""``Broker.complete_many`` in one message after the result rows (bench/broker_pollers.py: ``broker``).

The common case (one stage, every lease still held): the result rows are written first, the first one
carrying the ``BEGIN``; then one message: the fenced delete and the attempt rows (a statement that fails
unless every lease is held), ``[<enqueue>;] COMMIT; <finish drained jobs>``. A fenced-out lease or a failing
``write_results`` rolls that back and the batch is completed the careful way: ``BEGIN; <fenced delete>``,
the result rows of the leases still held, ``[<enqueue>;] <attempt rows>; COMMIT; <finish drained jobs>``.
These tests pin what is sent, and that no path leaves a transaction open on a pooled connection."""

from __future__ import annotations

import re
import threading

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from bench.broker_pollers import broker_complete_sql
from curation.broker import (
    _FENCED_OUT,
    _FINISH_JOB_TAIL,
    Broker,
    Completion,
    NextStage,
    _complete_held,
    enqueue,
)
from tests.conftest import ALL_TABLES
from tests.test_broker import TIMING, make_job, write_probe_rows

_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def _sent(engine, fn):
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        return fn(), sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _no_open_transactions(engine) -> None:
    with engine.connect() as conn:
        states = conn.execute(text("SELECT state FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                   "AND pid <> pg_backend_pid() AND datname = current_database()")).scalars().all()
    assert not [s for s in states if s and s.startswith("idle in transaction")], states


def test_a_completion_with_no_result_rows_is_one_message(engine):
    make_job(engine, 4, 4)
    broker = Broker(engine, TIMING)
    w = broker.register_worker("probe", "test", 1)
    (lease,) = broker.claim(w, "probe")
    ok, sent = _sent(engine, lambda: broker.complete(lease, w, lambda conn: 0))
    assert ok is True
    assert len(sent) == 1
    (msg,) = sent
    assert msg.startswith("BEGIN;") and "DELETE FROM tasks" in msg and "INSERT INTO task_attempts" in msg
    assert msg.index("COMMIT;") < msg.index("UPDATE jobs")  # the job check sees the commit
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "completed"
        row = conn.execute(text("SELECT outcome, n_items, n_ok, worker_id, claimed_at IS NOT NULL, lease_id::text "
                                "FROM task_attempts")).one()
        assert tuple(row) == ("ok", 4, 0, w, True, lease.lease_id)
        # the pooled connection is back out of autocommit, with no transaction left open
        assert conn.connection.driver_connection.autocommit is False
    _no_open_transactions(engine)


def test_the_first_result_row_carries_the_begin_and_the_enqueue_rides_the_last_message(engine):
    _, ids = make_job(engine, 6, 6)
    broker = Broker(engine, TIMING)
    w = broker.register_worker("probe", "test", 1)
    (lease,) = broker.claim(w, "probe")
    nxt = NextStage("resolution", "resolution@1", 60)
    ok, sent = _sent(engine, lambda: broker.complete(lease, w, write_probe_rows(ids, "x"), survivors=ids[:3],
                                                     next_stage=nxt))
    assert ok is True
    # first the result rows (then, on a job's or stage's first enqueue in this process, the making sure of
    # its partitions, in a savepoint of the same transaction), then the one message
    first, *_, last = sent
    assert first.startswith("BEGIN;INSERT INTO probe_results")
    assert not last.startswith("BEGIN;") and "WITH gone AS" in last and "INSERT INTO tasks" in last
    assert last.index("INSERT INTO tasks") < last.index("COMMIT;") < last.index("UPDATE jobs")
    assert not [s for s in sent[1:] if s.startswith("BEGIN")]
    with engine.connect() as conn:
        row = conn.execute(text("SELECT stage, stage_version, asset_ids, state, max_runtime_s, priority, max_attempts "
                                "FROM tasks")).one()
        assert tuple(row) == ("resolution", "resolution@1", ids[:3], "ready", 60.0, 100, 5)
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "running"
        assert conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one() == 6
        assert conn.execute(text("SELECT n_ok FROM task_attempts WHERE outcome = 'ok'")).scalar_one() == 6
    # completed again (a retried flush): fenced out, nothing enqueued twice
    assert broker.complete(lease, w, write_probe_rows(ids, "y"), survivors=ids[:3], next_stage=nxt) is False
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM probe_results WHERE format = 'y'")).scalar_one() == 0
    _no_open_transactions(engine)


def test_a_fenced_out_lease_rolls_back_the_result_rows_written_before_its_fence(engine):
    make_job(engine, 6, 2)
    broker = Broker(engine, TIMING)
    zombie = broker.register_worker("probe", "zombie", 1)
    other = broker.register_worker("probe", "other", 2)
    leases = broker.claim(zombie, "probe", 3)
    with engine.begin() as conn:  # lease 1 was reclaimed and handed to another worker meanwhile
        conn.execute(text("UPDATE tasks SET lease_id = gen_random_uuid(), lease_owner = :w WHERE task_id = :t"),
                     {"w": other, "t": leases[1].task_id})
    calls: list[int] = []

    def writer(lease):
        def write(conn):
            calls.append(lease.task_id)
            return write_probe_rows(lease.asset_ids, "z")(conn)
        return write

    ok, sent = _sent(engine, lambda: broker.complete_many([Completion(l, writer(l)) for l in leases], zombie))
    assert ok == [True, False, True]
    assert any(_FENCED_OUT in s for s in sent) and any(s.startswith("BEGIN;") and "DELETE" in s for s in sent)
    with engine.connect() as conn:
        written = set(conn.execute(text("SELECT asset_id FROM probe_results")).scalars())
        assert written == set(leases[0].asset_ids) | set(leases[2].asset_ids)
        attempts = dict(conn.execute(text("SELECT task_id, outcome FROM task_attempts")).all())
        assert attempts == {leases[0].task_id: "ok", leases[1].task_id: "fenced_out", leases[2].task_id: "ok"}
        assert conn.execute(text("SELECT task_id FROM tasks")).scalars().all() == [leases[1].task_id]
    # the careful way ran the held ones' writes again, not the fenced-out one's
    assert sorted(calls) == sorted([l.task_id for l in leases] + [leases[0].task_id, leases[2].task_id])
    _no_open_transactions(engine)


def test_a_lease_reclaimed_while_its_results_are_written_is_fenced_out(engine):
    """The fence is checked after the result rows now: a reclaim that commits in between fences it out."""
    _, ids = make_job(engine, 2, 2)
    broker = Broker(engine, TIMING)
    zombie = broker.register_worker("probe", "zombie", 1)
    (lease,) = broker.claim(zombie, "probe")

    def write(conn):
        n = write_probe_rows(ids, "z")(conn)
        with engine.begin() as other:  # the sweep reclaims it while the rows are being written
            other.execute(text("UPDATE tasks SET state = 'scheduled', lease_id = NULL, lease_owner = NULL"))
        return n

    assert broker.complete(lease, zombie, write) is False
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one() == 0
        assert conn.execute(text("SELECT state FROM tasks")).scalar_one() == "scheduled"
        assert conn.execute(text("SELECT outcome FROM task_attempts")).scalars().all() == ["fenced_out"]
    _no_open_transactions(engine)


def test_a_database_error_in_the_result_rows_rolls_back_and_frees_the_connection(engine):
    make_job(engine, 4, 1)
    broker = Broker(engine, TIMING)
    w = broker.register_worker("probe", "test", 1)
    leases = broker.claim(w, "probe", 4)

    def bad_sql(conn):
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))  # aborts the server's transaction
        return 1

    outcomes = broker.complete_many([Completion(leases[0], lambda conn: 1), Completion(leases[1], bad_sql),
                                     Completion(leases[2], lambda conn: 1)], w)
    assert outcomes[0] is True and outcomes[2] is True and isinstance(outcomes[1], ProgrammingError)
    _no_open_transactions(engine)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT task_id, state FROM tasks ORDER BY task_id")).all()
        assert [tuple(r) for r in left] == [(leases[1].task_id, "leased"), (leases[3].task_id, "leased")]
    assert broker.fail(leases[1], w, "bad sql") == "scheduled"
    assert broker.complete(leases[3], w, lambda conn: 1) is True


def test_a_connection_lost_mid_completion_commits_nothing(engine):
    make_job(engine, 2, 1)
    broker = Broker(engine, TIMING)
    w = broker.register_worker("probe", "test", 1)
    a, b = broker.claim(w, "probe", 2)

    def killed(conn):
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        conn.execute(text("SELECT 1"))
        return 1

    with pytest.raises(DBAPIError) as err:
        broker.complete_many([Completion(a, killed), Completion(b, lambda conn: 1)], w)
    assert err.value.connection_invalidated
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks WHERE state = 'leased'")).scalar_one() == 2
        assert conn.execute(text("SELECT count(*) FROM task_attempts")).scalar_one() == 0
    assert broker.complete_many([Completion(a, lambda conn: 1), Completion(b, lambda conn: 1)], w) == [True, True]
    _no_open_transactions(engine)


def test_two_last_completions_of_a_job_finish_it(engine):
    for _ in range(5):
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {ALL_TABLES} RESTART IDENTITY CASCADE"))
        job, _ = make_job(engine, 2, 1)
        broker = Broker(engine, TIMING)
        w = broker.register_worker("probe", "test", 1)
        leases = broker.claim(w, "probe", 2)
        barrier = threading.Barrier(2)

        def done(lease, broker=broker, w=w, barrier=barrier):
            def write(conn):
                barrier.wait(5)  # both fences taken, neither committed
                return 1
            assert broker.complete(lease, w, write)

        threads = [threading.Thread(target=done, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT status FROM jobs WHERE job_id = :j"), {"j": job}).scalar_one() == "completed"


def test_bench_sends_the_brokers_completion_message():
    sql = broker_complete_sql()
    assert sql.startswith("BEGIN;") and "%(stage)s" in sql and ":stage" not in sql and "%(f_job_0)s" in sql
    assert sql == _PARAM.sub(r"%(\1)s", _complete_held(True, False, 1).text)


def test_one_flush_finishes_each_job_it_drains(engine):
    job_a, ids = make_job(engine, 2, 2)
    with engine.begin() as conn:
        job_b, job_c = conn.execute(text("INSERT INTO jobs (name, modality, spec, stages) VALUES ('b', 'image', '{}', "
                                         "ARRAY['probe']), ('c', 'image', '{}', ARRAY['probe']) RETURNING job_id")).scalars()
        for job, keys in ((job_b, ["b0"]), (job_c, ["c0", "c1"])):
            enqueue(conn, job_id=job, stage="probe", stage_version="probe@1", chunks=[(k, ids) for k in keys],
                    max_attempts=5, max_runtime_s=600)
    broker = Broker(engine, TIMING)
    w = broker.register_worker("probe", "test", 1)
    leases = broker.claim(w, "probe", 4)
    last_of_c = next(l for l in leases if l.job_id == job_c)
    ok, sent = _sent(engine, lambda: broker.complete_many([Completion(l, lambda conn: 0) for l in leases
                                                           if l is not last_of_c], w))
    assert ok == [True] * 3 and len(sent) == 1 and sent[0].count("UPDATE jobs") == 3
    with engine.connect() as conn:
        status = dict(conn.execute(text("SELECT job_id, status FROM jobs")).all())
    assert status == {job_a: "completed", job_b: "completed", job_c: "running"}
    assert broker.complete(last_of_c, w, lambda conn: 0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id = :j"), {"j": job_c}).scalar_one() == "completed"


def _blocks(plan: dict) -> int:
    return plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)


def test_the_drained_job_check_probes_the_jobs_newest_task_not_the_dead_head(engine):
    # A hot queue's heap starts with the tasks already completed (deleted, not yet vacuumed). The check "has
    # the job a task left" asks for the job's newest task through tasks_job_idx (job_id, task_id), backwards
    # (migration 0024): a few pages, where the first row of a sequential scan (what the planner made of
    # NOT EXISTS for a job of many tasks) read every page of the dead head first.
    job, _ = make_job(engine, 5000, 1)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE tasks"))
    broker = Broker(engine, TIMING)
    w = broker.register_worker("probe", "test", 1)
    leases = broker.claim(w, "probe", 4000)
    assert broker.complete_many([Completion(lease, lambda conn: 0) for lease in leases], w) == [True] * 4000
    check = text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + _FINISH_JOB_TAIL.format(n=0).strip().rstrip(";"))
    with engine.begin() as conn:
        (plan,) = conn.execute(check, {"f_job_0": job}).scalar_one()
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "running"
    assert _blocks(plan["Plan"]) < 40, plan
    rest = broker.claim(w, "probe", 1000)
    assert broker.complete_many([Completion(lease, lambda conn: 0) for lease in rest], w) == [True] * 1000
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "completed"
