"""Running a job through the real Ray runtime, and the invariant every fault test checks."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, text

from curation.planner import submit
from curation.spec import parse_spec


def submit_spec(engine: Engine, spec: dict) -> int:
    return submit(engine, parse_spec(spec)).job_id


def job_state(engine: Engine, job_id: int) -> str:
    from curation.db import with_reconnect

    def read() -> str:
        with engine.connect() as conn:
            return conn.execute(text("SELECT status FROM jobs WHERE job_id=:j"), {"j": job_id}).scalar_one()

    return with_reconnect(read, what="read job state", give_up_after_s=60)


def run_until_done(
    engine: Engine,
    db_url: str,
    job_id: int,
    pools: dict[str, int],
    *,
    timeout_s: float = 240,
    on_tick: Callable[[], None] | None = None,
):
    """Start a Supervisor with ``pools``, wait for the job to leave 'running', stop the workers.
    Returns the supervisor (its slots tell restarts)."""
    from workers.supervisor import Supervisor

    supervisor = Supervisor(database_url=db_url, pools=pools)
    supervisor.start()
    deadline = time.monotonic() + timeout_s
    try:
        while job_state(engine, job_id) == "running":
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout_s} s")
            supervisor.watch(0.3)
            if on_tick is not None:
                on_tick()
    finally:
        supervisor.stop(grace_s=30)
    return supervisor


def assert_exactly_one_outcome(engine: Engine, job_id: int, stage: str, result_table: str, version: str,
                               *, scenes: bool = False) -> dict:
    """Every asset that reached ``stage`` has exactly one result row or exactly one item-error row
    (never both, never none); no task of the job is left. Returns {asset_id: 'ok'|error_class}.
    ``scenes``: check the job's scenes instead of its listed files."""
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM tasks WHERE job_id=:j"), {"j": job_id}).scalar_one()
        assert left == 0, f"{left} task(s) of job {job_id} left"
        rows = conn.execute(
            text(
                f"""
                SELECT ja.asset_id,
                       (SELECT count(*) FROM {result_table} r WHERE r.asset_id = ja.asset_id
                          AND r.stage_version = :v) AS n_ok,
                       (SELECT count(*) FROM item_errors e WHERE e.asset_id = ja.asset_id AND e.stage = :s
                          AND e.stage_version = :v) AS n_err,
                       (SELECT min(error_class) FROM item_errors e WHERE e.asset_id = ja.asset_id AND e.stage = :s
                          AND e.stage_version = :v) AS cls
                FROM job_assets ja JOIN assets a ON a.asset_id = ja.asset_id
                WHERE ja.job_id = :j AND (a.kind = 'scene') = :scenes
                """
            ),
            {"j": job_id, "s": stage, "v": version, "scenes": scenes},
        ).all()
    outcome = {}
    for asset_id, n_ok, n_err, cls in rows:
        assert n_ok + n_err == 1, f"asset {asset_id}: {n_ok} result rows and {n_err} error rows"
        outcome[asset_id] = "ok" if n_ok else cls
    return outcome


def spy_on_frames(monkeypatch) -> list[float]:
    """Record the times every scene stage asks frames for (``workers.scene_frames.frames_at``)."""
    from curation.video import frames_at

    seen: list[float] = []

    def spy(path, times, **kwargs):
        seen.extend(times)
        return frames_at(path, times, **kwargs)

    monkeypatch.setattr("workers.scene_frames.frames_at", spy)
    return seen
