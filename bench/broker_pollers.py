"""Claim latency with 1,000 pollers on one database (issue 14 §4, scale; broker-design T5).

Method
------
- One embedded PostgreSQL 18 (the project's server settings, ``max_connections`` raised for the direct
  route), our schema migrated, a fresh backlog of tasks of 64 assets each enqueued and ``ANALYZE``d before
  every run (enough that the queue never runs dry).
- ``--pollers`` simulated workers, spread over ``--procs`` processes, one asyncio psycopg 3 connection each.
  Every connection uses client-side parameter binding (``AsyncClientCursor``): the simple-query protocol,
  the wire traffic psycopg2 (the production driver) sends, and it works through PgBouncer in transaction
  mode. Each poller loops like ``StageWorker.run``: claim one task; "work" for ``work`` seconds (uniform
  0.5x..1.5x of the mean, so the pollers drift apart); complete it as ``Broker.complete`` does for a task with no
  result rows and no survivors (fenced delete, attempt row, commit, drained-job check: the broker's own
  SQL and parameters, ``broker_complete_sql()``); claim again. An empty claim backs off as the runtime does (50 ms doubling to 1 s, jittered).
  The mean work time is ``pollers / rate``: ``--rates 100,200,400`` ask for that many claims/s in total
  (2,000 GPU workers taking 64 assets every 5 s make 400 claims/s, broker-design §5.1).
- The claim statement is the broker's own (``curation.broker._CLAIM``, its ``:name`` parameters turned
  into ``%(name)s``) with one column added to its ``RETURNING`` list: ``clock_timestamp() -
  statement_timestamp()``, the claim's own time inside the server. Claim variants (``--claims``):

  - ``five``: what ``Broker.claim`` sent until 2026-12-01 (checked in the server's statement log): the
    engine's ``pool_pre_ping`` ``SELECT 1``; ``BEGIN``; ``SET LOCAL synchronous_commit = off``; the claim;
    ``COMMIT`` — five round trips. Kept as the reference.
  - ``one``: ``SET LOCAL ...; <the claim>`` as *one* simple-query message on an autocommit connection —
    PostgreSQL runs a multi-statement message as one implicit transaction, so ``SET LOCAL`` still holds
    for the claim and its commit (tests/test_claim_one_message.py) — after the pre-ping: two round trips
    (``Broker.claim`` on a pre-pinging engine, e.g. the CLI's).
  - ``broker0``: what a worker sent until this variant's completion changed (2026-12-01): the one-message
    claim on the runtime's engine, which has no ``pool_pre_ping`` (every use is retried on a lost
    connection) — one round trip; the completion as ``Broker.complete_many`` sent it then: ``BEGIN``,
    fenced delete, attempt rows, ``COMMIT``, ``BEGIN``, drained-job check, ``COMMIT`` — seven. (``five``
    and ``one`` complete the same way after a pre-ping.)
  - ``broker``: what a worker's ``Broker.claim`` and ``Broker.complete`` send now: the same claim, and the
    completion in one message on an autocommit connection — ``BEGIN; <fenced delete + attempt rows, which
    fails unless every lease is held>; COMMIT; <drained-job check>`` (``curation.broker._complete_held``;
    a stage's result rows would go before it, the first one carrying the ``BEGIN``).
  - ``pgmq``: a peer, **pgmq's read query on a plain table** (the pgmq extension is not installable
    here): ``WITH cte AS (SELECT msg_id ... WHERE vt <= clock_timestamp() ORDER BY msg_id LIMIT 1 FOR
    UPDATE SKIP LOCKED) UPDATE ... SET vt = clock_timestamp() + 600 s, read_ct = read_ct + 1 ...
    RETURNING ...``, autocommit, the server's default ``synchronous_commit``; completion = ``pgmq.delete``'s
    ``DELETE ... WHERE msg_id = ...`` (pgmq's own recommended use: read, then delete or archive; it keeps no
    attempt ledger, no lease fence and no job state). Same pollers, same payload (64 asset ids as jsonb).

- Two latencies, both after ``--warmup-s`` over ``--duration-s``, p50 / p99 / max over all pollers:
  **service** = send of the claim's first message to the claim's last reply being handled by the poller
  (what a poller waits once it asks); **latency** = from the *intended* send time (when the poller's
  previous completion returned, or its back-off / start sleep should have ended) to the same end — this adds the
  harness's own scheduling delay (event-loop lag), so a saturated client cannot hide queueing by sending
  late (coordinated omission). The target T5 is judged on **latency**.
- Also reported per run: achieved claims/s and empty polls; the claim statement's time inside the server
  (from its ``RETURNING``; ``pg_stat_statements`` is not in the embedded build); CPU seconds per claim
  cycle (claim + complete) of the client processes, the server (postmaster and all its children), and
  PgBouncer, and the machine's other load (everything else busy on the box: the other engineers);
  event-loop lag of the client processes (a 10 ms timer's overshoot); server backends (mean active /
  total, sampled from ``pg_stat_activity`` every 0.5 s); ``uptime`` load at the start.
- Routes (``--modes``): ``direct`` (each poller its own server backend) and ``pgbouncer`` (PgBouncer from
  the Debian package in transaction mode, ``--pool-size`` server connections; PgBouncer 1.18 here has no
  ``max_prepared_statements``, which is why no variant uses server-side prepared statements). Every
  (rate, route, variant) is run ``--runs`` times, interleaved; the summary gives medians and ranges.

    OMP_NUM_THREADS=1 python bench/broker_pollers.py [--pollers 1000] [--procs 4] [--rates 100,200,400]
        [--modes direct,pgbouncer] [--claims five,one,broker0,broker,pgmq] [--runs 3] [--duration-s 20] [--warmup-s 5]
        [--pool-size 4[,16]] [--tasks 1 (idle polling)] [--work-s S  (overrides --rates)]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGE = "bench"
_SERVER_TIME = "extract(epoch FROM clock_timestamp() - statement_timestamp())"
_SYNC_OFF = "SET LOCAL synchronous_commit = off"
_PARAM = re.compile(r"(?<![:\w]):(\w+)")  # SQLAlchemy's :name -> psycopg's %(name)s (not ::casts)
# Broker.complete until 2026-12-01 (the ``five``/``one``/``broker0`` variants): BEGIN; the fenced delete;
# the attempt rows; COMMIT; then BEGIN; the drained-job check; COMMIT — 7 round trips (checked against
# the statements Broker.complete sent then; SQLAlchemy's ``:name`` parameters as ``%(name)s``)
_OLD_DELETE = """
    DELETE FROM tasks t
    USING unnest(CAST(%(task_ids)s AS bigint[]), CAST(%(lease_ids)s AS uuid[])) AS u(task_id, lease_id)
    WHERE t.stage = %(stage)s AND t.task_id = u.task_id AND t.lease_id = u.lease_id AND t.state = 'leased'
    RETURNING t.task_id, t.claimed_at
