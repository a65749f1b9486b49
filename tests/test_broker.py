"""The broker against a real PostgreSQL: claims, fencing, reclaim, back-off, bisection, dead letter."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import text

from curation.broker import Broker, NextStage, enqueue
from curation.config import BrokerTiming

TIMING = BrokerTiming(heartbeat_s=0.5, worker_timeout_s=4, sweep_s=1, backoff_base_s=10)


def make_job(engine, n_assets: int, chunk: int, *, max_attempts: int = 5) -> tuple[int, list[int]]:
    with engine.begin() as conn:
        src = conn.execute(text("INSERT INTO sources (name, uri) VALUES ('s', '/x') RETURNING source_id")).scalar_one()
        job = conn.execute(text("INSERT INTO jobs (name, modality, spec, stages) VALUES ('j', 'image', '{}', "
                                "ARRAY['probe']) RETURNING job_id")).scalar_one()
        ids = conn.execute(text("INSERT INTO assets (uri, kind, source_id) SELECT '/x/' || g, 'image', :s "
                                "FROM generate_series(1, :n) g RETURNING asset_id"), {"s": src, "n": n_assets}).scalars().all()
        conn.execute(text("INSERT INTO job_assets SELECT :j, unnest(CAST(:ids AS bigint[]))"), {"j": job, "ids": ids})
        chunks = [(f"c{n}", ids[i:i + chunk]) for n, i in enumerate(range(0, len(ids), chunk))]
        enqueue(conn, job_id=job, stage="probe", stage_version="probe@1", chunks=chunks, max_attempts=max_attempts,
                max_runtime_s=600)
    return job, list(ids)


def write_probe_rows(asset_ids, marker: str):
    def write(conn):
        conn.execute(
            text("INSERT INTO probe_results (asset_id, config_id, stage_version, format, width, height, mode, bytes, sha256, "
                 "decode_ms) SELECT a, 'probe:test', 'probe@1', :m, 1, 1, 'RGB', 1, '\\x00', 0 FROM unnest(CAST(:ids AS bigint[])) a "
                 "ON CONFLICT DO NOTHING"),
            {"ids": list(asset_ids), "m": marker},
        )
        return len(asset_ids)
    return write


def test_enqueue_is_idempotent(engine):
    job, ids = make_job(engine, 10, 5)
    with engine.begin() as conn:
        again = enqueue(conn, job_id=job, stage="probe", stage_version="probe@1",
                        chunks=[("c0", ids[:5]), ("c1", ids[5:])], max_attempts=5, max_runtime_s=600)
        assert again == 0
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 2


def test_concurrent_claimers_never_share_a_task(engine):
    make_job(engine, 2000, 1)
    broker = Broker(engine, TIMING)
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer():
        wid = broker.register_worker("probe", "test", threading.get_ident() % 100000)
        while True:
            leases = broker.claim(wid, "probe", 7)
            if not leases:
                return
            with lock:
                claimed.extend(l.task_id for l in leases)

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(claimed)
    assert len(claimed) == 2000
    assert max(counts.values()) == 1, [t for t, n in counts.items() if n > 1][:5]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks WHERE state='leased'")).scalar_one() == 2000
        assert conn.execute(text("SELECT count(DISTINCT lease_id) FROM tasks")).scalar_one() == 2000


def test_reclaimed_lease_is_fenced_out(engine):
    job, ids = make_job(engine, 4, 4)
    broker = Broker(engine, TIMING)
    zombie = broker.register_worker("probe", "zombie", 1)
    healthy = broker.register_worker("probe", "healthy", 2)
    (lease_a,) = broker.claim(zombie, "probe")
    broker.mark_worker_dead(zombie)  # e.g. its heartbeat stopped during a network partition
    report = broker.sweep()
    assert report.reclaimed == 1
    with engine.begin() as conn:  # skip the back-off for the test
        conn.execute(text("UPDATE tasks SET state='ready', run_after=now()"))
    (lease_b,) = broker.claim(healthy, "probe")
    assert lease_b.task_id == lease_a.task_id and lease_b.lease_id != lease_a.lease_id
    assert lease_b.attempt == 2

    # the zombie wakes up and tries to finish: fenced out, nothing written
    assert broker.complete(lease_a, zombie, write_probe_rows(ids, "zombie")) is False
    assert broker.fail(lease_a, zombie, "late") == "fenced_out"
    assert broker.release(lease_a, zombie) is False
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one() == 0
    assert broker.complete(lease_b, healthy, write_probe_rows(ids, "healthy")) is True
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT format, count(*) FROM probe_results GROUP BY format")).all()
        assert rows == [("healthy", 4)]
        outcomes = Counter(conn.execute(text("SELECT outcome FROM task_attempts")).scalars())
        assert outcomes == {"reclaimed_dead_worker": 1, "fenced_out": 2, "ok": 1}
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job}).scalar_one() == "completed"


def test_completion_enqueues_survivors_in_the_same_transaction(engine):
    job, ids = make_job(engine, 6, 6)
    broker = Broker(engine, TIMING)
    wid = broker.register_worker("probe", "w", 1)
    (lease,) = broker.claim(wid, "probe")

    def failing_write(conn):
        write_probe_rows(ids, "x")(conn)
        raise RuntimeError("boom after writing")

    try:
        broker.complete(lease, wid, failing_write, survivors=ids[:3], next_stage=NextStage("resolution", "resolution@1", 60))
    except RuntimeError:
        pass
    with engine.connect() as conn:  # rolled back whole: task still leased, no rows, nothing enqueued
        assert conn.execute(text("SELECT state FROM tasks")).scalars().all() == ["leased"]
        assert conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one() == 0
    assert broker.complete(lease, wid, write_probe_rows(ids, "x"), survivors=ids[:3],
                           next_stage=NextStage("resolution", "resolution@1", 60))
    with engine.connect() as conn:
        nxt = conn.execute(text("SELECT stage, asset_ids, state FROM tasks")).one()
        assert nxt.stage == "resolution" and list(nxt.asset_ids) == ids[:3] and nxt.state == "ready"
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "running"


def test_failure_backs_off_with_jitter_then_dead_letters(engine):
    job, ids = make_job(engine, 3, 3, max_attempts=2)
    broker = Broker(engine, TIMING)
    wid = broker.register_worker("probe", "w", 1)
    (lease,) = broker.claim(wid, "probe")
    assert broker.fail(lease, wid, "storage outage") == "scheduled"
    with engine.connect() as conn:
        delay = conn.execute(text("SELECT extract(epoch FROM run_after - now()) FROM tasks")).scalar_one()
    assert 8.5 < float(delay) <= 11.0  # base 10 s * 2**0, +-10 % jitter, on the database clock
    assert broker.claim(wid, "probe") == []  # not before its time
    with engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET run_after = now() - interval '1 s'"))
    assert broker.sweep().promoted == 1
    (lease2,) = broker.claim(wid, "probe")
    assert lease2.attempt == 2
    assert broker.fail(lease2, wid, "storage outage") == "dead"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 0
        assert conn.execute(text("SELECT reason FROM dead_tasks")).scalar_one().startswith("failed 2 times")
        errs = conn.execute(text("SELECT asset_id, error_class FROM item_errors ORDER BY asset_id")).all()
        assert errs == [(a, "task_failed") for a in ids]
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "completed"


def test_release_refunds_the_attempt(engine):
    make_job(engine, 2, 2)
    broker = Broker(engine, TIMING)
    wid = broker.register_worker("probe", "w", 1)
    (lease,) = broker.claim(wid, "probe")
    assert broker.release(lease, wid)
    (again,) = broker.claim(wid, "probe")
    assert again.attempt == 1


def test_crashing_chunk_is_bisected_down_to_the_bad_asset(engine):
    """Simulated at the broker level (the Ray test does it with real process crashes): every lease
    that holds asset ``bad`` dies; the others complete."""
    job, ids = make_job(engine, 8, 8, max_attempts=3)
    bad = ids[5]
    broker = Broker(engine, TIMING)
    for _ in range(40):
        with engine.begin() as conn:
            conn.execute(text("UPDATE tasks SET state='ready', run_after=now() WHERE state='scheduled'"))
        wid = broker.register_worker("probe", "w", 1)
        leases = broker.claim(wid, "probe", 10)
        if not leases:
            break
        for lease in leases:
            if bad in lease.asset_ids:
                continue  # the worker "crashes" holding this lease
            assert broker.complete(lease, wid, write_probe_rows(lease.asset_ids, "ok"))
        broker.mark_worker_dead(wid)
        broker.sweep()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 0
        dead = conn.execute(text("SELECT asset_ids FROM dead_tasks")).scalars().all()
        assert [list(d) for d in dead] == [[bad]]
        ok = set(conn.execute(text("SELECT asset_id FROM probe_results")).scalars())
        assert ok == set(ids) - {bad}
        assert conn.execute(text("SELECT asset_id, error_class FROM item_errors")).all() == [(bad, "worker_crash")]
        assert conn.execute(text("SELECT count(*) FROM task_attempts WHERE outcome='reclaimed_dead_worker'")).scalar_one() >= 3


def test_deadline_reclaims_a_task_of_a_live_worker(engine):
    make_job(engine, 1, 1)
    broker = Broker(engine, TIMING)
    wid = broker.register_worker("probe", "w", 1)
    (lease,) = broker.claim(wid, "probe")
    with engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET deadline_at = now() - interval '1 s'"))
    broker.heartbeat(wid)
    assert broker.sweep().reclaimed == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT outcome FROM task_attempts")).scalar_one() == "reclaimed_deadline"
