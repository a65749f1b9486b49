"""Job control over the database: load a job with its typed spec (parsed once, here), list jobs, cancel,
retry the failed items, read progress and the funnel, export a finished job's slice. The CLI parses
arguments, calls these and prints; nothing else reads ``jobs.spec``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from curation import report
from curation.balance import Balance
from curation.broker import chunked, enqueue
from curation.export import ExportResult, export_slice
from curation.spec import JobSpec


class UnknownJob(LookupError):
    """No job has this id."""


class JobNotRunning(RuntimeError):
    """The job exists but is not running (it completed or was cancelled), so there is nothing to cancel."""


class NoExportTarget(ValueError):
    """An export needs a predicate and an output, and neither the command nor the job's spec gives them."""


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    status: str  # running, completed or cancelled
    spec: JobSpec
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class JobSummary:
    id: int
    name: str
    status: str
    n_assets: int
    created_at: datetime


_SELECT_JOB = "SELECT job_id, name, status, spec, created_at, finished_at FROM jobs WHERE job_id = :j"


def _read_job(conn: Connection, job_id: int, *, lock: bool = False) -> Job:
    row = conn.execute(text(_SELECT_JOB + (" FOR UPDATE" if lock else "")), {"j": job_id}).first()
    if row is None:
        raise UnknownJob(f"no job {job_id} (`curation status` lists the jobs)")
    return Job(id=row.job_id, name=row.name, status=row.status, spec=JobSpec.model_validate(row.spec),
               created_at=row.created_at, finished_at=row.finished_at)


def load_job(engine: Engine, job_id: int) -> Job:
    """The job with its spec validated into a ``JobSpec``. Raises ``UnknownJob`` (a LookupError)."""
    with engine.connect() as conn:
        return _read_job(conn, job_id)


def list_jobs(engine: Engine, limit: int = 20) -> list[JobSummary]:
    """The most recent jobs, newest first, with their asset counts."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT j.job_id, j.name, j.status, j.created_at, "
            "(SELECT count(*) FROM job_assets ja WHERE ja.job_id = j.job_id) AS n "
            "FROM jobs j ORDER BY j.job_id DESC LIMIT :l"), {"l": limit}).all()
    return [JobSummary(r.job_id, r.name, r.status, r.n, r.created_at) for r in rows]


def cancel(engine: Engine, job_id: int) -> int:
    """Cancel a running job: its queued and running tasks are deleted (a worker holding one is fenced out
    and writes nothing); committed results stay. Returns the number of tasks removed."""
    with engine.begin() as conn:
        job = _read_job(conn, job_id, lock=True)
        if job.status != "running":
            raise JobNotRunning(f"job {job_id} is {job.status}, not running: nothing to cancel")
        conn.execute(text("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE job_id = :j"),
                     {"j": job_id})
        return conn.execute(text("DELETE FROM tasks WHERE job_id = :j"), {"j": job_id}).rowcount


def retry(engine: Engine, job_id: int) -> tuple[int, int]:
    """Re-run only a job's failed and dead-lettered items: their item errors are cleared and they are
    enqueued again at the stage where they failed, in chunks of the spec's ``chunk_size``; the job runs
    again if anything was enqueued. Returns (items, tasks)."""
    with engine.begin() as conn:
        spec = _read_job(conn, job_id, lock=True).spec  # the lock: one retry of a job at a time
        stage_classes = dict(zip((s.name for s in spec.stages), spec.stage_classes()))
        index_of = {s.name: i for i, s in enumerate(spec.stages)}
        from workers.groups import task_runtime_s  # a retried task runs its stage's fused group
        failed = conn.execute(text(
            "DELETE FROM item_errors e USING job_assets ja WHERE ja.asset_id = e.asset_id AND ja.job_id = :j "
            "RETURNING e.stage, e.asset_id"), {"j": job_id}).all()
        conn.execute(text("DELETE FROM dead_tasks WHERE job_id = :j"), {"j": job_id})
        by_stage: dict[str, list[int]] = {}
        for stage, asset_id in failed:
            by_stage.setdefault(stage, []).append(asset_id)
        n_tasks = 0
        stamp = int(time.time())  # a fresh dedupe key per retry: earlier retries' keys may be taken
        for stage, ids in by_stage.items():
            cls = stage_classes[stage]
            chunks = [(f"retry{stamp}-{i}", c) for i, c in enumerate(chunked(sorted(ids), spec.chunk_size))]
            n_tasks += enqueue(conn, job_id=job_id, stage=stage, stage_version=cls.stage_version(), chunks=chunks,
                               max_attempts=spec.max_attempts,
                               max_runtime_s=task_runtime_s(spec, index_of[stage]))
        if n_tasks:
            conn.execute(text("UPDATE jobs SET status = 'running', finished_at = NULL WHERE job_id = :j"),
                         {"j": job_id})
    return len(failed), n_tasks


# --- what a job did: delegates to curation.report -------------------------------------------------


def status(engine: Engine, job_id: int) -> report.JobStatus:
    """Per-stage progress (scored, errors, queued, running) and dead-lettered tasks."""
    with engine.connect() as conn:
        try:
            return report.job_status(conn, job_id)
        except LookupError:
            raise UnknownJob(f"no job {job_id} (`curation status` lists the jobs)") from None


def funnel(engine: Engine, job_id: int) -> report.Funnel | report.VideoFunnel:
    """The filter funnel (listed → decoded → resolution ok → unique → exported; scenes for a video job)."""
    job = load_job(engine, job_id)
    with engine.connect() as conn:
        return report.funnel(conn, job_id, job.spec)


def item_errors(engine: Engine, job_id: int, limit: int = 20) -> list[tuple[str, str, int, str]]:
    """(stage, error class, count, one example message) of the job's item errors, most frequent first."""
    with engine.connect() as conn:
        return report.error_summary(conn, job_id, limit)


# --- export -----------------------------------------------------------------------------------------


def export(
    engine: Engine,
    job_id: int | None,
    *,
    where: str | None = None,
    output: str | None = None,
    view: str | None = None,
    rows_per_file: int | None = None,
    overwrite: bool | None = None,
    balance: Balance | None = None,
    timeout_s: float = 3600.0,
) -> ExportResult:
    """Export a slice to Parquet. With a job, its assets only, and what is not given comes from its
    spec's export section (the view from its modality); without, all assets of ``view`` (default
    ``curated_images``). ``timeout_s``: the statement timeout of the slice's query. Raises
    ``NoExportTarget`` without a predicate or an output, ``UnknownJob``, and ``curation.export.ExportError``."""
    job = load_job(engine, job_id) if job_id is not None else None
    section = job.spec.export if job is not None else None
    if section is not None:
        where = where or section.where
        output = output or section.output
        rows_per_file = rows_per_file if rows_per_file is not None else section.rows_per_file
        overwrite = overwrite if overwrite is not None else section.overwrite
    if not where or not output:
        raise NoExportTarget("give --where and --output (or a job whose spec has an export section)")
    return export_slice(engine, predicate=where, output=output, job_id=job_id,
                        view=view or (job.spec.view if job is not None else "curated_images"),
                        rows_per_file=rows_per_file or 100_000, overwrite=bool(overwrite), balance=balance,
                        timeout_s=timeout_s)


def export_finished(engine: Engine, job_id: int) -> ExportResult | None:
    """The export the job's spec asks for, once the job has completed; None when it has not completed or
    its spec has no export section."""
    job = load_job(engine, job_id)
    if job.status != "completed" or job.spec.export is None:
        return None
    return export(engine, job_id)