"""
_OLD_LOG = """
    INSERT INTO task_attempts (task_id, job_id, stage, attempt, lease_id, worker_id, claimed_at, outcome,
                               error, n_items, n_ok)
    SELECT task_id, job_id, stage, attempt, lease_id, %(worker_id)s, claimed_at, outcome, error, n_items, n_ok
    FROM unnest(CAST(%(a_task_id)s AS bigint[]), CAST(%(a_job_id)s AS bigint[]), CAST(%(a_stage)s AS text[]),
                CAST(%(a_attempt)s AS integer[]), CAST(%(a_lease_id)s AS uuid[]), CAST(%(a_claimed_at)s AS timestamptz[]),
                CAST(%(a_outcome)s AS text[]), CAST(%(a_error)s AS text[]), CAST(%(a_n_items)s AS integer[]),
                CAST(%(a_n_ok)s AS integer[]))
         AS u(task_id, job_id, stage, attempt, lease_id, claimed_at, outcome, error, n_items, n_ok)
"""
_OLD_FINISH = """
    UPDATE jobs j SET status = 'completed', finished_at = now()
    WHERE j.job_id = ANY(%(f_job_ids)s) AND j.status = 'running'
      AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.job_id)
"""
# the peer: pgmq's read and delete, on a plain table shaped like a pgmq queue table
_PGMQ_TABLE = """
    CREATE TABLE IF NOT EXISTS pgmq_q (msg_id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
        read_ct int NOT NULL DEFAULT 0, enqueued_at timestamptz NOT NULL DEFAULT now(),
        vt timestamptz NOT NULL DEFAULT clock_timestamp(), message jsonb);
    CREATE INDEX IF NOT EXISTS pgmq_q_vt_idx ON pgmq_q (vt)
