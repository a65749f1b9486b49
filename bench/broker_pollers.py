"""Claim latency with 1,000 pollers on one database (issue 14 §4, scale).

Method
------
- One embedded PostgreSQL 18 (the project's server settings, ``max_connections`` raised for the direct
  case), our schema migrated, a backlog of ``--tasks`` tasks of 64 assets each enqueued and ``ANALYZE``d.
- ``--pollers`` simulated workers, spread over ``--procs`` processes, one asyncio connection each
  (psycopg 3, no server-side prepared statements, so the same client works through PgBouncer's
  transaction pooling). Each poller loops: claim one task with the broker's claim statement
  (``FOR UPDATE SKIP LOCKED`` in a ``MATERIALIZED`` CTE; its commit does not wait for the WAL flush, as
  in ``Broker.claim``) and commit; "work" for ``--work-s`` (uniform
  0.5x..1.5x, so the pollers drift apart); complete it with the fenced delete + attempt row and commit.
  2,000 GPU workers taking 64 assets every 5 s make 400 claims/s (broker-design.md §5.1): the
  defaults (1,000 pollers, 2.5 s) ask for the same rate.
- Claim latency = claim statement + its commit, on the poller's clock, after ``--warmup-s``; p50, p99
  and max over all pollers. Every poller is connected before the clock starts. Also reported: the claim
  statement's own time inside the server (``clock_timestamp() - statement_timestamp()`` in its
  ``RETURNING``), which separates the database's work from queueing for CPU, connections and the client's
  event loop.
- Modes (interleaved when several runs): ``direct`` (each poller its own server backend) and
  ``pgbouncer`` (PgBouncer from the Debian package in transaction mode, ``--pool-size`` server
  connections; skipped with a note when ``pgbouncer`` is not installed).

    python bench/broker_pollers.py [--pollers 1000] [--duration-s 30] [--modes pgbouncer,direct]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGE = "bench"
# the broker's claim statement (curation/broker.py), in psycopg's parameter style
_CLAIM = """
    WITH picked AS MATERIALIZED (
        SELECT task_id FROM tasks WHERE stage = %s AND state = 'ready' AND run_after <= now()
        ORDER BY priority, task_id LIMIT 1 FOR UPDATE SKIP LOCKED)
    UPDATE tasks t SET state = 'leased', attempt = t.attempt + 1, lease_id = gen_random_uuid(), lease_owner = %s,
        claimed_at = now(), deadline_at = now() + t.max_runtime_s * interval '1 second'
    FROM picked WHERE t.task_id = picked.task_id
    RETURNING t.task_id, t.job_id, t.attempt, t.lease_id, cardinality(t.asset_ids),
              extract(epoch FROM clock_timestamp() - statement_timestamp())
