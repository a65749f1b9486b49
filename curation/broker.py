"""The PostgreSQL task broker (design: ``../shared/reference/broker-design.md``; docs/broker.md).

- The queue holds *chunks*: a task is many asset ids for one ``(job, stage, stage_version)``.
- Claims are batched: ``FOR UPDATE SKIP LOCKED`` inside a ``MATERIALIZED`` CTE (no over-claiming
  through a re-executed LIMIT subquery). A claim commits without waiting for its WAL flush: losing one
  in a crash only fences out its completion.
- Every state change of a leased task is fenced by its ``lease_id``: a worker whose lease was
  reclaimed cannot complete, fail or release the task any more.
- Liveness: per-worker heartbeats plus a per-task deadline; ``sweep()`` reclaims tasks of dead
  workers and tasks past their deadline, retries them with exponential back-off and jitter, bisects a
  chunk that keeps crashing its worker and dead-letters what is left after ``max_attempts``. Only a dead
  worker's last claim is charged with its crash: its older leases were finished and held for a batched
  flush, and go back to ready with the attempt refunded.
- ``complete()`` deletes the task, writes the stage's result rows, enqueues the survivors for the next
  stage and logs the attempt in **one** transaction: at-least-once execution, exactly-once effect. On the
  wire: the result rows (the first carrying the ``BEGIN``), then one message (fenced delete + attempt rows,
  enqueue, ``COMMIT``, job check); a lease found fenced out there rolls it all back and the careful path
  (fence first) runs instead.
  ``complete_many()`` does the same for several leases in one transaction (one commit for a run of
  small tasks); each lease is still fenced on its own: a fenced-out lease adds nothing, and it does not
  undo the others. A drained job is marked completed right after that commit (no lock on the job row
  while completions commit; a worker that dies in between leaves it to the sweep).
- All lease arithmetic uses the database's clock (``now()``), never the worker's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import Connection, Engine, TextClause, event, text
from sqlalchemy.exc import DBAPIError

from curation.config import BrokerTiming

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    task_id: int
    job_id: int
    stage: str
    stage_version: str
    attempt: int
    lease_id: str
    asset_ids: tuple[int, ...]
    dedupe_key: str
    max_attempts: int


@dataclass(frozen=True)
class NextStage:
    stage: str
    stage_version: str
    max_runtime_s: float


@dataclass
class SweepReport:
    promoted: int = 0
    reclaimed: int = 0
    bisected: int = 0
    dead: int = 0
    jobs_completed: int = 0
    details: list[str] = field(default_factory=list)


WriteResults = Callable[[Connection], int]
"""Writes a task's result and item-error rows inside the completion transaction; returns n_ok."""


@dataclass(frozen=True)
class Completion:
    """What ``complete()`` takes for one lease, for ``complete_many()``."""

    lease: Lease
    write_results: WriteResults
    survivors: Sequence[int] = ()
    next_stage: NextStage | None = None
    survivor_chunks: Callable[[], Sequence[Sequence[int]]] | None = None


Outcome = bool | Exception
"""Of one lease in ``complete_many()``: True committed, False fenced out (nothing written), or the
exception its ``write_results``/``survivor_chunks`` raised (nothing of it written; the lease is still
held, so the caller can ``fail()`` it)."""


class _CallbackFailed(Exception):
    def __init__(self, index: int, error: Exception):
        super().__init__(str(error))
        self.index, self.error = index, error