"""
_PGMQ_READ = f"""
    WITH cte AS (SELECT msg_id FROM pgmq_q WHERE vt <= clock_timestamp() ORDER BY msg_id ASC LIMIT 1
                 FOR UPDATE SKIP LOCKED)
    UPDATE pgmq_q m SET vt = clock_timestamp() + interval '600 seconds', read_ct = read_ct + 1
    FROM cte WHERE m.msg_id = cte.msg_id
    RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, {_SERVER_TIME}
"""
_PGMQ_DELETE = "DELETE FROM pgmq_q WHERE msg_id = %s RETURNING msg_id"
ROUND_TRIPS = {"five": 5, "one": 2, "broker0": 1, "broker": 1, "pgmq": 1}  # of the claim
COMPLETE_ROUND_TRIPS = {"five": 8, "one": 8, "broker0": 7, "broker": 1, "pgmq": 1}
CLAIM_SQL = ""  # broker_claim_sql(), set in each poller process
COMPLETE_SQL = ""  # broker_complete_sql(), likewise


def broker_claim_sql() -> str:
    """The broker's claim statement in psycopg's ``%(name)s`` style, with the server-time column added."""
    from curation.broker import _CLAIM

    sql = _PARAM.sub(r"%(\1)s", _CLAIM.text).rstrip()
    return f"{sql}, {_SERVER_TIME}"


def broker_complete_sql() -> str:
    """``Broker.complete_many``'s one message for tasks of one stage that are all still held, with no result
    rows and no survivors (``BEGIN; <fenced delete + attempt rows>; COMMIT; <drained-job check>``), in
    ``%(name)s`` style."""
    from curation.broker import _complete_held

    return _PARAM.sub(r"%(\1)s", _complete_held(True, False, 1).text)


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
        conn.execute(text(_PGMQ_TABLE))
        conn.execute(text("TRUNCATE pgmq_q"))
        conn.execute(text("INSERT INTO pgmq_q (message) SELECT jsonb_build_object('asset_ids', "
                          "(SELECT jsonb_agg(g * 64 + k) FROM generate_series(1, 64) k)) "
                          "FROM generate_series(0, :n - 1) g"), {"n": tasks})
    with eng.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("VACUUM ANALYZE tasks"))
        conn.execute(text("VACUUM ANALYZE pgmq_q"))
        conn.execute(text("CHECKPOINT"))
    eng.dispose()


class _Poller:
    """One simulated worker's database calls for one claim variant."""

    def __init__(self, conn, variant: str, worker_id: int):
        self.conn, self.variant, self.worker_id = conn, variant, worker_id
        self.params = {"stage": STAGE, "n": 1, "worker": worker_id}

    async def claim(self):
        """One claim; returns (row or None, server seconds or None)."""
        cur = self.conn.cursor()
        if self.variant in ("five", "one"):  # the engine's pool_pre_ping on every checkout
            await cur.execute("SELECT 1")
        if self.variant == "five":  # Broker.claim before: BEGIN / SET LOCAL / claim / COMMIT
            await cur.execute("BEGIN")
            await cur.execute(_SYNC_OFF)
            await cur.execute(CLAIM_SQL, self.params)
            row = await cur.fetchone()
            await cur.execute("COMMIT")
        elif self.variant in ("one", "broker0", "broker"):  # Broker.claim: one message, one implicit transaction
            await cur.execute(f"{_SYNC_OFF}; {CLAIM_SQL}", self.params)
            cur.nextset()  # past the SET's result
            row = await cur.fetchone()
        else:
            await cur.execute(_PGMQ_READ)
            row = await cur.fetchone()
        return row, (float(row[-1]) if row else None)

    async def complete(self, row) -> None:
        """What ``Broker.complete(lease, worker, lambda conn: 0)`` sends (no result rows, no survivors):
        ``broker``: its one message, SQL and parameters as ``Broker.complete_many`` builds them;
        ``broker0``/``one``/``five``: what it sent until 2026-12-01 (7 round trips, plus the pre-ping of a
        pre-pinging engine for ``one``/``five``); ``pgmq``: ``pgmq.delete``."""
        cur = self.conn.cursor()
        if self.variant == "pgmq":
            await cur.execute(_PGMQ_DELETE, (row[0],))
            return
        task_id, job_id, stage, _, attempt, lease_id = row[:6]
        if self.variant == "broker":  # its parameters as Broker._complete_held builds them
            await cur.execute(COMPLETE_SQL, {
                "stage": stage, "worker_id": self.worker_id, "n": 1, "task_ids": [task_id],
                "leases": json.dumps({str(task_id): lease_id}), "n_oks": json.dumps({str(task_id): 0}),
                "f_job_0": job_id})
            return
        fence = {"stage": stage, "task_ids": [task_id], "lease_ids": [lease_id]}
        if self.variant != "broker0":
            await cur.execute("SELECT 1")
        await cur.execute("BEGIN")
        claimed = dict(await (await cur.execute(_OLD_DELETE, fence)).fetchall())
        ours = task_id in claimed
        log = {"worker_id": self.worker_id, "a_task_id": [task_id], "a_job_id": [job_id], "a_stage": [stage],
               "a_attempt": [attempt], "a_lease_id": [lease_id], "a_claimed_at": [claimed.get(task_id)],
               "a_outcome": ["ok" if ours else "fenced_out"],
               "a_error": [None if ours else "complete after the lease was reclaimed"],
               "a_n_items": [len(row[6])], "a_n_ok": [0], "f_job_ids": [job_id]}
        await cur.execute(_OLD_LOG, log)
        await cur.execute("COMMIT")
        await cur.execute("BEGIN")
        await cur.execute(_OLD_FINISH, log)
        await cur.execute("COMMIT")