"""
_DELETE = "DELETE FROM tasks WHERE task_id = %s AND lease_id = %s AND state = 'leased' RETURNING claimed_at"
_LOG = ("INSERT INTO task_attempts (task_id, job_id, stage, attempt, lease_id, worker_id, claimed_at, outcome, "
        "n_items, n_ok) VALUES (%s, %s, %s, %s, %s, %s, %s, 'ok', %s, 0)")


def _setup(url: str, tasks: int) -> None:
    from sqlalchemy import text

    from curation.broker import enqueue
    from curation.db import make_engine, upgrade

    eng = make_engine(url)
    upgrade(eng)
    with eng.begin() as conn:
        conn.execute(text("TRUNCATE tasks, task_attempts, workers, jobs RESTART IDENTITY CASCADE"))
        job = conn.execute(text("INSERT INTO jobs (name, modality, spec, stages) "
                                "VALUES ('bench', 'image', '{}'::jsonb, ARRAY['bench']) RETURNING job_id")).scalar_one()
        for s in range(0, tasks, 5000):
            chunks = [(f"c{i}", list(range(i * 64 + 1, i * 64 + 65))) for i in range(s, min(tasks, s + 5000))]
            enqueue(conn, job_id=job, stage=STAGE, stage_version="bench@1", chunks=chunks, max_attempts=5,
                    max_runtime_s=600)
        conn.execute(text("INSERT INTO workers (stage, host, pid) SELECT 'bench', 'poller', g "
                          "FROM generate_series(1, 2000) g"))
    with eng.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE tasks"))
    eng.dispose()


def _poller_proc(dsn: str, first_worker: int, n: int, work_s: float, warmup_s: float, duration_s: float,
                 ready, start, out) -> None:
    import psycopg

    async def main() -> None:
        conns = []
        for _ in range(n):
            conns.append(await psycopg.AsyncConnection.connect(dsn, prepare_threshold=None))
            await asyncio.sleep(0)
        ready.put(1)
        while not start.is_set():
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        lat: list[float] = []
        server: list[float] = []  # the claim statement's own time inside the server
        counts = {"claims": 0, "empty": 0, "completed": 0, "errors": 0}

        async def poller(conn, wid: int, rng: random.Random) -> None:
            await asyncio.sleep(rng.random() * work_s)  # spread the first claims
            while time.perf_counter() - t0 < warmup_s + duration_s:
                try:
                    c0 = time.perf_counter()
                    await conn.execute("SET LOCAL synchronous_commit = off")  # as Broker.claim does
                    row = await (await conn.execute(_CLAIM, (STAGE, wid))).fetchone()
                    await conn.commit()
                    c1 = time.perf_counter()
                    if c0 - t0 >= warmup_s:
                        lat.append(c1 - c0)
                        counts["claims" if row else "empty"] += 1
                        if row:
                            server.append(float(row[5]))
                    if row is None:
                        await asyncio.sleep(work_s)
                        continue
                    await asyncio.sleep(work_s * (0.5 + rng.random()))
                    task_id, job_id, attempt, lease_id, n_items, _ = row
                    claimed = await (await conn.execute(_DELETE, (task_id, lease_id))).fetchone()
                    await conn.execute(_LOG, (task_id, job_id, STAGE, attempt, lease_id, wid, claimed[0], n_items))
                    await conn.commit()
                    if c0 - t0 >= warmup_s:
                        counts["completed"] += 1
                except psycopg.Error:
                    counts["errors"] += 1
                    await conn.rollback()
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(poller(c, first_worker + i, random.Random(first_worker + i))
                               for i, c in enumerate(conns)))
        for c in conns:
            await c.close()
        out.put((lat, server, counts))

    asyncio.run(main())


def _pgbouncer(server, pg_port: int, pool_size: int, clients: int, tmp: Path) -> tuple[subprocess.Popen, int]:
    from curation.embedded import _free_port

    port = _free_port()
    d = tmp / "pgbouncer"
    d.mkdir()
    (d / "users.txt").write_text('"postgres" ""\n')
    (d / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"bench = host=127.0.0.1 port={pg_port} dbname=bench user=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {d / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = {clients + 100}\n"
        "max_db_connections = 0\nserver_reset_query =\nlog_connections = 0\nlog_disconnections = 0\n"
    )
    cmd = ["pgbouncer", str(d / "pgbouncer.ini")]
    if server.user is not None:  # PgBouncer refuses to run as root: run it as the server's user
        shutil.chown(d, server.user)
        for f in d.iterdir():
            shutil.chown(f, server.user)
        cmd = ["runuser", "-u", server.user, "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not start: {proc.stderr.read().decode() if proc.poll() is not None else ''}")


def _run(dsn: str, args) -> tuple[list[float], list[float], dict]:
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    per = [args.pollers // args.procs + (1 if i < args.pollers % args.procs else 0) for i in range(args.procs)]
    procs, first = [], 1
    for n in per:
        procs.append(ctx.Process(target=_poller_proc, args=(dsn, first, n, args.work_s, args.warmup_s,
                                                            args.duration_s, ready, start, out)))
        first += n
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    start.set()
    lat: list[float] = []
    server: list[float] = []
    counts: dict[str, int] = {}
    for _ in procs:
        got, srv, c = out.get(timeout=args.warmup_s + args.duration_s + 300)
        lat += got
        server += srv
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + v
    for p in procs:
        p.join(30)
    return lat, server, counts


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--pollers", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="client processes the pollers are spread over")
    ap.add_argument("--work-s", type=float, default=2.5, help="mean work time per task (uniform 0.5x..1.5x)")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--duration-s", type=float, default=30.0)
    ap.add_argument("--tasks", type=int, default=30000, help="backlog (64 assets per task)")
    ap.add_argument("--modes", default="pgbouncer,direct")
    ap.add_argument("--pool-size", type=int, default=20, help="PgBouncer server connections")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "pgbouncer" in modes and shutil.which("pgbouncer") is None:
        print("pgbouncer not installed (apt-get install pgbouncer): measuring direct connections only")
        modes = [m for m in modes if m != "pgbouncer"]

    from sqlalchemy import create_engine, text

    from curation.embedded import EmbeddedPostgres

    results: dict[str, list[tuple[list[float], list[float], dict]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-pollers-") as tmp:
        os.chmod(tmp, 0o755)
        server = EmbeddedPostgres(Path(tmp) / "pg")
        server.server_options = tuple(o for o in server.server_options if not o.startswith("max_connections")) + (
            f"max_connections={args.pollers + 100}",)
        admin = server.start()
        bouncer = None
        try:
            eng = create_engine(admin, isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                conn.execute(text("CREATE DATABASE bench"))
                pg_port = conn.execute(text("SHOW port")).scalar_one()
            eng.dispose()
            url = admin.rsplit("/", 1)[0] + "/bench"
            if "pgbouncer" in modes:
                bouncer, bport = _pgbouncer(server, int(pg_port), args.pool_size, args.pollers, Path(tmp))
            dsns = {"direct": url.replace("postgresql+psycopg2://", "postgresql://"),
                    "pgbouncer": f"postgresql://postgres@127.0.0.1:{bport}/bench" if bouncer else None}
            for run in range(args.runs):
                for mode in modes:
                    _setup(url, args.tasks)
                    lat, server_s, counts = _run(dsns[mode], args)
                    results[mode].append((lat, server_s, counts))
                    print(f"run {run + 1}: {mode:<9} claims {counts['claims']:>6} ({counts['claims'] / args.duration_s:,.0f}/s), "
                          f"empty {counts['empty']}, errors {counts['errors']}; claim latency p50 {_pct(lat, 0.5):.1f} ms, "
                          f"p99 {_pct(lat, 0.99):.1f} ms, max {max(lat) * 1000:.0f} ms; in the server p50 "
                          f"{_pct(server_s, 0.5):.2f} ms, p99 {_pct(server_s, 0.99):.2f} ms", flush=True)
        finally:
            if bouncer is not None:
                bouncer.terminate()
                bouncer.wait(10)
            server.stop("fast")

    print(f"\n{args.pollers} pollers in {args.procs} processes, work {args.work_s} s/task, {args.duration_s:.0f} s "
          f"measured after {args.warmup_s:.0f} s warm-up; claim = claim statement + commit")
    for mode in modes:
        lat = [x for got, _, _ in results[mode] for x in got]
        srv = [x for _, got, _ in results[mode] for x in got]
        p50s = [_pct(got, 0.5) for got, _, _ in results[mode]]
        p99s = [_pct(got, 0.99) for got, _, _ in results[mode]]
        rate = statistics.median(c["claims"] / args.duration_s for _, _, c in results[mode])
        print(f"  {mode:<9} claims/s {rate:,.0f}; claim latency p50 {_pct(lat, 0.5):.1f} ms, p99 {_pct(lat, 0.99):.1f} ms "
              f"(per run p50 {', '.join(f'{x:.1f}' for x in p50s)}; p99 {', '.join(f'{x:.1f}' for x in p99s)}); "
              f"the claim statement inside the server p50 {_pct(srv, 0.5):.2f} ms, p99 {_pct(srv, 0.99):.2f} ms")


if __name__ == "__main__":
    main()