def chunked(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


_CLAIM = text(
    """
    WITH picked AS MATERIALIZED (
        SELECT task_id FROM tasks
        WHERE stage = :stage AND state = 'ready' AND run_after <= now()
        ORDER BY priority, task_id
        LIMIT :n
        FOR UPDATE SKIP LOCKED)
    UPDATE tasks t
    SET state = 'leased', attempt = t.attempt + 1, lease_id = gen_random_uuid(), lease_owner = :worker,
        claimed_at = now(), deadline_at = now() + t.max_runtime_s * interval '1 second'
    FROM picked
    WHERE t.stage = :stage AND t.task_id = picked.task_id
    RETURNING t.task_id, t.job_id, t.stage, t.stage_version, t.attempt, t.lease_id::text,
              t.asset_ids, t.dedupe_key, t.max_attempts
    """
)

# The claim as one message: the multi-statement string runs as one implicit transaction on an autocommit
# connection, so SET LOCAL holds for this claim and its commit only (psycopg2 binds parameters client-side).
_CLAIM_ONE_MESSAGE = text("SET LOCAL synchronous_commit = off;" + _CLAIM.text)

DEFAULT_PRIORITY = 100

_ENQUEUE = text(
    """
    INSERT INTO tasks (job_id, stage, stage_version, asset_ids, dedupe_key, max_attempts, max_runtime_s, priority)
    SELECT :job_id, :stage, :stage_version, ids::bigint[], key, :max_attempts, :max_runtime_s, :priority
    FROM unnest(CAST(:ids AS text[]), CAST(:keys AS text[])) AS u(ids, key)
    ON CONFLICT ON CONSTRAINT tasks_dedupe_key DO NOTHING
    """
)

_LOG_ATTEMPT = text(
    """
    INSERT INTO task_attempts (task_id, job_id, stage, attempt, lease_id, worker_id, claimed_at, outcome,
                               error, n_items, n_ok)
    VALUES (:task_id, :job_id, :stage, :attempt, CAST(:lease_id AS uuid), :worker_id, :claimed_at, :outcome,
            :error, :n_items, :n_ok)
    """
)

# "has the job no task left": the job's newest task, from a backward probe of tasks_job_idx (job_id, task_id)
# in each partition (migration 0024). A hot queue's heap starts with the tasks already completed (deleted, not
# yet vacuumed) and ends with the ones enqueued last; ``NOT EXISTS (SELECT 1 ...)`` (an EXISTS sublink drops
# any ORDER BY) was planned, for a job of many tasks, as the first row of a sequential scan, which read the
# whole dead head (0.5 ms, 470 pages, after 4,000 completions) before a live row. A scalar subquery keeps
# its ORDER BY ... LIMIT 1.
_NO_TASK_LEFT = "(SELECT task_id FROM tasks WHERE job_id = {job} ORDER BY task_id DESC LIMIT 1) IS NULL"

_FINISH_JOB = text(
    """
    UPDATE jobs SET status = 'completed', finished_at = now()
    WHERE job_id = :job_id AND status = 'running' AND """ + _NO_TASK_LEFT.format(job=":job_id") + """
    """
)

# the fence of complete_many: each row goes only when its own lease still holds it (one stage per
# statement: the stage prunes the delete to that stage's partition). _LEASED is ``state = 'leased'`` in a
# form the planner cannot match to the partial index tasks_leased_idx (WHERE state = 'leased'): on a hot
# queue's stale statistics that index looks like one row, and the fence scanned every leased task of the
# stage with it (1.5 ms at 1,000 leased) instead of probing the primary key for its own.
_LEASED = """t.state COLLATE "C" = 'leased'"""
_DELETE_LEASED = text(
    """
    DELETE FROM tasks t
    USING unnest(CAST(:task_ids AS bigint[]), CAST(:lease_ids AS uuid[])) AS u(task_id, lease_id)
    WHERE t.stage = :stage AND t.task_id = u.task_id AND t.lease_id = u.lease_id AND """ + _LEASED + """
    RETURNING t.task_id, t.claimed_at
    """
)

# --- the careful completion (``_complete_in``): two messages besides the result rows ------------------
# Used when the one-message completion below cannot be (a lease fenced out, a failing write_results, leases
# of several stages). On an autocommit connection: ``BEGIN; <fenced delete>`` opens the transaction and
# fences the leases in one message; the result rows of the leases still held follow; then ``[<enqueue>;]
# <attempt rows>; COMMIT; <finish drained jobs>`` in one more. PostgreSQL runs a multi-statement simple-query
# message statement by statement: BEGIN opens an explicit transaction block that outlives the message,
# COMMIT ends it, and what follows COMMIT runs as its own implicit transaction, with a snapshot taken after
# the commit (of two last completions of a job, the one that commits second sees both deletes). psycopg2
# binds parameters client-side, so each message is one round trip; through PgBouncer (transaction mode) the
# server connection is held from BEGIN to COMMIT, as for any transaction. Until 2026-12-01 every completion
# was BEGIN, delete, attempt rows, COMMIT, BEGIN, finish, COMMIT (+ the enqueue): 7-8 round trips.
_FENCE_FIRST = text("BEGIN;" + _DELETE_LEASED.text)

_ENQUEUE_MANY = """
    INSERT INTO tasks (job_id, stage, stage_version, asset_ids, dedupe_key, max_attempts, max_runtime_s, priority)
    SELECT e_job, e_stage, e_version, CAST(e_ids AS bigint[]), e_key, e_max_attempts, e_runtime, :e_priority
    FROM unnest(CAST(:e_job AS bigint[]), CAST(:e_stage AS text[]), CAST(:e_version AS text[]),
                CAST(:e_ids AS text[]), CAST(:e_key AS text[]), CAST(:e_max_attempts AS integer[]),
                CAST(:e_runtime AS double precision[]))
         AS u(e_job, e_stage, e_version, e_ids, e_key, e_max_attempts, e_runtime)
    ON CONFLICT ON CONSTRAINT tasks_dedupe_key DO NOTHING;
"""

_LOG_ATTEMPTS_TAIL = """
    INSERT INTO task_attempts (task_id, job_id, stage, attempt, lease_id, worker_id, claimed_at, outcome,
                               error, n_items, n_ok)
    SELECT task_id, job_id, stage, attempt, lease_id, :worker_id, claimed_at, outcome, error, n_items, n_ok
    FROM unnest(CAST(:a_task_id AS bigint[]), CAST(:a_job_id AS bigint[]), CAST(:a_stage AS text[]),
                CAST(:a_attempt AS integer[]), CAST(:a_lease_id AS uuid[]), CAST(:a_claimed_at AS timestamptz[]),
                CAST(:a_outcome AS text[]), CAST(:a_error AS text[]), CAST(:a_n_items AS integer[]),
                CAST(:a_n_ok AS integer[]))
         AS u(task_id, job_id, stage, attempt, lease_id, claimed_at, outcome, error, n_items, n_ok);
    COMMIT;
"""

# one statement per job, its id a literal (psycopg2 binds client-side): the planner sees the constant and
# probes tasks_job_idx backwards for the job's newest task (_NO_TASK_LEFT; an ``= ANY(:ids)`` correlated NOT
# EXISTS became a hash anti join over all the tasks: 13 ms at 20,000)
_FINISH_JOB_TAIL = """
    UPDATE jobs SET status = 'completed', finished_at = now()
    WHERE job_id = :f_job_{n} AND status = 'running' AND """ + _NO_TASK_LEFT.format(job=":f_job_{n}") + """;
"""


@functools.lru_cache(maxsize=64)
def _complete_tail(enqueue: bool, jobs: int) -> TextClause:
    """The completion's last message: [enqueue;] attempt rows; COMMIT; then, for each of ``jobs`` jobs
    (``:f_job_0``...), its completion if the commit drained it."""
    return text((_ENQUEUE_MANY if enqueue else "") + _LOG_ATTEMPTS_TAIL
                + "".join(_FINISH_JOB_TAIL.format(n=n) for n in range(jobs)))


# --- the completion in one message (the common case: every lease still held, one stage) -------------
# The result rows go first (their first statement carries the BEGIN: _begin_first), then one message:
# the fenced delete of all the leases, their ``ok`` attempt rows (a data-modifying CTE: claimed_at from
# the delete) and a check that fails the statement (so the transaction and the result rows with it) when
# a lease is no longer held; the survivors' enqueue; COMMIT; the drained jobs' completion. With no result
# rows (or with the BEGIN riding on their first statement) the completion is one message more than the
# result rows: no transaction is left open across a round trip of the worker's own. A fenced-out lease or
# a failing ``write_results`` rolls it all back, and the batch is completed again the careful way
# (``_complete_in``: fence first, then each lease on its own).
_FENCED_OUT = "broker: a lease of this completion is no longer held"
_HELD = f"""
    WITH gone AS (
        DELETE FROM tasks t
        WHERE t.stage = :stage AND t.task_id = ANY(CAST(:task_ids AS bigint[]))
          AND t.lease_id = CAST(CAST(:leases AS jsonb) ->> CAST(t.task_id AS text) AS uuid) AND {_LEASED}
        RETURNING t.task_id, t.job_id, t.attempt, t.lease_id, t.claimed_at, cardinality(t.asset_ids) AS n_items),
    logged AS (
        INSERT INTO task_attempts (task_id, job_id, stage, attempt, lease_id, worker_id, claimed_at, outcome,
                                   error, n_items, n_ok)
        SELECT task_id, job_id, :stage, attempt, lease_id, :worker_id, claimed_at, 'ok', NULL, n_items,
               CAST(CAST(:n_oks AS jsonb) ->> CAST(task_id AS text) AS integer)
        FROM gone)
    SELECT CAST(CASE WHEN count(*) = :n THEN '0' ELSE '{_FENCED_OUT}' END AS integer) FROM gone;
"""
# Each lease is matched by a lookup of its task id in a JSON object ({task_id: lease_id}), not by a join with
# unnest(task_ids, lease_ids): on the hot queue's stale statistics (no task looks leased) the planner ran such
# a join as a nested loop over every row of the partition times every lease of the batch (960 ms for a batch
# of 1,024); the rows come from the primary key (task_id = ANY) or one scan, and the attempt row's job,
# attempt and item count from the deleted row itself (what the lease was claimed with, while it holds).


@functools.lru_cache(maxsize=64)
def _complete_held(begin: bool, enqueue: bool, jobs: int) -> TextClause:
    """The one-message completion: [BEGIN;] fenced delete + attempt rows (all held, or an error); [enqueue;]
    COMMIT; the completion of each of ``jobs`` jobs (``:f_job_0``...) if the commit drained it."""
    return text(("BEGIN;" if begin else "") + _HELD + (_ENQUEUE_MANY if enqueue else "") + "COMMIT;"
                + "".join(_FINISH_JOB_TAIL.format(n=n) for n in range(jobs)))


_BEGIN_FIRST = "curation.broker.begin_first"  # Connection.info key: the next statement opens the transaction


def _begin_first(conn, cursor, statement, parameters, context, executemany):
    """``before_cursor_execute`` (retval) of a Broker's engine: while ``conn.info[_BEGIN_FIRST]`` is set, the
    first statement sent on that connection carries the ``BEGIN`` (one message, not two)."""
    if conn.info.pop(_BEGIN_FIRST, False):
        if executemany:  # run once per parameter set: BEGIN goes on its own
            cursor.execute("BEGIN")
        else:
            statement = "BEGIN;" + statement
    return statement, parameters


def _is_fenced_out(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "pgcode", None) == "22P02" and _FENCED_OUT in str(exc.orig)



# --- partitions (migration 0023) -----------------------------------------------------------------
# ``tasks`` is LIST-partitioned by stage, ``task_attempts`` RANGE-partitioned by day (UTC) of ended_at;
# each has a DEFAULT partition, so an insert never fails for want of a partition. Stages are a registry
# that grows at run time: a job's first enqueue and a worker's start create the partitions they need.

TASKS_DEFAULT = "tasks_default"
ATTEMPTS_DEFAULT = "task_attempts_default"
ATTEMPT_DAYS_AHEAD = 7
# the hot queue's storage settings (migration 0001), per partition: a partitioned table has no storage
TASK_STORAGE = ("fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
                "autovacuum_vacuum_cost_limit = 2000")
_PARTITION_LOCKS = {"tasks": (4242023, 1), "task_attempts": (4242023, 2)}  # pg_advisory_xact_lock keys
_DDL_LOCK_TIMEOUT = "2s"
DAY_CHECK_S = 600.0
_DAY_NAME = re.compile(r"^task_attempts_d(\d{8})$")


def stage_partition_name(stage: str) -> str:
    """``tasks_s_<slug>_<md5 prefix>``: readable, at most 57 characters, only ``[a-z0-9_]`` whatever the
    stage is called, and distinct for stages whose slugs collide."""
    slug = re.sub(r"[^a-z0-9]+", "_", stage.lower()).strip("_")[:40]
    return f"tasks_s_{slug}_{hashlib.md5(stage.encode()).hexdigest()[:8]}"


def day_partition_name(day: date) -> str:
    return f"task_attempts_d{day:%Y%m%d}"


def _partitions(conn: Connection, parent: str) -> set[str]:
    return set(conn.execute(
        text("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
             "WHERE i.inhparent = CAST(:p AS regclass)"), {"p": parent}).scalars())


def _attach(conn: Connection, parent: str, default: str, name: str, bound: str, bound_args: Sequence[str],
            rows_of: str, rows_params: dict, storage: str | None = None) -> None:
    """Create ``name`` shaped like ``parent``, move the rows of its bound out of the DEFAULT partition into
    it and attach it. ``ATTACH PARTITION`` takes SHARE UPDATE EXCLUSIVE on the parent (``CREATE TABLE ...
    PARTITION OF`` would take ACCESS EXCLUSIVE): claims and completions on other partitions go on.
    Identifiers are quoted by SQLAlchemy's preparer; the bound's literals by PostgreSQL (``format('%L')``)."""
    q = conn.dialect.identifier_preparer.quote_identifier
    with_ = f" WITH ({storage})" if storage else ""
    conn.execute(text(f"CREATE TABLE {q(name)} (LIKE {q(parent)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS){with_}"))
    # nothing may land in the DEFAULT partition between the move and the attach
    conn.execute(text(f"LOCK TABLE {q(default)} IN ACCESS EXCLUSIVE MODE"))
    conn.execute(text(f"WITH moved AS (DELETE FROM {q(default)} WHERE {rows_of} RETURNING *) "
                      f"INSERT INTO {q(name)} SELECT * FROM moved"), rows_params)
    args = {f"a{i}": a for i, a in enumerate(bound_args)}
    ddl = conn.execute(
        text("SELECT format(:t" + "".join(f", CAST(:a{i} AS text)" for i in range(len(args))) + ")"),
        {"t": f"ALTER TABLE {q(parent)} ATTACH PARTITION {q(name)} {bound}", **args},
    ).scalar_one()
    with conn.connection.cursor() as cur:  # the driver's own cursor, no parameters: run as it is ('%' included)
        cur.execute(ddl)


def _create_partitions(conn: Connection, parent: str, wanted: dict[str, Callable[[], None]]) -> list[str]:
    """Run the creators of the partitions in ``wanted`` that do not exist yet, one process at a time
    (advisory lock), in a savepoint of the caller's transaction with a short ``lock_timeout``. A failure
    is logged and leaves the caller's transaction intact: rows go to the DEFAULT partition meanwhile and
    move to their partition when it is created. Returns the names created."""
    if not wanted.keys() - _partitions(conn, parent):
        return []
    prior = conn.execute(text("SELECT current_setting('lock_timeout')")).scalar_one()
    created: list[str] = []
    try:
        with conn.begin_nested():
            conn.execute(text("SELECT set_config('lock_timeout', :v, true)"), {"v": _DDL_LOCK_TIMEOUT})
            a, b = _PARTITION_LOCKS[parent]
            conn.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": a, "b": b})
            for name in sorted(wanted.keys() - _partitions(conn, parent)):  # again, under the lock
                wanted[name]()
                created.append(name)
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        log.warning("%s: partitions %s not created now (%s); their rows go to the DEFAULT partition",
                    parent, sorted(wanted), str(exc.orig).strip().splitlines()[0] if exc.orig else exc)
        created = []
    # the caller's own lock_timeout for the rest of its transaction (a released savepoint keeps SET LOCAL)
    conn.execute(text("SELECT set_config('lock_timeout', :v, true)"), {"v": prior})
    if created:
        log.info("%s: partitions %s created", parent, created)
    return created


def ensure_stage_partitions(conn: Connection, stages: Iterable[str]) -> list[str]:
    """Give each stage its own ``tasks`` partition (``FOR VALUES IN (stage)``), in the caller's
    transaction; tasks of the stage already in the DEFAULT partition move into it. Safe under concurrent
    callers; any stage name is safe (the table name is derived, the value quoted). Returns the
    partitions created."""
    def creator(stage: str) -> Callable[[], None]:
        return lambda: _attach(conn, "tasks", TASKS_DEFAULT, stage_partition_name(stage), "FOR VALUES IN (%L)",
                               [stage], "stage = :stage", {"stage": stage}, TASK_STORAGE)
    return _create_partitions(conn, "tasks", {stage_partition_name(s): creator(s) for s in set(stages)})


def ensure_attempt_partitions(conn: Connection, days_ahead: int = ATTEMPT_DAYS_AHEAD, *,
                              days_back: int = 0) -> list[str]:
    """Day partitions of ``task_attempts`` from ``days_back`` days before today (UTC, the database's
    clock) to ``days_ahead`` days after, in the caller's transaction; attempts already logged in the
    DEFAULT partition for those days move into them. Returns the partitions created."""
    today = conn.execute(text("SELECT CAST(now() AT TIME ZONE 'UTC' AS date)")).scalar_one()

    def creator(day: date) -> Callable[[], None]:
        lo = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        hi = lo + timedelta(days=1)
        return lambda: _attach(conn, "task_attempts", ATTEMPTS_DEFAULT, day_partition_name(day),
                               "FOR VALUES FROM (%L) TO (%L)", [lo.isoformat(), hi.isoformat()],
                               "ended_at >= :lo AND ended_at < :hi", {"lo": lo, "hi": hi})
    days = [today + timedelta(days=i) for i in range(-days_back, days_ahead + 1)]
    return _create_partitions(conn, "task_attempts", {day_partition_name(d): creator(d) for d in days})


_seen: set[tuple[str, object]] = set()  # (database, job id or stage) whose partitions this process ensured


def _ensure_for_enqueue(conn: Connection, job_id: int, stage: str) -> None:
    """Once per process and job (and per stage): partitions for every stage of the job, and the days
    of the attempt ledger. A job's first enqueue is its submission, so a stage unknown when the
    database was migrated has its partition before its first task is queued."""
    db = conn.engine.url.render_as_string(hide_password=True)
    if (db, job_id) in _seen and (db, stage) in _seen:
        return
    stages = conn.execute(text("SELECT stages FROM jobs WHERE job_id = :j"), {"j": job_id}).scalar_one_or_none()
    stages = [stage, *(stages or [])]
    ensure_stage_partitions(conn, stages)
    ensure_attempt_partitions(conn)
    _seen.update({(db, job_id), *((db, s) for s in stages)})



def _pg_array(ids: Sequence[int]) -> str:
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


def enqueue(
    conn: Connection,
    *,
    job_id: int,
    stage: str,
    stage_version: str,
    chunks: Sequence[tuple[str, Sequence[int]]],
    max_attempts: int,
    max_runtime_s: float,
    priority: int = DEFAULT_PRIORITY,
) -> int:
    """Insert one task per ``(dedupe_key, asset_ids)`` chunk; a chunk already enqueued under the same
    dedupe key is skipped (idempotent). Returns the number of tasks inserted."""
    chunks = [(k, ids) for k, ids in chunks if len(ids) > 0]
    if not chunks:
        return 0
    _ensure_for_enqueue(conn, job_id, stage)
    result = conn.execute(
        _ENQUEUE,
        {
            "job_id": job_id,
            "stage": stage,
            "stage_version": stage_version,
            "ids": [_pg_array(ids) for _, ids in chunks],
            "keys": [k for k, _ in chunks],
            "max_attempts": max_attempts,
            "max_runtime_s": max_runtime_s,
            "priority": priority,
        },
    )
    return result.rowcount


def _finish_job_if_drained(conn: Connection, job_id: int) -> bool:
    # Lock the job row first: of two concurrent last completions, the second one to take the lock
    # sees the first one's delete (fresh snapshot per statement) and finishes the job.
    conn.execute(text("SELECT 1 FROM jobs WHERE job_id = :j FOR UPDATE"), {"j": job_id})
    return conn.execute(_FINISH_JOB, {"job_id": job_id}).rowcount > 0


def _enqueue_params(enqueues: dict[tuple, list[tuple[str, list[int]]]]) -> dict[str, object]:
    """The parameters of ``_ENQUEUE_MANY`` for ``{(job_id, NextStage, max_attempts): [(dedupe_key, ids)]}``."""
    rows = [(job_id, nxt, max_attempts, key, ids)
            for (job_id, nxt, max_attempts), chunks in enqueues.items() for key, ids in chunks]
    return {
        "e_job": [r[0] for r in rows], "e_stage": [r[1].stage for r in rows],
        "e_version": [r[1].stage_version for r in rows], "e_ids": [_pg_array(r[4]) for r in rows],
        "e_key": [r[3] for r in rows], "e_max_attempts": [r[2] for r in rows],
        "e_runtime": [float(r[1].max_runtime_s) for r in rows], "e_priority": DEFAULT_PRIORITY,
    }


def _abort_open_transaction(conn: Connection) -> None:
    """After an error inside a transaction that an autocommit connection opened with its own ``BEGIN``:
    roll it back before the connection goes back to the pool (the driver's rollback does nothing in
    autocommit). A connection in an unknown state is invalidated (closed, never reused). A pending
    ``_BEGIN_FIRST`` is dropped."""
    if conn.invalidated:  # its info went with it
        return
    try:
        conn.info.pop(_BEGIN_FIRST, None)
        raw = conn.connection.driver_connection
        if raw.closed:
            conn.invalidate()
        elif raw.info.transaction_status != 0:  # psycopg2 TRANSACTION_STATUS_IDLE
            with raw.cursor() as cur:
                cur.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - the connection is of no more use
        conn.invalidate()


@dataclass
class PruneReport:
    """What ``prune_attempts`` removed: whole day partitions (with their rows) and rows of the DEFAULT
    partition; ``busy`` lists the partitions left for the next prune because their table stayed locked."""

    cutoff: datetime
    dropped: list[tuple[str, int]] = field(default_factory=list)
    deleted: int = 0
    busy: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.deleted + sum(n for _, n in self.dropped)


def _is_lock_timeout(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "pgcode", None) == "55P03"  # lock_not_available


def _drop_day(engine: Engine, name: str, lock_timeout_s: float, tries: int) -> int | None:
    """DETACH the day partition ``name`` and DROP it in one short transaction; returns its row count, or
    None when ``task_attempts`` stayed locked for all ``tries``. A plain DETACH: ``DETACH ... CONCURRENTLY``
    is refused while the table has a DEFAULT partition, so this takes ACCESS EXCLUSIVE on
    ``task_attempts`` for the moment of the detach, waiting at most ``lock_timeout_s`` for it (attempt
    inserts queue behind it that long at worst), and tries again after a pause."""
    q = engine.dialect.identifier_preparer.quote_identifier
    for i in range(tries):
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT set_config('lock_timeout', :v, true)"),
                             {"v": f"{int(lock_timeout_s * 1000)}ms"})
                n = conn.execute(text(f"SELECT count(*) FROM {q(name)}")).scalar_one()
                conn.execute(text(f"ALTER TABLE task_attempts DETACH PARTITION {q(name)}"))
                conn.execute(text(f"DROP TABLE {q(name)}"))
            return int(n)
        except DBAPIError as exc:
            if not _is_lock_timeout(exc):
                raise
            log.warning("%s: task_attempts is busy (try %d of %d)", name, i + 1, tries)
            time.sleep(min(30.0, 0.5 * 2**i))
    return None