def _poller_proc(dsn: str, variant: str, first_worker: int, n: int, work_s: float, warmup_s: float,
                 duration_s: float, ready, start, out) -> None:
    import psycopg

    global CLAIM_SQL, COMPLETE_SQL
    CLAIM_SQL = broker_claim_sql()
    COMPLETE_SQL = broker_complete_sql()

    async def main() -> None:
        conns = []
        for _ in range(n):
            conns.append(await psycopg.AsyncConnection.connect(
                dsn, prepare_threshold=None, cursor_factory=psycopg.AsyncClientCursor, autocommit=True))
            await asyncio.sleep(0)
        ready.put(1)
        while not start.is_set():
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        w0, w1 = t0 + warmup_s, t0 + warmup_s + duration_s
        lat: list[float] = []  # from the intended send time
        svc: list[float] = []  # from the actual send time
        server: list[float] = []
        lag: list[float] = []
        cpu = {}
        counts = {"claims": 0, "empty": 0, "completed": 0, "errors": 0}

        async def monitor() -> None:
            while time.perf_counter() < w0:
                await asyncio.sleep(0.01)
            cpu["start"] = time.process_time()
            while (t := time.perf_counter()) < w1:
                await asyncio.sleep(0.01)
                lag.append(time.perf_counter() - t - 0.01)
            cpu["end"] = time.process_time()

        async def poller(p: _Poller, rng: random.Random) -> None:
            intended = t0 + rng.random() * work_s  # spread the first claims
            delay = 0.05
            while intended < w1:
                await asyncio.sleep(max(0.0, intended - time.perf_counter()))
                try:
                    c0 = time.perf_counter()
                    row, srv = await p.claim()
                    c1 = time.perf_counter()
                    measured = w0 <= intended < w1
                    if measured:
                        lat.append(c1 - intended)
                        svc.append(c1 - c0)
                        counts["claims" if row else "empty"] += 1
                        if srv is not None:
                            server.append(srv)
                    if row is None:  # back off as StageWorker.run does
                        intended = c1 + delay * (0.5 + rng.random())
                        delay = min(delay * 2, 1.0)
                        continue
                    delay = 0.05
                    await asyncio.sleep(max(0.0, c1 + work_s * (0.5 + rng.random()) - time.perf_counter()))
                    await p.complete(row)
                    counts["completed"] += measured
                    intended = time.perf_counter()
                except psycopg.Error:
                    counts["errors"] += 1
                    await p.conn.execute("ROLLBACK")
                    await asyncio.sleep(0.1)
                    intended = time.perf_counter()

        await asyncio.gather(monitor(), *(poller(_Poller(c, variant, first_worker + i),
                                                  random.Random(first_worker + i)) for i, c in enumerate(conns)))
        for c in conns:
            await c.close()
        out.put((lat, svc, server, lag, cpu.get("end", 0.0) - cpu.get("start", 0.0), counts))

    asyncio.run(main())


