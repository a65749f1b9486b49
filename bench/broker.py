"""Broker claim + complete throughput: ours against PgQueuer, graphile-worker, procrastinate and a bare
SQL loop, at 1 and 64 assets per task.

Method
------
- One fresh embedded PostgreSQL 18 (``curation.embedded.EmbeddedPostgres`` in a temporary folder, the
  project's default server settings, ``synchronous_commit`` on unless ``--synchronous-commit off``)
  serves every system; each gets its own database on it (``CREATE DATABASE``): ours migrated with
  ``curation.db.upgrade``, procrastinate's schema applied with ``schema_manager.apply_schema()``,
  PgQueuer's with ``Queries(driver).install()``, graphile-worker's with its CLI ``--schema-only``. The
  peers' databases are re-created for every run; ours is truncated.
- The whole backlog is enqueued (and ``ANALYZE``d) before any worker starts: setup is not timed.
- ``--workers`` worker *processes* per system (Python: multiprocessing, spawn; graphile-worker: Node
  processes). Every process connects and reports ready; then all are released at once. No-op work.

    ours           ``curation.broker.Broker``, as ``workers/runtime.py`` uses it, ``write_results`` a no-op:
                   "per-task commit": ``claim(n)`` then one ``complete()`` transaction per task (claim
                   ``--claim-n`` at 1 asset/task, 1 at 64); "complete_many": ``claim(b)`` then one
                   ``complete_many()`` transaction for the b tasks (``--batch`` list at 1 asset/task,
                   ``--batch-64`` at 64). ``--write-rows`` adds the cases again with one result row per
                   asset written in the completion transaction.
    bare SQL loop  the reference: the same design with nothing around it (psycopg 3, one connection,
                   prepared statements): one transaction claims 1 task with the broker's claim SQL, one
                   completes it (fenced delete + attempt row), at 1 and 64 assets per task.
    PgQueuer       ``QueueManager.run(batch_size=b, mode=drain)`` per process for each b of ``--pgq-batch``;
                   one job per item; completions buffered and flushed in batches (its design).
    graphile-worker 0.17.3 (npm, installed under the git-ignored ``bench/.node`` when missing; 0.18 needs
                   Node >= 22.18): ``bench/graphile_worker_peer.cjs`` per process with the settings of its
                   performance page: ``concurrentJobs`` 24, ``maxPoolSize`` 25, ``localQueue.size`` 500,
                   ``completeJobBatchDelay`` 0, ``failJobBatchDelay`` 0 (``--gw-concurrency``,
                   ``--gw-local-queue``, a list); one job per item.
    procrastinate  ``App.run_worker(concurrency=--procr-concurrency (1), wait=False, listen_notify=False)``
                   per process; one job per item.

- Clock: from the first claim to the last completion on each system's own ledger: ours and the bare
  loop ``min(task_attempts.claimed_at)`` .. ``max(task_attempts.ended_at)``; procrastinate
  ``procrastinate_events`` 'started' .. 'succeeded'; PgQueuer ``pgqueuer_log`` 'picked' ..
  'successful'. graphile-worker keeps no ledger (a completed job is deleted): from its first job's
  start to the first process seeing the queue empty (polled every 10 ms). That leaves its first batch
  fetch out (with ``localQueue.size`` 2,000 and 4 processes, most of a 10,000-job backlog), which
  flatters it; the rate from its first local queue's start (``localQueue:init``, right before the first
  fetch, its pool's first connection included) is printed on each run too. The harness's wall clock, from
  releasing the workers to the last one exiting (client start-up and shutdown included), is printed
  alongside.
- items/s = items completed / that span (an item is one asset for ours and the bare loop, one job for
  the peers). Every run checks that all items were completed. Cases are interleaved, ``--runs`` times;
  the table shows medians, and the ratios compare each of our cases with each peer at its best measured
  setting. Cases that commit once per item run ``--slow-items`` items.

    python bench/broker.py [--items 10000] [--slow-items 2000] [--runs 3] [--batch 64,256,1024]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGE = "bench"

# quiet, in the parent and in every spawned worker: procrastinate warns that the App lives in __main__,
# platformdirs that XDG_RUNTIME_DIR is unset
logging.getLogger("procrastinate").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def _sa_url_to_libpq(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://")


def _create_db(admin_url: str, name: str) -> str:
    from sqlalchemy import create_engine, text

    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    eng.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def _analyze(url: str) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text("ANALYZE"))
    eng.dispose()


def _query(url: str, sql: str) -> tuple:
    """One row from ``sql`` on ``url`` (autocommit)."""
    from sqlalchemy import create_engine, text

    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            return tuple(conn.execute(text(sql)).one())
    finally:
        eng.dispose()


# --- ours ---------------------------------------------------------------------------------------

_SCRATCH_DDL = "CREATE TABLE IF NOT EXISTS bench_results (asset_id bigint PRIMARY KEY, stage_version text, score real)"


def _ours_migrate(url: str) -> None:
    from sqlalchemy import text

    from curation.db import make_engine, upgrade

    eng = make_engine(url)
    upgrade(eng)
    with eng.begin() as conn:
        conn.execute(text(_SCRATCH_DDL))
    eng.dispose()


def _ours_setup(url: str, items: int, per_task: int) -> None:
    from sqlalchemy import text

    from curation.broker import enqueue
    from curation.db import make_engine

    eng = make_engine(url)
    with eng.begin() as conn:
        conn.execute(text("TRUNCATE tasks, task_attempts, dead_tasks, workers, jobs, bench_results "
                          "RESTART IDENTITY CASCADE"))
        job = conn.execute(
            text("INSERT INTO jobs (name, modality, spec, stages) "
                 "VALUES ('bench', 'image', '{}'::jsonb, ARRAY['bench']) RETURNING job_id")
        ).scalar_one()
        ids = list(range(1, items + 1))
        chunks = [(f"c{i}", ids[s:s + per_task]) for i, s in enumerate(range(0, items, per_task))]
        for s in range(0, len(chunks), 5000):
            enqueue(conn, job_id=job, stage=STAGE, stage_version="bench@1", chunks=chunks[s:s + 5000],
                    max_attempts=5, max_runtime_s=600)
    eng.dispose()
    _analyze(url)


def _ours_worker(url: str, claim_n: int, write_rows: bool, batched: bool, ready, start, done) -> None:
    from sqlalchemy import BigInteger, Column, Float, MetaData, Table, Text
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    from curation.broker import Broker, Completion
    from curation.db import make_engine

    scratch = Table("bench_results", MetaData(), Column("asset_id", BigInteger, primary_key=True),
                    Column("stage_version", Text), Column("score", Float))

    def writer(lease) -> Callable:
        if not write_rows:
            return lambda conn: 0
        rows = [{"asset_id": a, "stage_version": "bench@1", "score": 0.5} for a in lease.asset_ids]

        def write(conn) -> int:  # what workers/runtime.py's _writer does for a stage's result table
            conn.execute(pg_insert(scratch).values(rows).on_conflict_do_nothing())
            return len(rows)

        return write

    broker = Broker(make_engine(url, pool_size=1))
    wid = broker.register_worker(STAGE, "bench", 0)
    with broker.engine.connect():  # open the pooled connection before the start signal
        pass
    ready.put(1)
    start.wait()
    n = 0
    while True:
        leases = broker.claim(wid, STAGE, claim_n)
        if not leases:
            break
        if batched:  # the runtime's flush: the claimed tasks' completions in one transaction
            outcomes = broker.complete_many([Completion(lease, writer(lease)) for lease in leases], wid)
        else:  # one transaction per task
            outcomes = [broker.complete(lease, wid, writer(lease)) for lease in leases]
        if not all(o is True for o in outcomes):
            raise RuntimeError(f"completions fenced out or failed: {outcomes}")
        n += sum(len(lease.asset_ids) for lease in leases)
    broker.engine.dispose()
    done.put(n)


def _ours_span(url: str) -> tuple[float, int]:
    return _query(url, "SELECT extract(epoch FROM max(ended_at) - min(claimed_at)), coalesce(sum(n_items), 0) "
                       "FROM task_attempts WHERE outcome = 'ok'")


# --- the bare SQL loop (reference) ---------------------------------------------------------------

_BARE_CLAIM = """
    WITH picked AS MATERIALIZED (
        SELECT task_id FROM tasks WHERE stage = %s AND state = 'ready' AND run_after <= now()
        ORDER BY priority, task_id LIMIT 1 FOR UPDATE SKIP LOCKED)
    UPDATE tasks t SET state = 'leased', attempt = t.attempt + 1, lease_id = gen_random_uuid(), lease_owner = %s,
        claimed_at = now(), deadline_at = now() + t.max_runtime_s * interval '1 second'
    FROM picked WHERE t.task_id = picked.task_id
    RETURNING t.task_id, t.job_id, t.attempt, t.lease_id, cardinality(t.asset_ids)