def prune_attempts(engine: Engine, older_than_s: float, *, batch: int = 10000, lock_timeout_s: float = 1.0,
                   tries: int = 5) -> PruneReport:
    """Retention of the attempt ledger: drop the day partitions of ``task_attempts`` whose whole day
    ended more than ``older_than_s`` seconds ago (on the database clock), and delete the DEFAULT
    partition's rows older than that, ``batch`` rows per transaction (no long transaction pins the vacuum
    horizon of the hot queue tables). History is never deleted row by row from a day partition: the day
    holding the cutoff stays whole until its end passes the cutoff. Also makes sure of the coming days'
    partitions. Tasks, dead tasks, item errors and results are untouched."""
    with engine.begin() as conn:
        cutoff = conn.execute(text("SELECT now() - :s * interval '1 second'"), {"s": older_than_s}).scalar_one()
        ensure_attempt_partitions(conn)
        days = sorted((m.group(0), datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=timezone.utc))
                      for m in map(_DAY_NAME.match, _partitions(conn, "task_attempts")) if m)
    report = PruneReport(cutoff=cutoff)
    for name, start in days:
        if start + timedelta(days=1) > cutoff:
            break
        n = _drop_day(engine, name, lock_timeout_s, tries)
        if n is None:
            report.busy.append(name)
        else:
            report.dropped.append((name, n))
    while True:
        with engine.begin() as conn:
            n = conn.execute(
                text(
                    f"""
                    DELETE FROM {ATTEMPTS_DEFAULT} WHERE attempt_id IN (
                        SELECT attempt_id FROM {ATTEMPTS_DEFAULT} WHERE ended_at < :cutoff
                        ORDER BY attempt_id LIMIT :batch FOR UPDATE SKIP LOCKED)
                    """
                ),
                {"cutoff": cutoff, "batch": batch},
            ).rowcount
        report.deleted += n
        if n < batch:
            return report


