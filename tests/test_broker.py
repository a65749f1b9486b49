"""The broker against a real PostgreSQL: claims, fencing, reclaim, back-off, bisection, dead letter."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from sqlalchemy import text

from curation.broker import Broker, Completion, NextStage, enqueue, prune_attempts
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


# --- batched completions (complete_many) ----------------------------------------------------------


def insert_probe_rows(asset_ids):
    """A plain INSERT (no ON CONFLICT): a second effect for the same asset would raise."""
    def write(conn):
        conn.execute(
            text("INSERT INTO probe_results (asset_id, config_id, stage_version, format, width, height, mode, bytes, "
                 "sha256, decode_ms) SELECT a, 'probe:test', 'probe@1', 'x', 1, 1, 'RGB', 1, '\\x00', 0 "
                 "FROM unnest(CAST(:ids AS bigint[])) a"),
            {"ids": list(asset_ids)},
        )
        return len(asset_ids)
    return write


def test_complete_many_fences_each_lease_on_its_own(engine):
    make_job(engine, 8, 2)
    broker = Broker(engine, TIMING)
    zombie = broker.register_worker("probe", "zombie", 1)
    healthy = broker.register_worker("probe", "healthy", 2)
    leases = broker.claim(zombie, "probe", 4)
    assert len(leases) == 4
    with engine.begin() as conn:  # lease 1 is reclaimed and handed to another worker meanwhile
        conn.execute(text("UPDATE tasks SET lease_id = gen_random_uuid(), lease_owner = :w WHERE task_id = :t"),
                     {"w": healthy, "t": leases[1].task_id})

    def broken(conn):
        raise ValueError("stage bug on this chunk")

    batch = [Completion(leases[0], insert_probe_rows(leases[0].asset_ids),
                        survivors=leases[0].asset_ids, next_stage=NextStage("resolution", "resolution@1", 60)),
             Completion(leases[1], insert_probe_rows(leases[1].asset_ids)),
             Completion(leases[2], broken),
             Completion(leases[3], insert_probe_rows(leases[3].asset_ids))]
    outcomes = broker.complete_many(batch, zombie)
    assert outcomes[0] is True and outcomes[1] is False and outcomes[3] is True
    assert isinstance(outcomes[2], ValueError)
    with engine.connect() as conn:
        written = set(conn.execute(text("SELECT asset_id FROM probe_results")).scalars())
        assert written == set(leases[0].asset_ids) | set(leases[3].asset_ids)
        left = dict(conn.execute(text("SELECT task_id, state FROM tasks WHERE stage = 'probe'")).all())
        assert left == {leases[1].task_id: "leased", leases[2].task_id: "leased"}  # the other's, and ours to fail()
        nxt = conn.execute(text("SELECT asset_ids FROM tasks WHERE stage = 'resolution'")).scalars().all()
        assert [list(a) for a in nxt] == [list(leases[0].asset_ids)]
        attempts = Counter(conn.execute(text("SELECT outcome FROM task_attempts")).scalars())
        assert attempts == {"ok": 2, "fenced_out": 1}
    assert broker.fail(leases[2], zombie, "stage bug") == "scheduled"


def test_complete_many_finishes_the_job_with_its_last_tasks(engine):
    job, _ = make_job(engine, 6, 1)
    broker = Broker(engine, TIMING)
    wid = broker.register_worker("probe", "w", 1)
    leases = broker.claim(wid, "probe", 10)
    assert broker.complete_many([Completion(l, insert_probe_rows(l.asset_ids)) for l in leases], wid) == [True] * 6
    assert broker.complete_many([], wid) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id = :j"), {"j": job}).scalar_one() == "completed"
        assert conn.execute(text("SELECT count(*), sum(n_ok) FROM task_attempts WHERE outcome = 'ok'")).one() == (6, 6)


def test_crash_between_process_and_flush_reruns_the_unflushed_tasks(engine):
    """The worker processed its tasks but died before flushing their completions: nothing of them is in
    the database, the sweep reclaims them, another worker reruns them (at-least-once execution) and
    each asset ends with exactly one result row (exactly-once effect)."""
    _, ids = make_job(engine, 12, 1)
    broker = Broker(engine, TIMING)
    crashed = broker.register_worker("probe", "crashed", 1)
    first = broker.claim(crashed, "probe", 5)
    assert broker.complete_many([Completion(l, insert_probe_rows(l.asset_ids)) for l in first[:2]], crashed) == [True] * 2
    # first[2:] processed, completions buffered in the dead process: never flushed
    broker.mark_worker_dead(crashed)
    assert broker.sweep().reclaimed == 3
    with engine.begin() as conn:  # skip the back-off for the test
        conn.execute(text("UPDATE tasks SET state = 'ready', run_after = now() WHERE state = 'scheduled'"))
    healthy = broker.register_worker("probe", "healthy", 2)
    while leases := broker.claim(healthy, "probe", 4):
        assert all(broker.complete_many([Completion(l, insert_probe_rows(l.asset_ids)) for l in leases], healthy))
    # the crashed worker's buffered completions, flushed late (e.g. it was only paused): fenced out
    late = broker.complete_many([Completion(l, insert_probe_rows(l.asset_ids)) for l in first[2:]], crashed)
    assert late == [False] * 3
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT asset_id, count(*) FROM probe_results GROUP BY asset_id")).all()
        assert sorted(a for a, _ in rows) == sorted(ids) and {n for _, n in rows} == {1}
        reruns = conn.execute(text("SELECT count(*) FROM task_attempts WHERE outcome = 'ok' AND attempt = 2")).scalar_one()
        assert reruns == 3
        assert conn.execute(text("SELECT status FROM jobs")).scalar_one() == "completed"


def test_many_batching_workers_with_reclaims_give_every_item_exactly_one_outcome(engine):
    """8 workers claim and flush in batches while the sweep keeps reclaiming tasks whose (very short)
    deadline passed: late flushes are fenced out, the reruns commit; every asset ends with exactly one
    result row or one item error, and no task is left."""
    timing = BrokerTiming(heartbeat_s=0.5, worker_timeout_s=30, sweep_s=0.05, backoff_base_s=0.01, backoff_max_s=0.05)
    n = 600
    with engine.begin() as conn:
        job = conn.execute(text("INSERT INTO jobs (name, modality, spec, stages) VALUES ('j', 'image', '{}', "
                                "ARRAY['probe']) RETURNING job_id")).scalar_one()
        src = conn.execute(text("INSERT INTO sources (name, uri) VALUES ('s', '/x') RETURNING source_id")).scalar_one()
        ids = conn.execute(text("INSERT INTO assets (uri, kind, source_id) SELECT '/x/' || g, 'image', :s "
                                "FROM generate_series(1, :n) g RETURNING asset_id"), {"s": src, "n": n}).scalars().all()
        enqueue(conn, job_id=job, stage="probe", stage_version="probe@1", chunks=[(f"c{a}", [a]) for a in ids],
                max_attempts=50, max_runtime_s=0.3)
    broker = Broker(engine, timing)
    outcomes: Counter = Counter()
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def worker(seed: int):
        rng = random.Random(seed)
        wid = broker.register_worker("probe", "w", seed)
        try:
            while not stop.is_set():
                leases = broker.claim(wid, "probe", rng.randint(1, 9))
                if not leases:
                    time.sleep(0.01)
                    continue
                if rng.random() < 0.1:
                    time.sleep(0.4)  # a slow batch: its deadline passes and the sweep may reclaim it
                got = broker.complete_many([Completion(l, insert_probe_rows(l.asset_ids)) for l in leases], wid)
                with lock:
                    outcomes.update("exception" if isinstance(o, Exception) else o for o in got)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def sweeper():
        while not stop.is_set():
            broker.sweep()
            time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)] + [threading.Thread(target=sweeper)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 0:
                    break
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert outcomes["exception"] == 0 and outcomes[True] >= n
    assert outcomes[False] > 0  # ~50 late flushes per run: the fence was exercised
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar_one() == 0
        results = Counter(conn.execute(text("SELECT asset_id FROM probe_results")).scalars())
        item_errors = Counter(conn.execute(text("SELECT asset_id FROM item_errors")).scalars())
        assert max(results.values(), default=1) == 1
        assert set(results) | set(item_errors) == set(ids) and not set(results) & set(item_errors)
        per_task = conn.execute(text("SELECT max(c) FROM (SELECT count(*) c FROM task_attempts WHERE outcome='ok' "
                                     "GROUP BY task_id) s")).scalar_one()
        assert per_task == 1
        assert outcomes[True] == sum(results.values())


def test_prune_deletes_only_attempts_older_than_the_cutoff(engine, db_url):
    import os
    import subprocess
    import sys

    make_job(engine, 3, 1)
    broker = Broker(engine, TIMING)
    wid = broker.register_worker("probe", "w", 1)
    leases = broker.claim(wid, "probe", 3)
    assert broker.complete_many([Completion(l, insert_probe_rows(l.asset_ids)) for l in leases], wid) == [True] * 3
    with engine.begin() as conn:  # two of the three are from 40 and 31 days ago
        conn.execute(text("UPDATE task_attempts SET ended_at = now() - interval '40 days' WHERE task_id = :t"),
                     {"t": leases[0].task_id})
        conn.execute(text("UPDATE task_attempts SET ended_at = now() - interval '31 days' WHERE task_id = :t"),
                     {"t": leases[1].task_id})
    assert prune_attempts(engine, 35 * 86400, batch=1).rows == 1  # both in the DEFAULT partition (no day partition then)
    env = dict(os.environ, CURATION_DATABASE_URL=db_url)
    proc = subprocess.run([sys.executable, "-m", "curation.cli", "broker", "prune", "--older-than", "30d"], check=False,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "1 attempt row(s)" in proc.stdout
    with engine.connect() as conn:
        assert conn.execute(text("SELECT task_id FROM task_attempts")).scalars().all() == [leases[2].task_id]
        assert conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one() == 3  # results stay


def test_a_claim_lost_in_a_crash_only_fences_out_its_completion(engine):
    """Claims commit without waiting for their WAL flush. After a crash that loses one, the task's row
    is as before the claim: the worker's completion is fenced out, and the task is claimed and completed
    again."""
    make_job(engine, 2, 2)
    broker = Broker(engine, TIMING)
    wid = broker.register_worker("probe", "w", 1)
    (lost,) = broker.claim(wid, "probe")
    with engine.begin() as conn:  # the row as it was before the claim
        conn.execute(text("UPDATE tasks SET state = 'ready', attempt = 0, lease_id = NULL, lease_owner = NULL, "
                          "claimed_at = NULL, deadline_at = NULL"))
    assert broker.complete(lost, wid, insert_probe_rows(lost.asset_ids)) is False
    (again,) = broker.claim(wid, "probe")
    assert again.attempt == 1 and again.lease_id != lost.lease_id
    assert broker.complete(again, wid, insert_probe_rows(again.asset_ids)) is True
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one() == 2


def test_the_worker_flushes_the_completions_of_small_tasks_together(engine, db_url, photo_dir):
    """The runtime's loop: 1-asset tasks, claimed 4 at a time, completions flushed 8 per transaction
    (``flush_max_tasks``). Every asset gets one result, the job completes, and the attempts share far
    fewer commit timestamps (``ended_at`` is the transaction's start) than there are tasks."""
    from tests.helpers import submit_spec
    from workers.runtime import StageWorker

    n = len(list(photo_dir.iterdir()))
    job = submit_spec(engine, {"name": "flush", "modality": "image", "source": {"uri": str(photo_dir)},
                               "stages": [{"name": "probe"}], "chunk_size": 1})
    timing = BrokerTiming(heartbeat_s=0.5, worker_timeout_s=30, sweep_s=1, flush_max_tasks=8, flush_max_s=30)
    stats = StageWorker(db_url, "probe", timing=timing, claim_batch=4).run(idle_exit_s=0.5)
    assert stats["tasks"] == n and stats["fenced_out"] == 0 and stats["items_ok"] + stats["item_errors"] == n
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM task_attempts WHERE outcome = 'ok'")).scalar_one() == n
        assert conn.execute(text("SELECT count(DISTINCT ended_at) FROM task_attempts")).scalar_one() <= -(-n // 8) + 1
        assert conn.execute(text("SELECT count(*) FROM probe_results")).scalar_one() == stats["items_ok"]
        assert conn.execute(text("SELECT status FROM jobs WHERE job_id = :j"), {"j": job}).scalar_one() == "completed"


def test_only_a_dead_workers_last_claim_is_charged_with_its_crash(engine):
    """With batched completions a worker dies holding tasks it had finished (their completions not yet
    flushed) besides the one it was running, which it claimed last. The finished ones go back to ready
    with the attempt refunded and no crash counted; the last claim is charged as before."""
    make_job(engine, 3, 1)
    broker = Broker(engine, TIMING)
    wid = broker.register_worker("probe", "w", 1)
    (held,) = broker.claim(wid, "probe")  # finished, completion held for the flush
    (running,) = broker.claim(wid, "probe")  # the crash happens in this one
    broker.mark_worker_dead(wid)
    assert broker.sweep().reclaimed == 2
    with engine.connect() as conn:
        state = {r.task_id: r for r in conn.execute(text("SELECT task_id, state, attempt, crashes FROM tasks"))}
    assert (state[held.task_id].state, state[held.task_id].attempt, state[held.task_id].crashes) == ("ready", 0, 0)
    assert (state[running.task_id].state, state[running.task_id].attempt, state[running.task_id].crashes) == (
        "scheduled", 1, 1)