def _pgbouncer(server, pg_port: int, pool_size: int, clients: int, tmp: Path) -> tuple[subprocess.Popen, int]:
    from curation.embedded import _free_port

    port = _free_port()
    d = tmp / f"pgbouncer{pool_size}"
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
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not start: {proc.stderr.read().decode() if proc.poll() is not None else ''}")


def _cpu_of(pids: list[int]) -> float:
    """User + system CPU seconds of these processes, their live descendants and their reaped children
    (a backend or autovacuum worker that exits moves its CPU into the postmaster's children times)."""
    import psutil

    total, seen = 0.0, set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            t = root.cpu_times()
            total += t.children_user + t.children_system
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in family:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:  # one that exits meanwhile is in its parent's children times by the next reading
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


def _busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _run(dsn: str, admin_dsn: str, variant: str, work_s: float, args, postmaster: int, bouncer_pid: int | None) -> dict:
    import psycopg

    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    per = [args.pollers // args.procs + (1 if i < args.pollers % args.procs else 0) for i in range(args.procs)]
    procs, first = [], 1
    for n in per:
        procs.append(ctx.Process(target=_poller_proc, args=(dsn, variant, first, n, work_s, args.warmup_s,
                                                            args.duration_s, ready, start, out), daemon=True))
        first += n
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    load = os.getloadavg()[0]
    start.set()
    t0 = time.perf_counter()
    time.sleep(args.warmup_s)
    me = [os.getpid()]
    cpu0 = {"clients": _cpu_of([p.pid for p in procs]), "server": _cpu_of([postmaster]),
            "bouncer": _cpu_of([bouncer_pid]) if bouncer_pid else 0.0, "busy": _busy()}
    active, total = [], []
    with psycopg.connect(admin_dsn, autocommit=True) as mon:  # backends, sampled
        while time.perf_counter() - t0 < args.warmup_s + args.duration_s - 0.3:
            a, n = mon.execute("SELECT count(*) FILTER (WHERE state = 'active'), count(*) FROM pg_stat_activity "
                               "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()
            active.append(a)
            total.append(n)
            time.sleep(0.5)
    cpu1 = {"clients": _cpu_of([p.pid for p in procs]), "server": _cpu_of([postmaster]),
            "bouncer": _cpu_of([bouncer_pid]) if bouncer_pid else 0.0, "busy": _busy()}
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    del me
    res = {"lat": [], "svc": [], "server": [], "lag": [], "client_cpu": 0.0, "counts": {}, "load": load,
           "active": statistics.mean(active) if active else 0.0, "backends": max(total) if total else 0}
    for _ in procs:
        lat, svc, srv, lag, ccpu, c = out.get(timeout=args.warmup_s + args.duration_s + 300)
        res["lat"] += lat
        res["svc"] += svc
        res["server"] += srv
        res["lag"] += lag
        res["client_cpu"] += ccpu
        for k, v in c.items():
            res["counts"][k] = res["counts"].get(k, 0) + v
    for p in procs:
        p.join(30)
    # the clients' CPU comes from their own clocks (exact window); the rest from the process table
    res["cpu"] = {"client": res["client_cpu"], "server": cpu["server"], "bouncer": cpu["bouncer"],
                  "other": max(0.0, cpu["busy"] - res["client_cpu"] - cpu["server"] - cpu["bouncer"])}
    return res


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def _line(r: dict, duration_s: float) -> str:
    c = r["counts"]
    cycles = max(1, c["claims"])
    cpu = r["cpu"]
    return (f"claims/s {c['claims'] / duration_s:6.1f} (empty {c['empty']}, errors {c['errors']}); "
            f"latency p50/p99/max {_pct(r['lat'], .5):6.1f}/{_pct(r['lat'], .99):7.1f}/{_pct(r['lat'], 1):7.0f} ms; "
            f"service p50/p99 {_pct(r['svc'], .5):6.1f}/{_pct(r['svc'], .99):7.1f} ms; "
            f"server stmt p50/p99 {_pct(r['server'], .5):.2f}/{_pct(r['server'], .99):.2f} ms; "
            f"loop lag p99 {_pct(r['lag'], .99):.1f} ms; "
            f"CPU ms/claim client {cpu['client'] / cycles * 1000:.2f} server {cpu['server'] / cycles * 1000:.2f} "
            f"bouncer {cpu['bouncer'] / cycles * 1000:.2f} (cores: client {cpu['client'] / duration_s:.2f} server "
            f"{cpu['server'] / duration_s:.2f} bouncer {cpu['bouncer'] / duration_s:.2f}); other load {cpu['other'] / duration_s:.2f} cores; "
            f"backends active {r['active']:.1f}/{r['backends']}; load1 {r['load']:.2f}")


def psycopg_impl() -> str:
    """``binary``/``c`` (C) or ``python``: the pure-Python one costs ~0.8 ms of client CPU per claim decoding ids."""
    import psycopg

    return psycopg.pq.__impl__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--pollers", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="client processes the pollers are spread over")
    ap.add_argument("--rates", default="100,200,400", help="target claims/s (mean work time = pollers / rate)")
    ap.add_argument("--work-s", type=float, default=None, help="one mean work time per task instead of --rates")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--duration-s", type=float, default=20.0)
    ap.add_argument("--tasks", type=int, default=None, help="backlog (64 assets per task); default: 1.5x a run's claims")
    ap.add_argument("--modes", default="direct,pgbouncer")
    ap.add_argument("--claims", default="five,one,broker0,broker,pgmq",
                    help="claim variants: five (Broker.claim before 2026-12-01: pre-ping, BEGIN, SET, claim, "
                    "COMMIT), one (the one-message claim after a pre-ping), broker0 (a worker's claim and 7-round-trip "
                    "completion until 2026-12-01), broker (a worker's Broker.claim and Broker.complete now: one "
                    "message each), pgmq (peer: pgmq's read query on a plain table)")
    ap.add_argument("--pool-size", default="4", help="PgBouncer server connections (default_pool_size); several "
                    "(4,16) make one PgBouncer route each, interleaved like the rest")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and PgBouncer on kill
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    variants = [v.strip() for v in args.claims.split(",") if v.strip()]
    works = ([args.work_s] if args.work_s else [args.pollers / float(r) for r in args.rates.split(",")])
    if "pgbouncer" in modes and shutil.which("pgbouncer") is None:
        print("pgbouncer not installed (apt-get install pgbouncer): measuring direct connections only")
        modes = [m for m in modes if m != "pgbouncer"]
    pools = [int(x) for x in args.pool_size.split(",")]
    modes = [x for m in modes for x in ([f"pgbouncer{p}" for p in pools] if m == "pgbouncer" else [m])]
    tasks = args.tasks or int(1.5 * max(args.pollers / w for w in works) * (args.warmup_s + args.duration_s)) + args.pollers

    from sqlalchemy import create_engine, text

    from curation.embedded import EmbeddedPostgres

    results: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pollers-") as tmp:
        os.chmod(tmp, 0o755)
        server = EmbeddedPostgres(Path(tmp) / "pg")
        server.server_options = tuple(o for o in server.server_options if not o.startswith("max_connections")) + (
            f"max_connections={args.pollers + 100}",)
        admin = server.start()
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        bouncers: dict[str, subprocess.Popen] = {}
        try:
            eng = create_engine(admin, isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                conn.execute(text("CREATE DATABASE bench"))
                pg_port = conn.execute(text("SHOW port")).scalar_one()
            eng.dispose()
            url = admin.rsplit("/", 1)[0] + "/bench"
            direct = url.replace("postgresql+psycopg2://", "postgresql://")
            dsns = {"direct": direct}
            for mode in modes:
                if mode.startswith("pgbouncer"):
                    bouncers[mode], bport = _pgbouncer(server, int(pg_port), int(mode[9:]), args.pollers, Path(tmp))
                    dsns[mode] = f"postgresql://postgres@127.0.0.1:{bport}/bench"
            for run in range(args.runs):
                for work_s in works:
                    for mode in modes:
                        for variant in variants:
                            _setup(url, tasks)
                            r = _run(dsns[mode], direct, variant, work_s, args, postmaster,
                                     bouncers[mode].pid if mode in bouncers else None)
                            results.setdefault((args.pollers / work_s, mode, variant), []).append(r)
                            print(f"run {run + 1} rate {args.pollers / work_s:4.0f}/s {mode:<11} {variant:<6} "
                                  f"{_line(r, args.duration_s)}", flush=True)
        finally:
            for bouncer in bouncers.values():
                bouncer.terminate()
                bouncer.wait(10)
            server.stop("fast")

    def med(xs: list[float], fmt: str) -> str:
        return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}–{max(xs):{fmt}}]"

    print(f"\n{args.pollers} pollers in {args.procs} processes, {args.runs} interleaved runs of {args.duration_s:.0f} s "
          f"after {args.warmup_s:.0f} s warm-up; pgbouncerN = PgBouncer with a pool of N; median [range] over runs; "
          "latency = from the intended send time, service = from the actual send (ms); CPU = ms per claim cycle; "
          f"psycopg {psycopg_impl()} implementation")
    for (rate, mode, variant), rs in results.items():
        d = args.duration_s
        cyc = [max(1, r["counts"]["claims"]) for r in rs]
        print(f"  {rate:4.0f}/s {mode:<11} {variant:<6} ({ROUND_TRIPS[variant]}+{COMPLETE_ROUND_TRIPS[variant]} rt claim+complete): "
              f"claims/s {med([r['counts']['claims'] / d for r in rs], '.0f')}; "
              f"latency p50 {med([_pct(r['lat'], .5) for r in rs], '.1f')} "
              f"p99 {med([_pct(r['lat'], .99) for r in rs], '.1f')} max {med([_pct(r['lat'], 1) for r in rs], '.0f')}; "
              f"service p50 {med([_pct(r['svc'], .5) for r in rs], '.1f')} p99 {med([_pct(r['svc'], .99) for r in rs], '.1f')}; "
              f"server stmt p50 {med([_pct(r['server'], .5) for r in rs], '.2f')} "
              f"p99 {med([_pct(r['server'], .99) for r in rs], '.2f')}; "
              f"CPU client {med([r['cpu']['client'] / c * 1000 for r, c in zip(rs, cyc)], '.2f')} "
              f"server {med([r['cpu']['server'] / c * 1000 for r, c in zip(rs, cyc)], '.2f')} "
              f"bouncer {med([r['cpu']['bouncer'] / c * 1000 for r, c in zip(rs, cyc)], '.2f')}; "
              f"server cores {med([r['cpu']['server'] / d for r in rs], '.2f')}; "
              f"other load {med([r['cpu']['other'] / d for r in rs], '.2f')} cores; "
              f"backends active {med([r['active'] for r in rs], '.1f')}; "
              f"loop lag p99 {med([_pct(r['lag'], .99) for r in rs], '.1f')}; "
              f"load1 {med([r['load'] for r in rs], '.2f')}")


if __name__ == "__main__":
    main()