"""
_BARE_DELETE = ("DELETE FROM tasks WHERE task_id = %s AND lease_id = %s AND state = 'leased' "
                "RETURNING claimed_at")
_BARE_LOG = ("INSERT INTO task_attempts (task_id, job_id, stage, attempt, lease_id, worker_id, claimed_at, "
             "outcome, n_items, n_ok) VALUES (%s, %s, %s, %s, %s, %s, %s, 'ok', %s, 0)")


def _bare_worker(url: str, ready, start, done) -> None:
    """The same design with nothing around it: psycopg 3, one connection, prepared statements; one
    transaction claims one task (the broker's claim SQL), one transaction completes it (fenced delete +
    attempt row). No job bookkeeping, no pool, no ORM."""
    import psycopg

    conn = psycopg.connect(_sa_url_to_libpq(url), prepare_threshold=0)
    wid = conn.execute("INSERT INTO workers (stage, host, pid) VALUES (%s, 'bare', 0) RETURNING worker_id",
                       (STAGE,)).fetchone()[0]
    conn.commit()
    ready.put(1)
    start.wait()
    n = 0
    while True:
        row = conn.execute(_BARE_CLAIM, (STAGE, wid)).fetchone()
        conn.commit()
        if row is None:
            break
        task_id, job_id, attempt, lease_id, n_items = row
        claimed = conn.execute(_BARE_DELETE, (task_id, lease_id)).fetchone()
        if claimed is None:
            raise RuntimeError(f"task {task_id} fenced out")
        conn.execute(_BARE_LOG, (task_id, job_id, STAGE, attempt, lease_id, wid, claimed[0], n_items))
        conn.commit()
        n += n_items
    conn.close()
    done.put(n)


# --- graphile-worker (Node) ----------------------------------------------------------------------

GRAPHILE_VERSION = "0.17.3"  # the newest release that runs on Node 20 (0.18 needs Node >= 22.18)
NODE_DIR = Path(__file__).resolve().parent / ".node"  # git-ignored (a .gitignore of its own)
_graphile_results: dict[str, list[dict]] = {}


def _ensure_graphile() -> None:
    import json
    import subprocess

    pkg = NODE_DIR / "node_modules" / "graphile-worker" / "package.json"
    if pkg.is_file() and json.loads(pkg.read_text())["version"] == GRAPHILE_VERSION:
        return
    NODE_DIR.mkdir(exist_ok=True)
    (NODE_DIR / ".gitignore").write_text("*\n")
    if not (NODE_DIR / "package.json").is_file():
        (NODE_DIR / "package.json").write_text('{"private": true}\n')
    print(f"installing graphile-worker@{GRAPHILE_VERSION} under {NODE_DIR} (npm)", flush=True)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
                    f"graphile-worker@{GRAPHILE_VERSION}"], check=True, capture_output=True)


def _graphile_setup(url: str, items: int) -> None:
    import subprocess

    import psycopg

    libpq = _sa_url_to_libpq(url)
    subprocess.run(["node", str(NODE_DIR / "node_modules" / "graphile-worker" / "dist" / "cli.js"),
                    "--schema-only", "-c", libpq], check=True, capture_output=True)
    with psycopg.connect(libpq, autocommit=True) as conn:
        for s in range(0, items, 10000):
            conn.execute("SELECT graphile_worker.add_jobs(ARRAY(SELECT ROW('noop', '{}'::json, NULL, NULL, NULL, "
                         "NULL, NULL, NULL)::graphile_worker.job_spec FROM generate_series(1, %s)))",
                         (min(10000, items - s),))
        conn.execute("ANALYZE")


def _graphile_spawn(url: str, workers: int, concurrency: int, local_queue: int) -> float:
    import json
    import subprocess

    script = Path(__file__).resolve().parent / "graphile_worker_peer.cjs"
    procs = [subprocess.Popen(["node", str(script), str(NODE_DIR), _sa_url_to_libpq(url), str(concurrency),
                               str(local_queue)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("graphile-worker process did not start")
    t0 = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readline()) for p in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        if p.wait(60) != 0:
            raise RuntimeError(f"graphile-worker exit code {p.returncode}")
    _graphile_results[url] = results
    return wall


def _graphile_span(url: str) -> tuple[float, int]:
    # graphile-worker deletes a job when it completes and keeps no ledger: the span runs from its first
    # job's start to the first process seeing the queue empty (all completions committed, +<= 10 ms).
    # That leaves its first batch fetch out of the span (flattering it, so the ratio is conservative);
    # from the first local queue's start instead (its pool's first connection included) is printed too.
    got = _graphile_results.pop(url)
    n = sum(r["n"] for r in got)
    drained = min(r["drained"] for r in got)
    fetch = min(r["fetching"] or r["first"] for r in got if r["n"])
    print(f"        graphile-worker from its first fetch: {n / ((drained - fetch) / 1000):,.0f} items/s", flush=True)
    return (drained - min(r["first"] for r in got if r["n"])) / 1000, n


# --- procrastinate -------------------------------------------------------------------------------


def _procrastinate_app(url: str):
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_sa_url_to_libpq(url)))

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
    _analyze(url)


def _procrastinate_worker(url: str, concurrency: int, ready, start, done) -> None:
    app, _ = _procrastinate_app(url)
    ready.put(1)
    start.wait()
    app.run_worker(concurrency=concurrency, wait=False, install_signal_handlers=False, listen_notify=False)
    done.put(0)


def _procrastinate_span(url: str) -> tuple[float, int]:
    return _query(url, "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded') "
                       "- min(at) FILTER (WHERE type = 'started')), count(*) FILTER (WHERE type = 'succeeded') "
                       "FROM procrastinate_events")


# --- PgQueuer ------------------------------------------------------------------------------------


def _pgq_setup(url: str, items: int) -> None:
    import psycopg
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.queries import Queries

    async def go():
        conn = await psycopg.AsyncConnection.connect(_sa_url_to_libpq(url), autocommit=True)
        q = Queries(PsycopgDriver(conn))
        await q.install()
        for s in range(0, items, 1000):
            n = min(1000, items - s)
            await q.enqueue(["noop"] * n, [None] * n, [0] * n)
        await conn.execute("ANALYZE")
        await conn.close()

    asyncio.run(go())


def _pgq_worker(url: str, batch: int, ready, start, done) -> None:
    import psycopg
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    async def go():
        conn = await psycopg.AsyncConnection.connect(_sa_url_to_libpq(url), autocommit=True)
        qm = QueueManager(Queries(PsycopgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job) -> None:
            return None

        ready.put(1)
        start.wait()
        await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
        await conn.close()

    asyncio.run(go())
    done.put(0)


def _pgq_span(url: str) -> tuple[float, int]:
    return _query(url, "SELECT extract(epoch FROM max(created) FILTER (WHERE status = 'successful') "
                       "- min(created) FILTER (WHERE status = 'picked')), "
                       "count(*) FILTER (WHERE status = 'successful') FROM pgqueuer_log")


# --- harness -------------------------------------------------------------------------------------


@dataclass
class Case:
    system: str  # "ours" | "bare SQL" | "procrastinate" | "PgQueuer" | "graphile-worker"
    label: str
    per_task: int  # assets per task (1 for the peers: one job per item)
    items: int
    batch: str  # how work is fetched and completed, for the table
    setup: Callable[[], str]  # prepares the backlog, returns the database URL the workers use
    worker: Callable | None
    worker_args: Callable[[str], tuple]
    span: Callable[[str], tuple[float, int]]
    rates: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    spawn: Callable[[str, int], float] | None = None  # replaces the Python worker processes (Node)


def _spawn_and_time(case: Case, url: str, workers: int) -> float:
    if case.spawn is not None:
        return case.spawn(url, workers)
    ctx = mp.get_context("spawn")
    ready, start, done = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=case.worker, args=(*case.worker_args(url), ready, start, done)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        t0 = time.perf_counter()
        start.set()
        for _ in procs:
            done.get(timeout=600)
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"{case.label}: worker exit codes {bad}")
    return wall


def _ints(arg: str) -> list[int]:
    return [int(x) for x in arg.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--items", type=int, default=10000,
                    help="items per run at 1 item per task/job (ours complete_many, PgQueuer, graphile-worker)")
    ap.add_argument("--items-64", type=int, default=None,
                    help="assets per run at 64 assets/task (ours, bare SQL; default 16 x --items)")
    ap.add_argument("--slow-items", type=int, default=2000,
                    help="items per run of the cases that commit once per item (ours per-task commit and the "
                         "bare SQL loop at 1 asset/task, procrastinate)")
    ap.add_argument("--synchronous-commit", choices=["on", "off"], default="on",
                    help="the server's synchronous_commit (on: every commit waits for its WAL flush)")
    ap.add_argument("--workers", type=int, default=4, help="worker processes per system")
    ap.add_argument("--runs", type=int, default=3, help="measurements per case; the median is reported")
    ap.add_argument("--batch", default="64,256,1024",
                    help="ours at 1 asset/task: tasks per claim and per complete_many flush (comma-separated)")
    ap.add_argument("--batch-64", type=int, default=4,
                    help="ours at 64 assets/task: tasks per claim and per complete_many flush")
    ap.add_argument("--claim-n", type=int, default=16,
                    help="ours, one completion transaction per task, at 1 asset/task: tasks per claim")
    ap.add_argument("--procr-concurrency", type=int, default=1, help="procrastinate: concurrency per process")
    ap.add_argument("--pgq-batch", default="4,16,64,256",
                    help="PgQueuer batch sizes to measure (comma-separated); ratios use its best")
    ap.add_argument("--gw-concurrency", type=int, default=24, help="graphile-worker: concurrentJobs per process")
    ap.add_argument("--gw-local-queue", default="500",
                    help="graphile-worker: localQueue.size values to measure (comma-separated)")
    ap.add_argument("--write-rows", action="store_true",
                    help="also measure ours writing one result row per asset in the completion transaction")
    ap.add_argument("--systems", default="ours,bare,pgqueuer,graphile,procrastinate",
                    help="comma-separated subset of ours, bare, pgqueuer, graphile, procrastinate")
    args = ap.parse_args()
    systems = {s.strip().lower() for s in args.systems.split(",")}
    n, n64, w, slow = args.items, args.items_64 or args.items * 16, args.workers, args.slow_items
    if "graphile" in systems:
        _ensure_graphile()

    from curation.embedded import EmbeddedPostgres

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        server.server_options = (*server.server_options, f"synchronous_commit={args.synchronous_commit}")
        admin = server.start()
        try:
            ours_url = _create_db(admin, "bench_ours")
            _ours_migrate(ours_url)

            def ours_setup(items: int, per_task: int) -> Callable[[], str]:
                def setup() -> str:
                    _ours_setup(ours_url, items, per_task)
                    return ours_url
                return setup

            def fresh(name: str, fill: Callable[[str, int], None], items: int) -> Callable[[], str]:
                def setup() -> str:
                    url = _create_db(admin, name)
                    fill(url, items)
                    return url
                return setup

            cases: list[Case] = []
            if "ours" in systems:
                for write in ([False, True] if args.write_rows else [False]):
                    sfx = ", +1 result row/asset" if write else ""
                    cases.append(Case("ours", f"ours, per-task commit{sfx}", 1, slow, f"claim {args.claim_n}, 1/tx",
                                      ours_setup(slow, 1), _ours_worker,
                                      lambda u, write=write: (u, args.claim_n, write, False), _ours_span))
                    for b in _ints(args.batch):
                        cases.append(Case("ours", f"ours, complete_many{sfx}", 1, n, f"claim {b}, {b}/tx",
                                          ours_setup(n, 1), _ours_worker,
                                          lambda u, write=write, b=b: (u, b, write, True), _ours_span))
                    cases.append(Case("ours", f"ours, per-task commit{sfx}", 64, n64, "claim 1, 1/tx",
                                      ours_setup(n64, 64), _ours_worker,
                                      lambda u, write=write: (u, 1, write, False), _ours_span))
                    cases.append(Case("ours", f"ours, complete_many{sfx}", 64, n64,
                                      f"claim {args.batch_64}, {args.batch_64}/tx", ours_setup(n64, 64),
                                      _ours_worker, lambda u, write=write: (u, args.batch_64, write, True),
                                      _ours_span))
            if "bare" in systems:
                for per_task, items in ((1, slow), (64, n64)):
                    cases.append(Case("bare SQL", "bare SQL loop", per_task, items, "claim 1, 1/tx",
                                      ours_setup(items, per_task), _bare_worker, lambda u: (u,), _ours_span))
            if "pgqueuer" in systems:
                for b in _ints(args.pgq_batch):
                    cases.append(Case("PgQueuer", f"PgQueuer (batch {b})", 1, n, f"batch {b}",
                                      fresh("bench_pgq", _pgq_setup, n), _pgq_worker,
                                      lambda u, b=b: (u, b), _pgq_span))
            if "graphile" in systems:
                for lq in _ints(args.gw_local_queue):
                    cases.append(Case("graphile-worker", f"graphile-worker (lq {lq})", 1, n,
                                      f"conc {args.gw_concurrency}, lq {lq}",
                                      fresh("bench_gw", _graphile_setup, n), None, lambda u: (), _graphile_span,
                                      spawn=lambda u, w, lq=lq: _graphile_spawn(u, w, args.gw_concurrency, lq)))
            if "procrastinate" in systems:
                cases.append(Case("procrastinate", "procrastinate", 1, slow,
                                  f"concurrency {args.procr_concurrency}",
                                  fresh("bench_procr", _procrastinate_setup, slow),
                                  _procrastinate_worker, lambda u: (u, args.procr_concurrency),
                                  _procrastinate_span))

            for run in range(args.runs):
                for case in cases:
                    url = case.setup()
                    wall = _spawn_and_time(case, url, w)
                    span, done_items = case.span(url)
                    if int(done_items) != case.items:
                        raise RuntimeError(f"{case.label}: {done_items} of {case.items} items completed")
                    case.rates.append(case.items / float(span))
                    case.walls.append(case.items / wall)
                    print(f"run {run + 1}: {case.label:<34} {case.per_task:>2} asset(s)/task  "
                          f"{case.rates[-1]:>9,.0f} items/s  (span {float(span):.2f} s, wall {wall:.2f} s)",
                          flush=True)
        finally:
            server.stop("fast")

    print()
    print(f"{w} worker processes per system, embedded PostgreSQL 18 (synchronous_commit={args.synchronous_commit}), "
          f"no-op work; items/s = items completed / "
          f"(first claim .. last completion, each system's ledger; graphile-worker, which keeps none: first "
          f"job run .. queue seen empty); median of {args.runs} runs; total {time.perf_counter() - started:.0f} s")
    head = (f"{'system':<38}{'assets/task':>12}  {'fetch / complete':<22}{'items':>8}{'items/s':>10}"
            f"{'wall items/s':>14}")
    print(head)
    print("-" * len(head))
    med = {id(c): statistics.median(c.rates) for c in cases}
    wmed = {id(c): statistics.median(c.walls) for c in cases}
    for c in cases:
        print(f"{c.label:<38}{c.per_task:>12}  {c.batch:<22}{c.items:>8}{med[id(c)]:>10,.0f}{wmed[id(c)]:>14,.0f}")
    print()
    for c in cases:
        print(f"  {c.label} @ {c.per_task}/task, runs: {', '.join(f'{r:,.0f}' for r in c.rates)} items/s")

    def best(system: str, per_task: int) -> Case | None:
        got = [c for c in cases if c.system == system and c.per_task == per_task]
        return max(got, key=lambda c: med[id(c)]) if got else None

    print("\nratios (ledger span; wall clock in brackets); each peer at its best measured setting:")
    for per_task, peers in ((1, ("PgQueuer", "graphile-worker", "procrastinate", "bare SQL")), (64, ("bare SQL",))):
        for ours in (c for c in cases if c.system == "ours" and c.per_task == per_task):
            for system in peers:
                peer = best(system, per_task)
                if peer is None:
                    continue
                print(f"  {per_task:>2} asset(s)/task  {ours.label + ' (' + ours.batch + ')':<42} / {peer.label:<24} "
                      f"{med[id(ours)] / med[id(peer)]:>6.2f}x  ({wmed[id(ours)] / wmed[id(peer)]:.2f}x)")


if __name__ == "__main__":
    main()
