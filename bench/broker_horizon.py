"""Broker throughput while another session pins the vacuum horizon (issue 14 §4; broker-design §4.7, T6).

Method
------
- One embedded PostgreSQL 18 (the project's settings: autovacuum on, ``idle_in_transaction_session_timeout``
  60 s), our schema, a backlog of ``--tasks`` tasks of ``--per-task`` assets.
- ``--workers`` processes run the runtime's loop with no-op work: claim ``--batch`` tasks, complete them
  with one ``Broker.complete_many`` flush, again.
- Three phases of ``--phase-s`` seconds each (the holder phase twice as long): **clean**; **held**: a
  session runs ``BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM tasks; SELECT pg_sleep(...)``
  — an *active* statement in a transaction with a snapshot (the idle-in-transaction timeout does not
  end it), so no dead row version newer than its snapshot can be vacuumed; **released**: the holder
  has committed.
- Every 5 s: items completed (from ``task_attempts``), ``n_dead_tup`` and size of ``tasks`` and its
  indexes. Reported: items/s of each phase and its ratio to the clean phase (target T6: held
  >= 0.75x, released back >= 0.95x), dead tuples and size at the end of each phase.

    python bench/broker_horizon.py [--phase-s 60] [--workers 4]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGE = "bench"


def _setup(url: str, tasks: int, per_task: int) -> None:
    from sqlalchemy import text

    from curation.broker import enqueue
    from curation.db import make_engine, upgrade

    eng = make_engine(url)
    upgrade(eng)
    with eng.begin() as conn:
        job = conn.execute(text("INSERT INTO jobs (name, modality, spec, stages) "
                                "VALUES ('bench', 'image', '{}'::jsonb, ARRAY['bench']) RETURNING job_id")).scalar_one()
        for s in range(0, tasks, 5000):
            chunks = [(f"c{i}", list(range(i * per_task + 1, (i + 1) * per_task + 1)))
                      for i in range(s, min(tasks, s + 5000))]
            enqueue(conn, job_id=job, stage=STAGE, stage_version="bench@1", chunks=chunks, max_attempts=5,
                    max_runtime_s=600)
    with eng.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE tasks"))
    eng.dispose()


def _worker(url: str, batch: int, stop) -> None:
    from curation.broker import Broker, Completion
    from curation.db import make_engine

    broker = Broker(make_engine(url, pool_size=1))
    wid = broker.register_worker(STAGE, "bench", 0)
    while not stop.is_set():
        leases = broker.claim(wid, STAGE, batch)
        if not leases:
            time.sleep(0.05)
            continue
        broker.complete_many([Completion(lease, lambda conn: 0) for lease in leases], wid)
    broker.engine.dispose()


def _sample(conn) -> tuple[float, int, int, int]:
    from sqlalchemy import text

    done = conn.execute(text("SELECT coalesce(sum(n_items), 0) FROM task_attempts WHERE outcome = 'ok'")).scalar_one()
    dead, size = conn.execute(text(
        "SELECT n_dead_tup, pg_total_relation_size('tasks') FROM pg_stat_user_tables WHERE relname = 'tasks'")).one()
    return time.monotonic(), int(done), int(dead), int(size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--phase-s", type=float, default=60.0, help="clean and released phases; held is 2x")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4, help="tasks per claim and per complete_many flush")
    ap.add_argument("--per-task", type=int, default=64)
    ap.add_argument("--tasks", type=int, default=150000)
    args = ap.parse_args()

    from sqlalchemy import create_engine, text

    from curation.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="bench-horizon-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        admin = server.start()
        try:
            eng = create_engine(admin, isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                conn.execute(text("CREATE DATABASE bench"))
            eng.dispose()
            url = admin.rsplit("/", 1)[0] + "/bench"
            _setup(url, args.tasks, args.per_task)
            ctx = mp.get_context("spawn")
            stop = ctx.Event()
            procs = [ctx.Process(target=_worker, args=(url, args.batch, stop)) for _ in range(args.workers)]
            for p in procs:
                p.start()
            mon = create_engine(url, isolation_level="AUTOCOMMIT")
            samples: list[tuple[str, tuple]] = []
            held_s = 2 * args.phase_s

            def holder() -> None:
                h = create_engine(url)
                with h.connect() as conn:
                    conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                    conn.execute(text("SELECT count(*) FROM tasks"))  # the snapshot: xmin pinned from here
                    conn.execute(text("SELECT pg_sleep(:s)"), {"s": held_s})
                    conn.commit()
                h.dispose()

            time.sleep(5)  # warm-up
            with mon.connect() as conn:
                for phase, length in (("clean", args.phase_s), ("held", held_s), ("released", args.phase_s)):
                    if phase == "held":
                        t = threading.Thread(target=holder)
                        t.start()
                    end = time.monotonic() + length
                    samples.append((phase, _sample(conn)))
                    while time.monotonic() < end:
                        time.sleep(min(5.0, max(0.0, end - time.monotonic())))
                        samples.append((phase, _sample(conn)))
                    if phase == "held":
                        t.join()
                    print(f"{phase}: done at {samples[-1][1][1]:,} items, n_dead_tup {samples[-1][1][2]:,}", flush=True)
            stop.set()
            for p in procs:
                p.join(60)
            mon.dispose()
        finally:
            server.stop("fast")

    print(f"\n{args.workers} workers, claim {args.batch} x {args.per_task} assets + one complete_many per batch; "
          f"phases {args.phase_s:.0f} s / {held_s:.0f} s held / {args.phase_s:.0f} s")
    rates = {}
    for phase in ("clean", "held", "released"):
        got = [s for p, s in samples if p == phase]
        (t0, n0, _, _), (t1, n1, dead, size) = got[0], got[-1]
        rates[phase] = (n1 - n0) / (t1 - t0)
        peak_dead = max(s[2] for s in got)
        print(f"  {phase:<9} {rates[phase]:>9,.0f} items/s  ({rates[phase] / rates['clean']:.2f}x clean)  "
              f"tasks n_dead_tup at end {dead:,} (max {peak_dead:,}), size {size / 2**20:.1f} MiB")
    held = [s for p, s in samples if p == "held"]
    windows = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(held)]
    if windows:
        print(f"  held phase per 5 s window: first {windows[0]:,.0f}, last {windows[-1]:,.0f} items/s")


if __name__ == "__main__":
    main()