class Broker:
    """Broker operations for one worker process (or a test harness). Thread-safe: every call takes
    its own connection from the engine's pool."""

    def __init__(self, engine: Engine, timing: BrokerTiming | None = None):
        self.engine = engine
        self.timing = timing or BrokerTiming.from_env()
        self._days_checked = float("-inf")  # when this process last made sure of the ledger's day partitions
        if not event.contains(engine, "before_cursor_execute", _begin_first):
            event.listen(engine, "before_cursor_execute", _begin_first, retval=True)

    # --- workers -----------------------------------------------------------------------------

    def register_worker(self, stage: str, host: str, pid: int, ray_node_id: str | None = None) -> int:
        """Register a worker process of ``stage``; on the way, its stage's ``tasks`` partition and the
        attempt ledger's coming days are made sure of."""
        with self.engine.begin() as conn:
            ensure_stage_partitions(conn, [stage])
            ensure_attempt_partitions(conn)
        self._days_checked = time.monotonic()
        with self.engine.begin() as conn:
            return conn.execute(
                text(
                    "INSERT INTO workers (stage, host, pid, ray_node_id) VALUES (:s, :h, :p, :r) RETURNING worker_id"
                ),
                {"s": stage, "h": host, "p": pid, "r": ray_node_id},
            ).scalar_one()

    def heartbeat(self, worker_id: int) -> bool:
        """Record that the worker is alive; returns True when it has been asked to stop."""
        with self.engine.begin() as conn:
            row = conn.execute(
                text(
                    "UPDATE workers SET last_heartbeat = now() WHERE worker_id = :w AND stopped_at IS NULL "
                    "RETURNING stop_requested"
                ),
                {"w": worker_id},
            ).first()
        return True if row is None else bool(row[0])

    def worker_stopped(self, worker_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE workers SET stopped_at = now() WHERE worker_id = :w"), {"w": worker_id})

    def mark_worker_dead(self, worker_id: int) -> None:
        """Declare a worker dead now (its supervisor saw the process die): the next sweep reclaims its
        leases without waiting for the heartbeat timeout."""
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE workers SET stopped_at = coalesce(stopped_at, now()) WHERE worker_id = :w"),
                {"w": worker_id},
            )

    def request_stop(self, worker_ids: Sequence[int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE workers SET stop_requested = true WHERE worker_id = ANY(:ids)"),
                {"ids": list(worker_ids)},
            )

    # --- the task life cycle -------------------------------------------------------------------

    def claim(self, worker_id: int, stage: str, n: int = 1) -> list[Lease]:
        """Lease up to ``n`` ready tasks of ``stage``.

        The claim's commit does not wait for its WAL flush (``synchronous_commit = off`` for this
        transaction only): a claim lost in a server crash is harmless, since the task is then ready
        again, and the lease the worker holds no longer matches, so its completion is fenced out and
        the task reruns. Completions stay synchronous (they carry the results).

        One round trip: ``SET LOCAL`` and the claim go as one simple-query message on an autocommit
        connection, which PostgreSQL runs as one implicit transaction (tests/test_claim_one_message.py);
        BEGIN, SET, claim, COMMIT were four (bench/broker_pollers.py, ``broker`` vs ``one``)."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            rows = conn.execute(_CLAIM_ONE_MESSAGE, {"stage": stage, "n": n, "worker": worker_id}).all()
        return [
            Lease(
                task_id=r[0], job_id=r[1], stage=r[2], stage_version=r[3], attempt=r[4], lease_id=r[5],
                asset_ids=tuple(r[6]), dedupe_key=r[7], max_attempts=r[8],
            )
            for r in rows
        ]

    def complete(
        self,
        lease: Lease,
        worker_id: int,
        write_results: WriteResults,
        *,
        survivors: Sequence[int] = (),
        next_stage: NextStage | None = None,
        survivor_chunks: Callable[[], Sequence[Sequence[int]]] | None = None,
    ) -> bool:
        """Finish a leased task in one transaction: fenced delete, result rows, enqueue of the
        survivors for the next stage, attempt log; then, once committed, the job's completion if that was
        its last task. Returns False (and writes nothing
        but a ``fenced_out`` attempt) when the lease is no longer ours; an exception from
        ``write_results`` rolls it all back and propagates.

        ``survivor_chunks`` replaces ``survivors`` for a stage that creates assets (the scene split):
        it is called after ``write_results`` and returns the next stage's chunks, each enqueued as its
        own task (dedupe key ``<this task's key>/<n>``)."""
        (outcome,) = self.complete_many(
            [Completion(lease, write_results, survivors, next_stage, survivor_chunks)], worker_id
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def complete_many(self, completions: Sequence[Completion], worker_id: int) -> list[Outcome]:
        """``complete()`` for several leases in **one** transaction (one commit for a run of small
        tasks). Each lease is fenced on its own: the delete takes a task only while that lease holds
        it, so a fenced-out lease writes nothing but its ``fenced_out`` attempt and the others commit.
        For each lease that is still ours, exactly what ``complete()`` does: its result rows, its
        survivors' enqueue (tasks of the same next stage and job in one insert), its ``ok`` attempt;
        after the commit, the check that finishes drained jobs.

        When a lease's ``write_results`` (or ``survivor_chunks``) raises, the transaction is rolled
        back and redone without that lease: its outcome is the exception (its lease is still held, for
        ``fail()``), and the others' effects are as if it had not been in the batch. A lost connection
        is not a lease's error: it propagates (the caller retries the whole flush; what had committed
        then reads as fenced out, as for a retried ``complete()``).

        Returns one outcome per completion, in order (see ``Outcome``)."""
        if completions and len({c.lease.stage for c in completions}) == 1:
            held = self._complete_held(completions, worker_id)
            if held is not None:
                return held
        outcomes: list[Outcome | None] = [None] * len(completions)
        todo = list(range(len(completions)))
        while todo:
            try:
                # autocommit: the transaction is the messages' own BEGIN ... COMMIT (see _FENCE_FIRST)
                with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    try:
                        done = self._complete_in(conn, [completions[i] for i in todo], worker_id)
                    except BaseException:
                        _abort_open_transaction(conn)
                        raise
            except _CallbackFailed as failed:
                culprit = todo[failed.index]
                log.warning("task %s: its completion raised %s; completing the rest of the batch without it",
                            completions[culprit].lease.task_id, failed.error.__class__.__name__)
                outcomes[culprit] = failed.error
                todo.remove(culprit)
                continue
            for i, ok in zip(todo, done):
                outcomes[i] = ok
                if not ok:
                    lease = completions[i].lease
                    log.warning("task %s: lease %s is no longer ours; complete fenced out",
                                lease.task_id, lease.lease_id)
            break
        return outcomes  # type: ignore[return-value]

    def _complete_held(self, completions: Sequence[Completion], worker_id: int) -> list[Outcome] | None:
        """The common case in one message after the result rows (see ``_HELD``): every lease held, every
        ``write_results`` fine. Returns None, having rolled back, when one is not: the caller completes the
        batch the careful way. A lost connection propagates (the caller retries the flush)."""
        stage = completions[0].lease.stage
        order = sorted(completions, key=lambda c: c.lease.task_id)  # rows locked in task_id order
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.info[_BEGIN_FIRST] = True
            try:
                n_ok: dict[int, int] = {}
                enqueues: dict[tuple, list[tuple[str, list[int]]]] = {}
                for c in completions:  # written in the caller's order, as the careful path does
                    lease = c.lease
                    n_ok[lease.task_id] = c.write_results(conn)
                    if c.survivor_chunks is not None:
                        chunks = [(f"{lease.dedupe_key}/{n}", list(ids)) for n, ids in enumerate(c.survivor_chunks())]
                    else:
                        chunks = [(lease.dedupe_key, list(c.survivors))]
                    if c.next_stage is not None and any(ids for _, ids in chunks):
                        key = (lease.job_id, c.next_stage, lease.max_attempts)
                        enqueues.setdefault(key, []).extend((k, ids) for k, ids in chunks if ids)
                for job_id, nxt, _ in enqueues:  # partitions of a new job or stage (once per process)
                    _ensure_for_enqueue(conn, job_id, nxt.stage)
                begun = not conn.info.pop(_BEGIN_FIRST, False)
                jobs = sorted({c.lease.job_id for c in order})
                params = {
                    "stage": stage, "worker_id": worker_id, "n": len(order),
                    "task_ids": [c.lease.task_id for c in order],
                    "leases": json.dumps({str(c.lease.task_id): c.lease.lease_id for c in order}),
                    "n_oks": json.dumps({str(t): n for t, n in n_ok.items()}),
                    **{f"f_job_{n}": job_id for n, job_id in enumerate(jobs)},
                    **(_enqueue_params(enqueues) if enqueues else {}),
                }
                conn.execute(_complete_held(not begun, bool(enqueues), len(jobs)), params)
            except Exception as exc:
                _abort_open_transaction(conn)
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    raise
                # a lease fenced out (_is_fenced_out), or a write_results that raised: nothing was written
                log.debug("one-message completion of %d tasks rolled back (%s); completing them one by one",
                          len(order), "fenced out" if isinstance(exc, DBAPIError) and _is_fenced_out(exc)
                          else exc.__class__.__name__)
                return None
            except BaseException:
                _abort_open_transaction(conn)
                raise
        return [True] * len(completions)

    def _complete_in(self, conn: Connection, completions: Sequence[Completion], worker_id: int) -> list[bool]:
        """One transaction on the autocommit ``conn``: ``BEGIN`` + the fenced delete (one message per stage,
        the first one opening the transaction), the result rows, then enqueue + attempt rows + ``COMMIT`` +
        the drained jobs' completion (one message)."""
        # rows are locked in (stage, task_id) order in every transaction: no deadlock between flushes
        order = sorted(range(len(completions)),
                       key=lambda i: (completions[i].lease.stage, completions[i].lease.task_id))
        claimed: dict[int, object] = {}
        for k, stage in enumerate(sorted({c.lease.stage for c in completions})):
            mine = [i for i in order if completions[i].lease.stage == stage]
            claimed.update(
                conn.execute(
                    _FENCE_FIRST if k == 0 else _DELETE_LEASED,
                    {"stage": stage, "task_ids": [completions[i].lease.task_id for i in mine],
                     "lease_ids": [completions[i].lease.lease_id for i in mine]},
                ).all()
            )
        ours = [c.lease.task_id in claimed for c in completions]
        n_ok: dict[int, int] = {}
        enqueues: dict[tuple, list[tuple[str, list[int]]]] = {}
        for i, c in enumerate(completions):
            if not ours[i]:
                continue
            lease = c.lease
            try:
                n_ok[i] = c.write_results(conn)
                if c.survivor_chunks is not None:
                    chunks = [(f"{lease.dedupe_key}/{n}", list(ids)) for n, ids in enumerate(c.survivor_chunks())]
                else:
                    chunks = [(lease.dedupe_key, list(c.survivors))]
            except Exception as exc:  # stage code: only this lease's completion fails
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    raise
                raise _CallbackFailed(i, exc) from exc
            if c.next_stage is not None and any(ids for _, ids in chunks):
                key = (lease.job_id, c.next_stage, lease.max_attempts)
                enqueues.setdefault(key, []).extend((k, ids) for k, ids in chunks if ids)
        params: dict[str, object] = {"worker_id": worker_id}
        if enqueues:
            for job_id, nxt, _ in enqueues:  # partitions of a new job or stage (once per process)
                _ensure_for_enqueue(conn, job_id, nxt.stage)
            params.update(_enqueue_params(enqueues))
        rows = [
            (c.lease, claimed.get(c.lease.task_id), "ok" if ours[i] else "fenced_out",
             None if ours[i] else "complete after the lease was reclaimed", len(c.lease.asset_ids),
             n_ok.get(i, 0))
            for i, c in enumerate(completions)
        ]
        params.update({
            "a_task_id": [r[0].task_id for r in rows], "a_job_id": [r[0].job_id for r in rows],
            "a_stage": [r[0].stage for r in rows], "a_attempt": [r[0].attempt for r in rows],
            "a_lease_id": [r[0].lease_id for r in rows], "a_claimed_at": [r[1] for r in rows],
            "a_outcome": [r[2] for r in rows], "a_error": [r[3] for r in rows],
            "a_n_items": [r[4] for r in rows], "a_n_ok": [r[5] for r in rows],
        })
        finish = sorted({c.lease.job_id for c, ok in zip(completions, ours) if ok})
        params.update({f"f_job_{n}": job_id for n, job_id in enumerate(finish)})
        conn.execute(_complete_tail(bool(enqueues), len(finish)), params)
        return ours

    def fail(self, lease: Lease, worker_id: int, error: str) -> str:
        """A task-level failure (not a per-item one). Retried with back-off, dead-lettered once
        ``max_attempts`` are used up. Returns 'scheduled', 'dead' or 'fenced_out'."""
        with self.engine.begin() as conn:
            row = conn.execute(
                text(
                    "SELECT claimed_at FROM tasks t WHERE stage = :s AND task_id = :t AND lease_id = CAST(:l AS uuid) "
                    f"AND {_LEASED} FOR UPDATE"
                ),
                {"s": lease.stage, "t": lease.task_id, "l": lease.lease_id},
            ).first()
            if row is not None:
                if lease.attempt >= lease.max_attempts:
                    self._dead_letter(conn, lease.task_id, lease.stage, f"failed {lease.attempt} times: {error}",
                                      "task_failed")
                    outcome = "dead"
                else:
                    self._schedule_retry(conn, lease.task_id, lease.stage, error)
                    outcome = "scheduled"
                conn.execute(
                    _LOG_ATTEMPT,
                    self._attempt_row(lease, worker_id, row[0], "dead" if outcome == "dead" else "error", error,
                                      len(lease.asset_ids), 0),
                )
                if outcome == "dead":
                    _finish_job_if_drained(conn, lease.job_id)
                return outcome
        self._log_fenced_out(lease, worker_id, "fail")
        return "fenced_out"

    def release(self, lease: Lease, worker_id: int) -> bool:
        """Give a leased task back unprocessed (graceful shutdown): it becomes ready again at once and
        the attempt it used is refunded."""
        with self.engine.begin() as conn:
            row = conn.execute(
                text(
                    f"""
                    UPDATE tasks t SET state = 'ready', attempt = greatest(t.attempt - 1, 0), lease_id = NULL,
                        lease_owner = NULL, deadline_at = NULL, run_after = now()
                    FROM (SELECT task_id, claimed_at FROM tasks t WHERE stage = :s AND task_id = :t
                          AND lease_id = CAST(:l AS uuid) AND {_LEASED} FOR UPDATE) old
                    WHERE t.stage = :s AND t.task_id = old.task_id
                    RETURNING old.claimed_at
                    """
                ),
                {"s": lease.stage, "t": lease.task_id, "l": lease.lease_id},
            ).first()
            if row is not None:
                conn.execute(_LOG_ATTEMPT, self._attempt_row(lease, worker_id, row[0], "released", None, None, None))
                return True
        return False

    # --- the reclaim sweep ---------------------------------------------------------------------

    def sweep(self, *, bisect_after_crashes: int = 2) -> SweepReport:
        """Promote due retries, reclaim tasks of dead workers and tasks past their deadline, bisect
        chunks that keep crashing, dead-letter the exhausted ones, finish drained jobs. Safe to run
        from many processes at once (``SKIP LOCKED``). Every ``DAY_CHECK_S`` it also makes sure of the
        attempt ledger's day partitions (a long-lived worker must not spill into the DEFAULT partition)."""
        report = SweepReport()
        if time.monotonic() - self._days_checked > DAY_CHECK_S:
            with self.engine.begin() as conn:
                ensure_attempt_partitions(conn)
            self._days_checked = time.monotonic()
        with self.engine.begin() as conn:
            report.promoted = conn.execute(
                text(
                    """
                    UPDATE tasks SET state = 'ready' WHERE task_id IN (
                        SELECT task_id FROM tasks WHERE state = 'scheduled' AND run_after <= now()
                        ORDER BY run_after LIMIT 10000 FOR UPDATE SKIP LOCKED)
                    """
                )
            ).rowcount
        with self.engine.begin() as conn:
            victims = conn.execute(
                text(
                    """
                    SELECT t.task_id, t.job_id, t.stage, t.stage_version, t.attempt, t.lease_id::text, t.asset_ids,
                           t.dedupe_key, t.max_attempts, t.crashes, t.lease_owner, t.claimed_at, t.max_runtime_s,
                           CASE WHEN w.worker_id IS NULL OR w.stopped_at IS NOT NULL
                                     OR w.last_heartbeat < now() - :timeout * interval '1 second'
                                THEN 'reclaimed_dead_worker' ELSE 'reclaimed_deadline' END AS why
                    FROM tasks t LEFT JOIN workers w ON w.worker_id = t.lease_owner
                    WHERE t.state = 'leased'
                      AND (w.worker_id IS NULL OR w.stopped_at IS NOT NULL
                           OR w.last_heartbeat < now() - :timeout * interval '1 second'
                           OR t.deadline_at < now())
                    ORDER BY t.task_id
                    FOR UPDATE OF t SKIP LOCKED
                    """
                ),
                {"timeout": self.timing.worker_timeout_s},
            ).all()
            # A worker claims again only once it has finished every lease of its previous claim, so of a
            # dead worker's leases only those of its last claim can hold what it was running. The older
            # ones were finished and held for a batched flush (workers/runtime.py): they go back to ready
            # with the attempt refunded, and no crash is charged to them (an innocent chunk must not be
            # bisected or dead-lettered for its neighbour's crash).
            last_claim: dict[int, object] = {}
            for v in victims:
                if v.why == "reclaimed_dead_worker" and v.claimed_at is not None:
                    seen = last_claim.get(v.lease_owner)
                    last_claim[v.lease_owner] = v.claimed_at if seen is None else max(seen, v.claimed_at)
            for v in victims:
                lease = Lease(v.task_id, v.job_id, v.stage, v.stage_version, v.attempt, v.lease_id,
                              tuple(v.asset_ids), v.dedupe_key, v.max_attempts)
                if (v.why == "reclaimed_dead_worker" and v.claimed_at is not None
                        and v.claimed_at < last_claim[v.lease_owner]):
                    conn.execute(_LOG_ATTEMPT, self._attempt_row(
                        lease, v.lease_owner, v.claimed_at, v.why,
                        "held for a batched flush when its worker died: attempt refunded", len(v.asset_ids), None))
                    conn.execute(
                        text(
                            "UPDATE tasks SET state = 'ready', attempt = greatest(attempt - 1, 0), lease_id = NULL, "
                            "lease_owner = NULL, claimed_at = NULL, deadline_at = NULL, run_after = now() "
                            "WHERE stage = :s AND task_id = :t"
                        ),
                        {"s": v.stage, "t": v.task_id},
                    )
                    report.reclaimed += 1
                    continue
                crashes = v.crashes + 1
                conn.execute(_LOG_ATTEMPT, self._attempt_row(lease, v.lease_owner, v.claimed_at, v.why, v.why,
                                                            len(v.asset_ids), None))
                report.reclaimed += 1
                if len(v.asset_ids) > 1 and (crashes >= bisect_after_crashes or v.attempt >= v.max_attempts):
                    self._bisect(conn, v)
                    report.bisected += 1
                    report.details.append(f"task {v.task_id}: bisected after {crashes} crashes")
                elif v.attempt >= v.max_attempts:
                    self._dead_letter(
                        conn, v.task_id, v.stage, f"worker crashed or timed out on all {v.attempt} attempts",
                        "worker_crash",
                    )
                    report.dead += 1
                    report.details.append(f"task {v.task_id}: dead-lettered")
                else:
                    conn.execute(
                        text("UPDATE tasks SET crashes = :c WHERE stage = :s AND task_id = :t"),
                        {"c": crashes, "s": v.stage, "t": v.task_id},
                    )
                    self._schedule_retry(conn, v.task_id, v.stage, v.why)
        with self.engine.begin() as conn:
            drained = conn.execute(
                text(
                    "SELECT job_id FROM jobs j WHERE status = 'running' "
                    "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.job_id)"
                )
            ).scalars().all()
            for job_id in drained:
                report.jobs_completed += int(_finish_job_if_drained(conn, job_id))
        return report

    # --- internals -----------------------------------------------------------------------------

    def _schedule_retry(self, conn: Connection, task_id: int, stage: str, error: str) -> None:
        conn.execute(
            text(
                """
                UPDATE tasks SET state = 'scheduled', lease_id = NULL, lease_owner = NULL, claimed_at = NULL,
                    deadline_at = NULL, last_error = :err,
                    run_after = now() + least(:cap, :base * power(2, attempt - 1))
                                        * (0.9 + random() * 0.2) * interval '1 second'
                WHERE stage = :s AND task_id = :t
                """
            ),
            {"s": stage, "t": task_id, "err": error[:2000], "base": self.timing.backoff_base_s,
             "cap": self.timing.backoff_max_s},
        )

    def _dead_letter(self, conn: Connection, task_id: int, stage: str, reason: str, error_class: str) -> None:
        """Move a task to ``dead_tasks`` and give each of its assets an item error, so every asset
        still ends with exactly one terminal row."""
        conn.execute(
            text(
                """
                WITH gone AS (DELETE FROM tasks WHERE stage = :s AND task_id = :t RETURNING *),
                     dead AS (INSERT INTO dead_tasks (task_id, job_id, stage, stage_version, asset_ids, dedupe_key,
                                                      attempt, reason)
                              SELECT task_id, job_id, stage, stage_version, asset_ids, dedupe_key, attempt, :reason
                              FROM gone RETURNING *)
                INSERT INTO item_errors (asset_id, stage, stage_version, job_id, error_class, message, attempt)
                SELECT a, dead.stage, dead.stage_version, dead.job_id, :cls, :reason, dead.attempt
                FROM dead, unnest(dead.asset_ids) AS a
                ON CONFLICT DO NOTHING
                """
            ),
            {"s": stage, "t": task_id, "reason": reason[:2000], "cls": error_class},
        )

    def _bisect(self, conn: Connection, v) -> None:
        ids = list(v.asset_ids)
        half = len(ids) // 2
        conn.execute(text("DELETE FROM tasks WHERE stage = :s AND task_id = :t"), {"s": v.stage, "t": v.task_id})
        conn.execute(
            text(
                """
                INSERT INTO tasks (job_id, stage, stage_version, asset_ids, dedupe_key, max_attempts, max_runtime_s,
                                   run_after)
                SELECT :job, :stage, :ver, CAST(ids AS bigint[]), key, :max_attempts, :runtime, now()
                FROM unnest(CAST(:ids AS text[]), CAST(:keys AS text[])) AS u(ids, key)
                ON CONFLICT ON CONSTRAINT tasks_dedupe_key DO NOTHING
                """
            ),
            {
                "job": v.job_id, "stage": v.stage, "ver": v.stage_version, "max_attempts": v.max_attempts,
                "runtime": v.max_runtime_s,
                "ids": [_pg_array(ids[:half]), _pg_array(ids[half:])],
                "keys": [f"{v.dedupe_key}/0", f"{v.dedupe_key}/1"],
            },
        )

    @staticmethod
    def _attempt_row(lease: Lease, worker_id, claimed_at, outcome, error, n_items, n_ok) -> dict:
        return {
            "task_id": lease.task_id, "job_id": lease.job_id, "stage": lease.stage, "attempt": lease.attempt,
            "lease_id": lease.lease_id, "worker_id": worker_id, "claimed_at": claimed_at, "outcome": outcome,
            "error": error, "n_items": n_items, "n_ok": n_ok,
        }

    def _log_fenced_out(self, lease: Lease, worker_id: int, what: str) -> None:
        log.warning("task %s: lease %s is no longer ours; %s fenced out", lease.task_id, lease.lease_id, what)
        with self.engine.begin() as conn:
            conn.execute(
                _LOG_ATTEMPT,
                self._attempt_row(lease, worker_id, None, "fenced_out", f"{what} after the lease was reclaimed",
                                  len(lease.asset_ids), 0),
            )
